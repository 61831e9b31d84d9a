"""The LLM judge against the scripted upstream (real HTTP, OpenAI chat wire format):
good, malformed and incomplete answers, a rate limit, a timeout, the cache; and mini-vela's
real judge output parsed into our schema."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

from trajhub_assets.config import JudgeConfig
from trajhub_assets.errors import ConfigError, RecordError
from trajhub_assets.recording.scripted_upstream import Fail, ScriptedRequest, say
from trajhub_assets.rewards.judge import (
    REPAIR,
    RUBRIC,
    Judge,
    JudgeItem,
    _MalformedAnswer,
    checklist_schema,
    default_cache,
    judge_partition,
    parse_answer,
    render_transcript,
)
from trajhub_assets.rewards.minivela_judge import minivela_judged, read_minivela_judge
from trajhub_assets.rewards.schema import JUDGE_CHECKS, JUDGE_STEPS, JUDGE_SUMMARY
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


def rubric(score: int) -> str:
    return json.dumps({name: {"score": score, "reason": f"{name} is fine"} for name in RUBRIC})


class Script:
    """Answers by what a request judges (category or step), in turn per item; counts requests."""

    def __init__(self, answers: dict[str, list]):
        self.answers, self.seen, self.lock = answers, {}, threading.Lock()

    def __call__(self, request: ScriptedRequest):
        prompt = request.body["messages"][1]["content"]
        key = next(k for k in self.answers if k in prompt)
        with self.lock:
            n = self.seen[key] = self.seen.get(key, -1) + 1
        turns = self.answers[key]
        return turns[min(n, len(turns) - 1)]


@pytest.fixture
def judge_config(upstream) -> JudgeConfig:
    return JudgeConfig(
        model="judge-test", base_url=f"{upstream.url}/v1", max_concurrent=2, max_retries=1, timeout_s=0.5
    )


def test_judge_scenario_then_a_second_materialization_makes_no_call(upstream, judge_config, tmp_path, store):
    script = Script(
        {
            "category 'SP'": [say(verdicts(("SP_read_first", "success"), ("SP_no_emoji", "fail")))],
            "category 'User query'": [
                say("Sure! Here is my verdict: all good."),  # malformed, then it omits one
                say(verdicts(("UQ_fixed", "success"))),
            ],
            "category 'Tool schema'": [Fail(429, "rate limited"), say(verdicts(("TS_paths", "success")))],
            "step 0 of conversation": [say(rubric(5), delay=2.0), say(rubric(4))],  # the first one times out
            "step 1 of conversation": [say('{"goal_progress": {"score": 9}}')],  # always malformed
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
    [summary] = out.summary.to_pylist()
    assert (summary["n_checks"], summary["n_passed"], summary["n_omitted"]) == (5, 3, 1)
    assert summary["csr"] == pytest.approx(3 / 5) and summary["isr"] == 0.0

    steps = out.steps.to_pylist()
    assert [(s["step_index"], s["message_index"]) for s in steps] == [(0, 2), (1, 4)]
    assert steps[0]["step_reward"] == pytest.approx(0.75) and steps[0]["error"] is None  # score 4 → (4-1)/4
    assert {r["criterion"]: r["reason"] for r in steps[0]["rubric"]}["tool_choice"] == "tool_choice is fine"
    assert steps[1]["step_reward"] is None and steps[1]["rubric"] is None
    assert "malformed judge answer after 2 attempts" in steps[1]["error"]
    assert (summary["n_step_errors"], summary["mean_step_reward"]) == (1, pytest.approx(0.75))

    # 1 SP + 2 User query + 2 Tool schema (429, retry) + 2 step 0 (timeout, retry) + 2 step 1 (malformed twice)
    assert upstream.calls == 9 == out.usage.requests
    assert (out.usage.items, out.usage.cache_hits, out.usage.errors) == (5, 0, 1)
    assert out.usage.prompt_tokens > 0 and out.usage.calls_without_cost == 7  # the upstream reports no price
    repair = [
        s.request.body["messages"] for s in upstream.served if "User query" in s.request.body["messages"][1]["content"]
    ][1]
    assert len(repair) == 4 and repair[3]["content"].startswith(REPAIR.split("{")[0])
    assert upstream.served[0].request.body["response_format"]["type"] == "json_schema"

    partition = {"model": "m", "instance": "i"}
    for table, data in ((JUDGE_CHECKS, out.checks), (JUDGE_STEPS, out.steps), (JUDGE_SUMMARY, out.summary)):
        store.write(table, data, partition)

    with Judge(judge_config, default_cache(store.root)) as judge:  # a new process would do the same
        again = judge_partition(conversations, TASK, {"run-1": OUTCOME}, judge)
    assert upstream.calls == 9 and again.usage.requests == 0  # counted at the upstream: no new call
    assert again.usage.cache_hits == 5
    drop = ["cached"]
    assert again.checks.drop(drop).equals(out.checks.drop(drop))
    assert again.steps.drop(drop).equals(out.steps.drop(drop))
    assert again.summary.equals(out.summary)


def test_a_persistent_rate_limit_is_an_item_error_and_is_asked_again_next_time(upstream, judge_config, store):
    upstream.set_script(
        Script({"category": [Fail(429, "slow down")], "step 0": [say(rubric(3))], "step 1": [say(rubric(5))]})
    )
    task = {**TASK, "checklist": {"SP": TASK["checklist"]["SP"]}}
    with Judge(judge_config, default_cache(store.root)) as judge:
        out = judge_partition([run_conversation()], task, {}, judge)
    assert {r["result"] for r in out.checks.to_pylist()} == {"error"}
    assert "RateLimitError" in out.checks.to_pylist()[0]["error"]
    [summary] = out.summary.to_pylist()
    assert summary["csr"] is None and summary["isr"] is None and summary["n_check_errors"] == 2
    assert summary["mean_step_reward"] == pytest.approx((0.5 + 1.0) / 2)
    calls = upstream.calls
    assert calls == 2 + 2  # 429 and one client retry; one call per step
    with Judge(judge_config, default_cache(store.root)) as judge:
        judge_partition([run_conversation()], task, {}, judge)
    assert upstream.calls == calls + 2  # only the rate-limited item is asked again


@pytest.mark.parametrize("max_concurrent", [1, 3])
def test_concurrency_is_bounded(upstream, judge_config, store, max_concurrent):
    arrivals = []

    def slow(request: ScriptedRequest):
        arrivals.append(time.monotonic())
        return say(rubric(3), delay=0.3)

    upstream.set_script(slow)
    conv = conversation(
        *steps_of(*[(assistant("", call(f"s{i}", "shell", command=f"echo {i}")), [result(f"s{i}")]) for i in range(3)])
    )
    config = judge_config.model_copy(update={"max_concurrent": max_concurrent, "timeout_s": 5})
    with Judge(config, default_cache(store.root)) as judge:
        out = judge_partition([conv], {"checklist": {}}, {}, judge)
    assert out.summary.to_pylist()[0]["mean_step_reward"] == 0.5
    spread = max(arrivals) - min(arrivals)  # one at a time: 3 requests arrive at least 2 × 0.3 s apart
    assert spread >= 0.55 if max_concurrent == 1 else spread < 0.3


def test_parse_answer_validates_against_the_schema_sent():
    item = JudgeItem("x", "checklist", (), checklist_schema(["A", "B"]))
    good = verdicts(("A", "success"))
    assert parse_answer(f"```json\n{good}\n```", item)["checks"][0]["check_id"] == "A"
    for bad, problem in [
        ("", "empty"),
        ("{", "not JSON"),
        (verdicts(("C", "success")), "is not one of"),
        (verdicts(("A", "maybe")), "is not one of"),
        (verdicts(("A", "fail"), ("A", "success")), "more than once"),
        ('{"checks": [{"check_id": "A", "result": "fail"}]}', "reason"),
    ]:
        with pytest.raises(_MalformedAnswer, match=problem):
            parse_answer(bad, item)


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
