"""The LLM judge against the scripted upstream (real HTTP, OpenAI chat wire format):
batched requests, good, malformed and incomplete answers item by item, rate limits and
retry-after, chunking, budgets, the cache; and mini-vela's real judge output parsed into
our schema."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest
from dagster import DagsterInstance, materialize

from trajhub_assets.config import JudgeConfig, load_config
from trajhub_assets.errors import ConfigError, RecordError
from trajhub_assets.merge.schema import MERGED_TRAJECTORIES, META_FIELDS, conversations_to_table
from trajhub_assets.orchestration import prepare
from trajhub_assets.partitions import run_key
from trajhub_assets.recording.resources import ProxyResource
from trajhub_assets.recording.schema import RUNS
from trajhub_assets.recording.scripted_upstream import Fail, ScriptedRequest, say
from trajhub_assets.rewards.assets import judge_rewards, partition_inputs
from trajhub_assets.rewards.judge import (
    COST_HEADER,
    REPAIR,
    RUBRIC,
    Judge,
    JudgeCache,
    JudgeRequest,
    default_cache,
    judge_partition,
    read_answer,
    render_transcript,
)
from trajhub_assets.rewards.minivela_judge import minivela_judged, read_minivela_judge
from trajhub_assets.rewards.schema import JUDGE_CHECKS, JUDGE_STEPS, JUDGE_SUMMARY
from trajhub_assets.scaffolds.baselines import POLICIES, BaselinePolicies, judge_answer, upstream_policy
from trajhub_assets.scaffolds.builtin import DEFAULT_SYSTEM_PROMPT
from trajhub_assets.scaffolds.builtin import TOOLS as BUILTIN_TOOLS
from trajhub_assets.tasks.catalog import load_catalog, stored_tasks
from trajhub_assets_tests.test_pipeline import resources, write_project
from trajhub_assets_tests.test_rules import assistant, call, conversation, octocoding_task, result, steps_of

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SCORES = SHARED / "minivela_sample" / "judge_scores.json"

TASK = {
    "instance_id": "i",
    "user_query": ["Fix calc.add."],
    "checklist": {
        "SP": {
            "description": "System prompt rules",
            "checks": [
                {"check_id": "SP_read_first", "description": "Reads before editing", "check_type": "compliance"},
                {"check_id": "SP_no_emoji", "description": "No emoji", "check_type": "compliance"},
            ],
        },
        "User query": {
            "description": "The request",
            "checks": [
                {"check_id": "UQ_fixed", "description": "calc.add is fixed", "check_type": "implementation"},
                {"check_id": "UQ_reported", "description": "Reports the test result", "check_type": "compliance"},
            ],
        },
        "Tool schema": {
            "description": "Tool use",
            "checks": [{"check_id": "TS_paths", "description": "Valid paths", "check_type": "compliance"}],
        },
    },
}
OUTCOME = {
    "tests_passed": 2,
    "tests_failed": 0,
    "tests_total": 2,
    "test_exit_code": 0,
    "timed_out": False,
    "agent_exit_code": 0,
    "diff": "--- a/calc.py\n+++ b/calc.py\n-    return a - b\n+    return a + b\n",
}


def run_conversation() -> dict:
    return conversation(
        *steps_of(
            (assistant("Reading calc.py", call("a", "read_file", path="calc.py")), [result("a", "def add(a, b):\n")]),
            (assistant("Fixed: add returns a + b; 2 tests pass."), []),
        )
    )


def verdicts(*pairs) -> str:
    return json.dumps({"checks": [{"check_id": c, "result": r, "reason": f"{c} looked at"} for c, r in pairs]})


def criteria(score: int) -> dict:
    return {name: {"score": score, "reason": f"{name} is fine"} for name in RUBRIC}


def graded(*pairs) -> str:
    """A steps answer: (step_id, score) pairs."""
    return json.dumps({"steps": [{"step_id": sid, **criteria(score)} for sid, score in pairs]})


def asked_ids(body: dict) -> list[str]:
    """The ids a judge request's schema asks about."""
    schema = body["response_format"]["json_schema"]["schema"]
    array = next(iter(schema["properties"]))
    item = schema["properties"][array]["items"]["properties"]
    return item["check_id" if array == "checks" else "step_id"]["enum"]


def every_step(score: int, **kwargs):
    """A policy that grades every step asked about with `score`."""
    return lambda request: say(graded(*[(sid, score) for sid in asked_ids(request.body)]), **kwargs)


CHECKLIST, STEPS = "## Checks\n", "## The steps to grade"


class Script:
    """Answers by what a request judges (checklist or steps), in turn per kind; counts requests."""

    def __init__(self, answers: dict[str, list]):
        self.answers, self.seen, self.lock = answers, {}, threading.Lock()

    def __call__(self, request: ScriptedRequest):
        prompt = request.body["messages"][1]["content"]
        key = next(k for k in self.answers if k in prompt)
        with self.lock:
            n = self.seen[key] = self.seen.get(key, -1) + 1
        turns = self.answers[key]
        turn = turns[min(n, len(turns) - 1)]
        return turn(request) if callable(turn) else turn


@pytest.fixture
def judge_config(upstream) -> JudgeConfig:
    return JudgeConfig(model="judge-test", base_url=f"{upstream.url}/v1", max_concurrent=2, max_retries=1, timeout_s=5)


def test_judge_scenario_then_a_second_materialization_makes_no_call(upstream, judge_config, tmp_path, store):
    checks_first = json.dumps(
        {
            "checks": [
                {"check_id": "SP_read_first", "result": "success", "reason": "SP_read_first looked at"},
                {"check_id": "SP_no_emoji", "result": "fail", "reason": "SP_no_emoji looked at"},
                {"check_id": "UQ_fixed", "result": "success", "reason": "once"},
                {"check_id": "UQ_fixed", "result": "fail", "reason": "twice"},  # answered twice
                {"check_id": "TS_paths", "result": "maybe", "reason": "?"},  # malformed
            ]  # UQ_reported left out: omitted, counted as failed, not asked again
        }
    )
    script = Script(
        {
            CHECKLIST: [say(checks_first), say(verdicts(("UQ_fixed", "success"), ("TS_paths", "success")))],
            STEPS: [
                Fail(429, "rate limited"),  # retried by the client
                say(json.dumps({"steps": [{"step_id": "c-main#0", **criteria(4)}, {"step_id": "c-main#1"}]})),
                say('{"steps": [{"step_id": "c-main#1", "goal_progress": {"score": 9}}]}'),  # still malformed
            ],
        }
    )
    upstream.set_script(script)
    conversations = [run_conversation()]
    with Judge(judge_config, default_cache(store.root)) as judge:
        out = judge_partition(conversations, TASK, {"run-1": OUTCOME}, judge)

    checks = {r["check_id"]: r for r in out.checks.to_pylist()}
    assert [checks[c]["result"] for c in ("SP_read_first", "SP_no_emoji", "UQ_fixed", "UQ_reported", "TS_paths")] == [
        "success",
        "fail",
        "success",
        "fail",
        "success",
    ]
    assert checks["UQ_reported"]["omitted"] and checks["UQ_reported"]["passed"] is False
    assert checks["SP_no_emoji"]["reason"] == "SP_no_emoji looked at"
    assert len({r["input_hash"] for r in checks.values()}) == 1  # the whole checklist in one request
    [summary] = out.summary.to_pylist()
    assert (summary["n_checks"], summary["n_passed"], summary["n_omitted"]) == (5, 3, 1)
    assert summary["csr"] == pytest.approx(3 / 5) and summary["isr"] == 0.0

    steps = out.steps.to_pylist()
    assert [(s["step_index"], s["message_index"]) for s in steps] == [(0, 2), (1, 4)]
    assert steps[0]["step_reward"] == pytest.approx(0.75) and steps[0]["error"] is None  # score 4 → (4-1)/4
    assert {r["criterion"]: r["reason"] for r in steps[0]["rubric"]}["tool_choice"] == "tool_choice is fine"
    assert steps[1]["step_reward"] is None and steps[1]["rubric"] is None  # only the malformed step errs
    assert "malformed judge answer after 2 attempts" in steps[1]["error"]
    assert (summary["n_step_errors"], summary["mean_step_reward"]) == (1, pytest.approx(0.75))

    # checklist: answer + repair; steps: 429, answer, repair
    assert upstream.calls == 5 == out.usage.requests
    assert (out.usage.runs, out.usage.prompts, out.usage.items) == (1, 2, 7)
    assert (out.usage.cache_hits, out.usage.errors) == (0, 1)
    assert out.usage.prompt_tokens > 0 and out.usage.calls_without_cost == 4  # the upstream reports no price
    repairs = [s.request.body for s in upstream.served if len(s.request.body["messages"]) == 4]
    checklist_repair = next(b for b in repairs if CHECKLIST in b["messages"][1]["content"])
    assert checklist_repair["messages"][3]["content"].startswith(REPAIR.split("{")[0])
    assert asked_ids(checklist_repair) == ["UQ_fixed", "TS_paths"]  # only the unusable ones asked again
    assert "UQ_fixed answered 2 times" in checklist_repair["messages"][3]["content"]
    assert asked_ids(next(b for b in repairs if STEPS in b["messages"][1]["content"])) == ["c-main#1"]
    assert upstream.served[0].request.body["response_format"]["json_schema"]["strict"] is True

    partition = {"model": "m", "instance": "i"}
    for table, data in ((JUDGE_CHECKS, out.checks), (JUDGE_STEPS, out.steps), (JUDGE_SUMMARY, out.summary)):
        store.write(table, data, partition)

    with Judge(judge_config, default_cache(store.root)) as judge:  # a new process would do the same
        again = judge_partition(conversations, TASK, {"run-1": OUTCOME}, judge)
    assert upstream.calls == 5 and again.usage.requests == 0  # counted at the upstream: no new call
    assert again.usage.cache_hits == 2 and judge.client is None  # no HTTP client was even made
    drop = ["cached"]
    assert again.checks.drop(drop).equals(out.checks.drop(drop))
    assert again.steps.drop(drop).equals(out.steps.drop(drop))
    assert again.summary.equals(out.summary)


def test_a_persistent_rate_limit_is_an_error_of_its_request_only_and_is_asked_again(upstream, judge_config, store):
    upstream.set_script(Script({CHECKLIST: [Fail(429, "slow down")], STEPS: [every_step(3)]}))
    task = {**TASK, "checklist": {"SP": TASK["checklist"]["SP"]}}
    with Judge(judge_config, default_cache(store.root)) as judge:
        out = judge_partition([run_conversation()], task, {}, judge)
    assert {r["result"] for r in out.checks.to_pylist()} == {"error"}
    assert "RateLimitError" in out.checks.to_pylist()[0]["error"]
    [summary] = out.summary.to_pylist()
    assert summary["csr"] is None and summary["isr"] is None and summary["n_check_errors"] == 2
    assert summary["mean_step_reward"] == pytest.approx(0.5)
    calls = upstream.calls
    assert calls == 2 + 1  # 429 and one client retry; one request for both steps
    with Judge(judge_config, default_cache(store.root)) as judge:
        judge_partition([run_conversation()], task, {}, judge)
    assert upstream.calls == calls + 2  # only the rate-limited request is asked again


def test_a_timed_out_request_is_retried_by_the_client(upstream, judge_config, store):
    upstream.set_script(Script({STEPS: [every_step(5, delay=2.0), every_step(4)]}))
    with Judge(judge_config.model_copy(update={"timeout_s": 0.5}), default_cache(store.root)) as judge:
        out = judge_partition([run_conversation()], {"checklist": {}}, {}, judge)
    assert out.usage.requests == 2 and out.usage.errors == 0
    assert out.summary.to_pylist()[0]["mean_step_reward"] == pytest.approx(0.75)


def test_retry_after_of_a_429_is_waited_for(upstream, judge_config, store):
    """The openai client honours retry-after (up to 120 s; it does not retry a longer wait)."""
    arrivals = []

    def policy(request: ScriptedRequest):
        arrivals.append(time.monotonic())
        if len(arrivals) == 1:
            return Fail(429, "slow down", headers={"retry-after": "1.5"})
        return every_step(4)(request)

    upstream.set_script(policy)
    config = judge_config.model_copy(update={"max_retries": 1, "timeout_s": 5})
    with Judge(config, default_cache(store.root)) as judge:
        out = judge_partition([run_conversation()], {"checklist": {}}, {}, judge)
    assert arrivals[1] - arrivals[0] >= 1.5  # the client's own backoff would be about 0.5 s
    assert out.usage.requests == 2 == upstream.calls
    assert out.usage.errors == 0 and out.summary.to_pylist()[0]["mean_step_reward"] == pytest.approx(0.75)


def long_conversation(n: int, run_id: str = "run-1") -> dict:
    return conversation(
        *steps_of(*[(assistant("", call(f"s{i}", "shell", command=f"echo {i}")), [result(f"s{i}")]) for i in range(n)]),
        run_id=run_id,
    )


@pytest.mark.parametrize("max_concurrent", [1, 3])
def test_concurrency_is_bounded(upstream, judge_config, store, max_concurrent):
    arrivals = []

    def slow(request: ScriptedRequest):
        arrivals.append(time.monotonic())
        return every_step(3, delay=0.3)(request)

    upstream.set_script(slow)
    config = judge_config.model_copy(
        update={"max_concurrent": max_concurrent, "timeout_s": 5, "max_steps_per_request": 1}
    )
    with Judge(config, default_cache(store.root)) as judge:
        out = judge_partition([long_conversation(3)], {"checklist": {}}, {}, judge)
    assert out.summary.to_pylist()[0]["mean_step_reward"] == 0.5
    spread = max(arrivals) - min(arrivals)  # one at a time: 3 requests arrive at least 2 × 0.3 s apart
    assert spread >= 0.55 if max_concurrent == 1 else spread < 0.3


def test_a_run_that_fits_is_two_requests_and_a_long_one_is_split_at_step_boundaries(upstream, judge_config, store):
    upstream.set_script(
        lambda r: (
            say(verdicts(*[(i, "success") for i in asked_ids(r.body)]))
            if CHECKLIST in r.body["messages"][1]["content"]
            else every_step(5)(r)
        )
    )
    with Judge(judge_config, default_cache(store.root)) as judge:
        out = judge_partition([long_conversation(12)], TASK, {}, judge)
    assert out.usage.requests == 2 == upstream.calls and out.usage.errors == 0
    assert out.steps.num_rows == 12 and out.checks.num_rows == 5

    for update, sizes in (({"max_steps_per_request": 5}, [5, 5, 2]), ({"max_prompt_chars": 1000}, None)):
        upstream.set_script(every_step(5))
        with Judge(judge_config.model_copy(update=update), default_cache(store.root)) as judge:
            out = judge_partition([long_conversation(12)], {"checklist": {}}, {}, judge)
        # requests run concurrently: in the order of their first step
        asked = sorted((asked_ids(s.request.body) for s in upstream.served), key=lambda ids: int(ids[0].split("#")[1]))
        assert [sid for ids in asked for sid in ids] == [f"c-main#{i}" for i in range(12)]  # each once, in order
        if sizes:
            assert [len(ids) for ids in asked] == sizes
        else:  # a step here renders to ~150 characters: several per chunk, and every chunk within bounds
            assert 1 < len(asked) < 12
            for served in upstream.served:
                listed = served.request.body["messages"][1]["content"].split("=== conversation c-main (main) ===")[1]
                first = listed.index(f"[{2 * int(asked_ids(served.request.body)[0].split('#')[1]) + 2}] assistant")
                assert len(listed[first:].split("\n\n## The steps to grade")[0]) <= 1000
        assert out.usage.errors == 0 and {r["step_reward"] for r in out.steps.to_pylist()} == {1.0}


def priced(request: ScriptedRequest):
    """Every step asked about graded 4, each answer priced $0.01 as our proxy would."""
    return every_step(4, headers={COST_HEADER: "0.01"})(request)


def test_the_run_budget_stops_judging_and_a_raised_budget_judges_the_rest(upstream, judge_config, store):
    upstream.set_script(priced)
    config = judge_config.model_copy(
        update={"max_concurrent": 1, "max_steps_per_request": 1, "max_cost_per_run_usd": 0.015}
    )
    with Judge(config, default_cache(store.root)) as judge:
        out = judge_partition([long_conversation(4)], {"checklist": {}}, {}, judge)
    assert upstream.calls == 2  # $0.01 spent after the first, $0.02 after the second: then no more
    assert judge.budget_reached == (
        "judge budget judge.max_cost_per_run_usd = $0.015 reached: this run spent $0.0200; not judged"
    )
    errors = [r["error"] for r in out.steps.to_pylist()]
    assert errors[:2] == [None, None] and errors[2:] == [judge.budget_reached] * 2
    assert out.usage.cost_usd == pytest.approx(0.02) and out.usage.errors == 2
    with Judge(config.model_copy(update={"max_cost_per_run_usd": None}), default_cache(store.root)) as judge:
        again = judge_partition([long_conversation(4)], {"checklist": {}}, {}, judge)
    assert upstream.calls == 4 and again.usage.cache_hits == 2  # the unjudged steps were not cached
    assert again.usage.errors == 0


def test_the_release_budget_counts_what_the_store_s_judge_cache_recorded(upstream, judge_config, store):
    upstream.set_script(priced)
    config = judge_config.model_copy(update={"max_concurrent": 1, "max_steps_per_request": 1})
    with Judge(config, default_cache(store.root)) as judge:  # $0.02 recorded in the cache
        judge_partition([long_conversation(2, run_id="run-0")], {"checklist": {}}, {}, judge)
    assert upstream.calls == 2
    other = long_conversation(3, run_id="run-1")
    other["messages"][1]["content"] = "Another task."  # other requests: not in the cache
    with Judge(config.model_copy(update={"max_cost_per_release_usd": 0.02}), default_cache(store.root)) as judge:
        out = judge_partition([other], {"checklist": {}}, {}, judge)
    assert upstream.calls == 2 and out.usage.requests == 0
    assert {r["error"] for r in out.steps.to_pylist()} == {
        f"judge budget judge.max_cost_per_release_usd = $0.02 reached: the judge cache under "
        f"{default_cache(store.root).root} records $0.0200; not judged"
    }
    with Judge(config.model_copy(update={"max_cost_per_release_usd": 0.025}), default_cache(store.root)) as judge:
        out = judge_partition([other], {"checklist": {}}, {}, judge)
    assert upstream.calls == 3 and [r["error"] is None for r in out.steps.to_pylist()] == [True, False, False]
    assert "$0.0300" in judge.budget_reached


def test_read_answer_validates_each_item_on_its_own():
    request = JudgeRequest("x", "checklist", (), ("A", "B", "C"))
    good = verdicts(("A", "success"))
    verdicts_, problems = read_answer(f"```json\n{good}\n```", request)
    assert verdicts_["A"]["result"] == "success" and problems == {}  # B and C left out: omitted
    for bad, problem, usable in [
        ("", "empty", set()),
        ("{", "not JSON", set()),
        ('{"verdicts": []}', "no 'checks' array", set()),
        (verdicts(("A", "maybe"), ("B", "fail")), "is not one of", {"B"}),
        (verdicts(("A", "fail"), ("A", "success"), ("B", "fail")), "answered 2 times", {"B"}),
        (
            '{"checks": [{"check_id": "A", "result": "fail"}, {"check_id": "B", "result": "fail", "reason": ""}]}',
            "reason",
            {"B"},
        ),
    ]:
        verdicts_, problems = read_answer(bad, request)
        assert set(verdicts_) == usable and problem in problems["A"], bad
    # An item naming no asked check: the checks left out may be it, so they are unusable, not omitted.
    verdicts_, problems = read_answer(verdicts(("A", "success"), ("D", "fail")), request)
    assert set(verdicts_) == {"A"} and set(problems) == {"B", "C"} and "'D', not one asked for" in problems["B"]
    # A step left out is unusable (there is no "omitted" step).
    steps = JudgeRequest("x", "steps", (), ("c#0", "c#1"))
    verdicts_, problems = read_answer(graded(("c#0", 3)), steps)
    assert set(verdicts_) == {"c#0"} and problems == {"c#1": "c#1 not answered"}


def test_long_transcripts_keep_the_start_and_the_end_with_a_marker():
    blocks = [f"[{i}] message " + "x" * 100 for i in range(100)]
    text = render_transcript(blocks, budget=2000)
    assert text.startswith("[0] message") and text.endswith(blocks[-1]) and "messages omitted ..." in text
    assert len(text) <= 2100


def test_judge_config_errors_name_the_field(monkeypatch, tmp_path):
    cache = default_cache(tmp_path)
    with pytest.raises(ConfigError, match="rubric_weights"):
        Judge(JudgeConfig(base_url="http://x", rubric_weights={"style": 1.0}), cache)
    with pytest.raises(ConfigError, match="base_url"):
        Judge(JudgeConfig(), cache)
    monkeypatch.delenv("TRAJHUB_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(ConfigError, match="TRAJHUB_TEST_JUDGE_KEY"):
        Judge(JudgeConfig(base_url="http://x", api_key_env="TRAJHUB_TEST_JUDGE_KEY"), cache)


# -- mini-vela's real judge output ----------------------------------------------------------
def _task() -> dict:
    return octocoding_task("benchmark-md-emoji-test-001")


def test_minivela_judge_output_parses_and_its_reward_is_recomputed(store):
    [judged] = read_minivela_judge(SCORES, tasks={"benchmark-md-emoji-test-001": _task()})
    metrics = judged.metrics
    assert (metrics["n_checks"], metrics["n_passed"], metrics["n_omitted"]) == (32, 30, 0)
    assert round(metrics["csr"], 3) == judged.reported_reward == 0.938
    assert metrics["isr"] == judged.reported_binary == 0
    failed = {r["check_id"] for r in judged.rows if not r["passed"]}
    assert failed == {"SP_todowrite_mandatory_usage", "UserQuery_document_generated"}
    rows = pa.Table.from_pylist(judged.rows, schema=JUDGE_CHECKS.schema)
    store.write(JUDGE_CHECKS, rows, {"model": "mini-vela", "instance": "benchmark-md-emoji-test-001"})


def test_a_check_the_judge_left_out_counts_as_failed():
    scores = json.loads(SCORES.read_text())
    sp = scores["results"][0]["eval_result"]["SP"]["checks"]
    sp[:] = [c for c in sp if c["check_id"] != "SP_no_emoji"]  # a passing check the judge "forgot"
    [judged] = minivela_judged(scores, tasks={"benchmark-md-emoji-test-001": _task()})
    [row] = [r for r in judged.rows if r["check_id"] == "SP_no_emoji"]
    assert (row["result"], row["passed"], row["omitted"]) == ("fail", False, True)
    assert judged.metrics["csr"] == pytest.approx(29 / 32)  # mini-vela's own count would say 29/31
    [alone] = minivela_judged(scores)  # without the task, the file's own checks are the checklist
    assert alone.metrics["n_checks"] == 31


def test_minivela_judge_rejects_unknown_results():
    scores = json.loads(SCORES.read_text())
    scores["results"][0]["eval_result"]["SP"]["checks"][0]["result"] = "partial"
    with pytest.raises(RecordError, match=r"eval_result.SP.checks\[0\].result"):
        minivela_judged(scores, source="scores.json")


# -- the demo: batched and per-item judging agree; a cached run never starts the proxy ------------
def demo_tasks() -> list[dict]:
    return [item.record for item in load_catalog(load_config())]


def baseline_conversation(task: dict, policy: str, run_id: str) -> dict:
    """What the builtin agent would record running a baseline policy on a demo task, with the
    tool results made up from the task's workspace (tests fail until a file is written)."""
    policies, source, written = BaselinePolicies([task]), Path(task["workspace_source"]), set()
    messages = [assistant(DEFAULT_SYSTEM_PROMPT) | {"role": "system", "generation": None}]
    for query in task["user_query"]:
        messages.append(assistant(query) | {"role": "user", "generation": None})
        while calls := policies.respond(policy, {"messages": messages}).get("tool_calls"):
            messages.append(assistant("", *calls))
            for c in calls:
                name, arguments = c["function"]["name"], json.loads(c["function"]["arguments"])
                failed = False
                if name == "read_file":
                    path = source / arguments["path"]
                    failed = not path.exists()
                    output = f"no such file: {arguments['path']}" if failed else path.read_text()
                elif name == "write_file":
                    written.add(arguments["path"])
                    output = f"wrote {len(arguments['content'])} characters to {arguments['path']}"
                elif name == "shell" and arguments["command"] == task["test_command"]:
                    output = "Ran 5 tests in 0.01s\n\n" + ("OK" if written else "FAILED (failures=1)")
                elif name == "shell":
                    output = "\n".join(sorted(p.name for p in source.iterdir()))
                else:
                    output = "finished"
                messages.append(result(c["id"], output, name=name, is_error=failed))
            if any(c["function"]["name"] == "finish" for c in calls):
                break
    conv = conversation(run_id=run_id, conversation_id=f"{run_id}-main", tools=BUILTIN_TOOLS)
    return conv | {"messages": messages}


def test_batched_and_per_item_judging_give_the_same_verdicts_on_the_demo(upstream, tmp_path):
    tasks = demo_tasks()
    upstream.set_script(upstream_policy(BaselinePolicies(tasks)))
    batched = JudgeConfig(model="trajhub-baseline/judge", base_url=f"{upstream.url}/v1", max_retries=0)
    per_item = batched.model_copy(update={"max_steps_per_request": 1, "checklist_per_category": True})
    provenance = ["input_hash", "cached"]
    seen_scores, seen_results = set(), set()
    for task in tasks:
        conversations = [baseline_conversation(task, policy, policy) for policy in POLICIES]
        outs = {}
        for name, config in (("batched", batched), ("per_item", per_item)):
            with Judge(config, JudgeCache(tmp_path / name)) as judge:
                outs[name] = judge_partition(conversations, task, {}, judge)
            assert outs[name].usage.errors == 0
        one, other = outs["batched"], outs["per_item"]
        assert one.usage.requests == 2 * len(POLICIES)  # a checklist and a steps request per run
        assert other.usage.requests == len(POLICIES) * len(task["checklist"]) + other.steps.num_rows
        assert one.checks.drop(provenance).to_pylist() == other.checks.drop(provenance).to_pylist()
        assert one.steps.drop(provenance).to_pylist() == other.steps.drop(provenance).to_pylist()
        assert one.summary.to_pylist() == other.summary.to_pylist()
        seen_scores |= {r["score"] for s in one.steps.to_pylist() for r in s["rubric"]}
        seen_results |= {r["result"] for r in one.checks.to_pylist()}
    # The verdicts compared are not all alike: hasty's repeated, blind and empty steps score low.
    assert {1, 2, 4, 5} <= seen_scores and seen_results == {"success", "fail"}


def test_a_fully_cached_judge_rewards_run_never_starts_the_proxy(upstream, tmp_path, monkeypatch):
    instance_id, model = "demo-lru-eviction", "baseline__careful"
    res = resources(tmp_path, write_project(tmp_path, backend="local", instances=(instance_id,)))
    instance = DagsterInstance.ephemeral()
    prepare(instance, res)
    store, config = res["store"].get(), res["project"].load()
    partition = {"model": model, "instance": instance_id}
    task = stored_tasks(store)[instance_id]
    merged = baseline_conversation(task, "careful", "r")
    merged = merged | {"meta": dict.fromkeys(META_FIELDS) | merged["meta"], "tools": []}  # as the merge stores it
    store.write(MERGED_TRAJECTORIES, conversations_to_table([merged]), partition)
    store.write(RUNS, RUNS.schema.empty_table(), partition)
    # Fill the cache with the judge the project names, reached directly (no proxy) for once.
    upstream.set_script(lambda request: say(json.dumps(judge_answer(request.body))))
    direct = config.judge.model_copy(update={"base_url": f"{upstream.url}/v1"})
    conversations, outcomes = partition_inputs(store, partition)
    with Judge(direct, default_cache(store.root)) as judge:
        assert judge_partition(conversations, task, outcomes, judge).usage.requests == 2

    started = []

    def start(self):
        started.append(self)
        raise RuntimeError("the proxy was started")

    monkeypatch.setattr(ProxyResource, "_started", start)
    key = run_key(model, instance_id)
    done = materialize([judge_rewards], partition_key=key, instance=instance, resources=res)
    assert done.success and started == []
    [materialization] = done.asset_materializations_for_node("judge_rewards")
    assert materialization.metadata["judge_requests"].value == 0
    assert materialization.metadata["judge_cache_hits"].value == 2
    # The control: with nothing cached the same run needs the proxy and starts it on its first miss.
    shutil.rmtree(default_cache(store.root).root)
    failed = materialize([judge_rewards], partition_key=key, instance=instance, resources=res, raise_on_error=False)
    assert not failed.success and len(started) == 1
