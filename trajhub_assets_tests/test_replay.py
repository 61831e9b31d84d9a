"""Replay: a recorded run re-run against its recorded responses, and compared.

Units first (masks, lanes, serving, comparison, the replay proxy's routes), then the real
thing: a demo run of the builtin agent (the careful baseline, Docker, through the real
proxy) recorded once and replayed: as it was (fidelity 1.0, through the release_replay
asset) and with its workspace altered (the first divergent call named, with expected and
actual; `trajhub replay` exits with 3); and Claude Code recorded against the
scripted upstream and replayed (fidelity 1.0 after masking its session id and temp path).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from dagster import DagsterInstance, materialize

from trajhub_assets.config import (
    DEFAULT_CONFIG,
    ModelConfig,
    SandboxConfig,
    load_config,
)
from trajhub_assets.recording.attempts import run_attempt
from trajhub_assets.recording.raw_calls import load_runs, read_run
from trajhub_assets.recording.schema import RUNS
from trajhub_assets.recording.scripted_upstream import (
    Fail,
    Reply,
    ScriptedRequest,
    anthropic_message,
    openai_completion,
)
from trajhub_assets.replay.cli import DIVERGED_EXIT_CODE, register
from trajhub_assets.replay.compare import (
    NO_CALL_RECORDED,
    NO_CALL_REPLAYED,
    compare_run,
    first_difference,
)
from trajhub_assets.replay.masks import MASKS, mask_text, masks_markdown
from trajhub_assets.replay.recorded import (
    EXHAUSTED,
    CallMatcher,
    RecordedRun,
    ReplayError,
    ReplayPolicy,
    load_recorded_run,
    reply_for,
)
from trajhub_assets.replay.service import (
    REPLAY_PREFIX,
    replay_proxy_config,
    replay_run_id,
    run_replay,
    sample_runs,
)
from trajhub_assets.resources import ProjectResource, StoreResource
from trajhub_assets.scaffolds import clients, make_scaffold
from trajhub_assets.scaffolds.baselines import BaselinePolicies, upstream_policy
from trajhub_assets.store import Store
from trajhub_assets.tasks.catalog import load_catalog, tasks_to_table
from trajhub_assets.tasks.schema import TASKS

DEMO = {item.record["instance_id"]: item for item in load_catalog(load_config(DEFAULT_CONFIG))}
TASK = DEMO["demo-lru-eviction"].record
CAREFUL = ModelConfig(name="baseline/careful", route="trajhub-baseline/careful", scaffold="builtin")
DOCKER = SandboxConfig(backend="docker", timeout_s=300, cpus=1, memory="1g")


# -- units: records as the proxy writes them ------------------------------------------------
def chat_record(
    seq: int,
    messages: list[dict],
    answer: dict,
    *,
    tools=("shell",),
    status="ok",
    call_kind="agent",
    run_id="m~t~0~0123abcd",
) -> dict:
    request = {
        "model": "scripted-openai",
        "messages": messages,
        "tools": [{"type": "function", "function": {"name": n}} for n in tools],
    }
    response = {"choices": [{"message": answer}], "usage": {"prompt_tokens": 12, "completion_tokens": 3}}
    return {
        "run_id": run_id,
        "call_id": f"c{seq}",
        "seq": seq,
        "wire_format": "openai_chat",
        "call_kind": call_kind,
        "status": status,
        "request": request,
        "response": response if status == "ok" else None,
        "http_status": 200 if status == "ok" else 429,
        "error": None if status == "ok" else {"message": "slow down"},
    }


def shell(call_id: str, command: str) -> dict:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": "shell", "arguments": json.dumps({"command": command}, separators=(",", ":"))},
            }
        ],
    }


def conversation(query: str, results: list[str]) -> list[dict]:
    """Records of an agent that runs `ls` once per result and then answers."""
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": query}]
    records = []
    for step, result in enumerate(results):
        answer = shell(f"call_{query[:3]}{step}", "ls")
        records.append(chat_record(len(records), list(messages), answer))
        messages += [answer, {"role": "tool", "tool_call_id": f"call_{query[:3]}{step}", "content": result}]
    records.append(chat_record(len(records), list(messages), {"role": "assistant", "content": "done"}))
    return records


def recorded_run(records: list[dict], **row) -> RecordedRun:
    base = {
        "run_id": "m~t~0~0123abcd",
        "attempt": 0,
        "scaffold": "builtin",
        "scaffold_version": "1",
        "backend": "docker",
        "stop_reason": "no_tool_call",
        "tests_passed": 3,
        "diff": "",
    }
    return RecordedRun(
        "m~t~0~0123abcd",
        records,
        base | row,
        {"instance_id": "t"},
        ModelConfig(name="m", route="scripted-openai", scaffold="builtin"),
    )


def replay_row(**row) -> dict:
    return {
        "run_id": "replay.m~t~0~89abcdef",
        "backend": "docker",
        "scaffold_version": "1",
        "stop_reason": "no_tool_call",
        "tests_passed": 3,
        "diff": "",
        "error": None,
    } | row


def test_masks_hide_volatile_tokens_and_nothing_else():
    volatile = (
        "Ran 5 tests in 0.003s | Today's date is 2026-11-22. | commit 3f9a2c1d0be | "
        "cwd /tmp/trajhub-abc_123/ws | session 5b0f5a1e-8c1a-4c55-9d1e-0f3c2a9b7d10 | "
        "<Foo at 0x7f3a2b1c> | run baseline__careful~demo-x~0~0123abcd | Nov 22 00:17"
    )
    masked = mask_text(volatile)
    for token in (
        "0.003s",
        "2026-11-22",
        "3f9a2c1d0be",
        "trajhub-abc_123",
        "5b0f5a1e",
        "0x7f3a2b1c",
        "0123abcd",
        "00:17",
    ):
        assert token not in masked, token
    assert "/tmp/<tmp>/ws" in masked and "Ran 5 tests in <duration>" in masked
    steady = "version 1.2.3 defaced line 42 of cache.py: capacity must be at least 1 (took 3 tries)"
    assert mask_text(steady) == steady
    assert len(masks_markdown().splitlines()) == len(MASKS) + 2


def test_lanes_serve_interleaved_conversations_in_their_own_order():
    first, second = conversation("fix the cache", ["a", "b"]), conversation("title please", ["c"])
    records = sorted(first + second, key=lambda r: r["seq"])  # seq ties: both start at 0
    matcher = CallMatcher(records)
    # The second conversation's calls arrive first this time: each still gets its own responses.
    order = [second[0], first[0], second[1], first[1], first[2]]
    served = [records[matcher.match("openai_chat", r["request"])] for r in order]
    assert served == order
    assert matcher.match("openai_chat", first[2]["request"]) is None  # the lane is spent
    # A tool set the recording never offered falls back to the conversation's lane, in order.
    other = CallMatcher(records)
    changed = dict(first[0]["request"], tools=[{"type": "function", "function": {"name": "grep"}}])
    assert records[other.match("openai_chat", changed)] is first[0]


def test_the_policy_serves_recorded_answers_failures_and_then_a_400():
    records = [
        chat_record(0, [{"role": "user", "content": "q"}], {}, status="error"),
        chat_record(1, [{"role": "user", "content": "q"}], shell("call_1", "ls")),
    ]
    policy = ReplayPolicy(recorded_run(records))

    def ask():
        return policy(ScriptedRequest(0, "/v1/chat/completions", "openai_chat", records[0]["request"], {}))

    failure = ask()
    assert isinstance(failure, Fail) and failure.status == 429 and failure.message == "slow down"
    reply = ask()
    completion = openai_completion(reply, "m", "id")
    # the model's own argument text, verbatim (no spaces added by a re-encoding)
    assert completion["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"command":"ls"}'
    assert completion["usage"]["prompt_tokens"] == 12
    exhausted = ask()
    assert isinstance(exhausted, Fail) and exhausted.status == 400 and EXHAUSTED in exhausted.message


def test_anthropic_responses_are_served_block_for_block():
    content = [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "text", "text": "Running it."},
        {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}},
    ]
    record = {
        "wire_format": "anthropic_messages",
        "call_kind": "agent",
        "status": "ok",
        "response": {
            "content": content,
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 7, "output_tokens": 9, "cache_read_input_tokens": 100},
        },
    }
    reply = reply_for(record)
    assert isinstance(reply, Reply)
    served = anthropic_message(reply, "m", "id")
    assert served["content"] == content and served["stop_reason"] == "tool_use"
    assert served["usage"]["cache_read_input_tokens"] == 100
    count = reply_for(
        {
            "wire_format": "anthropic_messages",
            "call_kind": "count_tokens",
            "status": "ok",
            "response": {"input_tokens": 4242},
        }
    )
    assert count.input_tokens == 4242


def test_a_changed_tool_result_is_the_first_divergence():
    recorded = conversation("fix the cache", ["cache.py\ntests", "OK"])
    replayed = conversation("fix the cache", ["cache.py\ntests", "FAILED (failures=1)"])
    for record in replayed:
        record["run_id"] = "replay.m~t~0~89abcdef"
    report = compare_run(recorded_run(recorded), replayed, replay_row(tests_passed=2))
    assert report.recorded_calls == 3 and report.matched_calls == 2 and report.fidelity == pytest.approx(2 / 3)
    first = report.first_divergence
    assert (first.call_index, first.seq, first.path) == (2, 2, "messages[5].content")
    assert (first.expected, first.actual) == ("OK", "FAILED (failures=1)")
    assert [d.path for d in report.outcome_differences] == ["tests_passed"]
    assert not report.reproduced and "DIVERGED" in report.text()


def test_masked_differences_match_but_are_reported_raw():
    recorded = conversation("fix the cache", ["Ran 5 tests in 0.003s\n\nOK"])
    replayed = conversation("fix the cache", ["Ran 5 tests in 0.004s\n\nOK"])
    report = compare_run(recorded_run(recorded), replayed, replay_row())
    assert report.fidelity == 1.0 and report.raw_matched_calls == 1 and report.reproduced
    raw = report.first_raw_difference
    assert raw.call_index == 1 and "0.003s" in raw.expected and "0.004s" in raw.actual


def test_missing_and_extra_calls_lower_the_fidelity():
    recorded = conversation("fix the cache", ["a", "b"])
    stopped = compare_run(recorded_run(recorded), recorded[:1], replay_row())
    assert stopped.fidelity == pytest.approx(1 / 3)
    assert stopped.first_divergence.call_index == 1 and stopped.first_divergence.actual == NO_CALL_REPLAYED
    longer = conversation("fix the cache", ["a", "b", "c"])
    extra = compare_run(recorded_run(recorded), longer, replay_row())
    # the three recorded requests were sent again, then one more the recording lacks
    assert extra.extra_calls == 1 and extra.fidelity == pytest.approx(3 / 4)
    assert extra.first_divergence.call_index == 3 and extra.first_divergence.seq is None
    assert extra.first_divergence.expected == NO_CALL_RECORDED and '"c"' in extra.first_divergence.actual


def test_a_call_the_client_retried_after_a_transport_error_is_not_a_divergence():
    recorded = conversation("fix the cache", ["a", "b"])
    replayed = [dict(record) for record in recorded]
    hiccup = dict(replayed[1], status="error", response=None, error={"message": "Can not write request body"})
    replayed = [replayed[0], hiccup] + [dict(r, seq=r["seq"] + 1) for r in replayed[1:]]
    report = compare_run(recorded_run(recorded), replayed, replay_row())
    assert report.reproduced and report.client_retries == 1 and report.extra_calls == 0
    assert "1 failed call(s) the client retried" in report.text()
    # A failure the recording has too is part of the run: it is compared, not dropped.
    recorded_hiccup = [recorded[0], dict(hiccup)] + [dict(r, seq=r["seq"] + 1) for r in recorded[1:]]
    same = compare_run(recorded_run(recorded_hiccup), replayed, replay_row())
    assert same.reproduced and same.client_retries == 0 and same.recorded_calls == 4
    # A failure the client did not retry with the same request is not a retry.
    gave_up = compare_run(recorded_run(recorded), replayed[:2], replay_row())
    assert gave_up.client_retries == 0 and not gave_up.reproduced


def test_first_difference_names_the_path():
    assert first_difference({"a": [1, {"b": "xyz"}]}, {"a": [1, {"b": "xYz"}]}) == ("a[1].b", "xyz", "xYz")
    assert first_difference({"a": 1}, {"a": 1, "c": 2}) == ("c", "(absent)", "2")
    assert first_difference({"tools": [1], "messages": [1]}, {"tools": [2], "messages": [2]})[0] == "messages[0]"


def test_replay_routes_keep_the_recorded_model_names():
    anthropic = [
        {
            "wire_format": "anthropic_messages",
            "call_kind": "agent",
            "model": "claude-x",
            "request": {"model": "claude-x"},
        }
    ]
    config = replay_proxy_config([recorded_run(conversation("q", [])), recorded_run(anthropic)])
    routes = {entry["model_name"]: entry["litellm_params"] for entry in config["model_list"]}
    assert routes == {
        "claude-x": {
            "model": "anthropic/claude-x",
            "api_base": "os.environ/TRAJHUB_SCRIPTED_UPSTREAM_URL",
            "api_key": "os.environ/TRAJHUB_SCRIPTED_UPSTREAM_KEY",
        },
        "scripted-openai": {
            "model": "openai/scripted-openai",
            "api_base": "os.environ/TRAJHUB_SCRIPTED_UPSTREAM_V1_URL",
            "api_key": "os.environ/TRAJHUB_SCRIPTED_UPSTREAM_KEY",
        },
    }
    assert config["litellm_settings"]["callbacks"] == "trajectory_logger.instance"
    both = [dict(anthropic[0], wire_format="openai_chat"), anthropic[0]]
    with pytest.raises(ReplayError, match="claude-x"):
        replay_proxy_config([recorded_run(both)])
    with pytest.raises(ReplayError, match="openai_responses"):
        replay_proxy_config([recorded_run([dict(anthropic[0], wire_format="openai_responses")])])


def test_replay_run_ids_are_marked_and_samples_are_stable():
    replay = replay_run_id("baseline__careful~demo-x~1~0123abcd")
    assert replay.startswith(f"{REPLAY_PREFIX}baseline__careful~demo-x~1~") and not replay.endswith("0123abcd")
    runs = [f"m~t~{i}~0123abcd" for i in range(10)]
    assert sample_runs(runs, 3) == sample_runs(list(reversed(runs)), 3) and len(sample_runs(runs, 3)) == 3
    assert sample_runs(runs, 0) == [] and len(sample_runs(runs, 50)) == 10


# -- the real thing -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def recorded_builtin(docker_engine, proxy, scripted_upstream, tmp_path_factory):
    """A demo run (careful baseline, builtin agent, Docker) stored as raw_trajectories stores it."""
    scripted_upstream.set_script(upstream_policy(BaselinePolicies([TASK])))
    row = run_attempt(TASK, CAREFUL, 0, proxy.endpoint, DOCKER)
    assert row["error"] is None and row["resolved"], row
    store = Store(tmp_path_factory.mktemp("replay") / "home")
    partition = {"model": CAREFUL.key, "instance": TASK["instance_id"]}
    store.write(TASKS, tasks_to_table([DEMO["demo-lru-eviction"]]))
    store.write(RUNS, pa.Table.from_pylist([row], schema=RUNS.schema), partition)
    load_runs(store, [proxy.recording(row["run_id"])], CAREFUL.key, TASK["instance_id"])
    return store, row["run_id"]


def test_an_altered_workspace_names_the_first_divergent_call(recorded_builtin, proxy, upstream, tmp_path):
    store, run_id = recorded_builtin
    recorded = load_recorded_run(store, run_id)
    workspace = tmp_path / "workspace"
    shutil.copytree(TASK["workspace_source"], workspace)
    cache = workspace / "lrucache" / "cache.py"
    cache.write_text(cache.read_text().replace("class LRUCache:", "# ALTERED\nclass LRUCache:"))
    altered = dataclasses.replace(recorded, task=dict(recorded.task, workspace_source=str(workspace)))
    report = run_replay(altered, proxy.endpoint, proxy.recordings, DOCKER, upstream.set_script)
    assert not report.reproduced and report.fidelity < 1.0
    # The careful baseline lists the files, then reads lrucache/cache.py: the request after the
    # read is the first to carry the altered file.
    read = next(
        i
        for i, r in enumerate(recorded.records)
        if "read_file" in json.dumps(r["response"]) and "cache.py" in json.dumps(r["response"])
    )
    first = report.first_divergence
    assert (first.call_index, first.seq) == (read + 1, recorded.records[read + 1]["seq"]), report.text()
    assert first.path.startswith("messages[") and first.path.endswith(".content")
    assert "# ALTERED" in first.actual and "# ALTERED" not in first.expected
    assert "diff" in [d.path for d in report.outcome_differences]  # the fix was written over another base
    assert f"agent call {read + 1}" in report.text()


def test_claude_code_replays_with_fidelity_one(proxy, upstream, tmp_path):
    from trajhub_assets_tests.test_scaffolds_cli import agent_policy, make_task

    try:
        make_scaffold("claudecode").install()
    except clients.ClientError as error:
        pytest.fail(f"Claude Code is not installed (scripts/install_clients.sh): {error}")
    task = make_task(tmp_path)
    model = ModelConfig(name="scripted/claude", route="scripted-anthropic", scaffold="claudecode")
    local = SandboxConfig(backend="local", timeout_s=300)
    upstream.set_script(agent_policy("claudecode"))
    row = run_attempt(task, model, 0, proxy.endpoint, local)
    assert row["error"] is None and row["agent_exit_code"] == 0, row
    recorded = RecordedRun(row["run_id"], read_run(proxy.recording(row["run_id"])).records, row, task, model)
    report = run_replay(recorded, proxy.endpoint, proxy.recordings, local, upstream.set_script)
    assert report.reproduced and report.fidelity == 1.0, report.text()
    assert report.recorded_calls >= 3 and report.side_call_differences == 0
    # Claude Code's requests name its session (a uuid) and the workspace's temporary path:
    # no call is byte-identical, and the report shows what the masks hid.
    assert report.raw_matched_calls == 0 and report.first_raw_difference is not None


def test_release_replay_samples_the_release_and_checks_it(recorded_builtin, tmp_path):
    from trajhub_assets.replay.assets import CHECK, release_replay

    store, run_id = recorded_builtin
    release = store.root / "releases" / "replay-test" / "v-test"
    (release / "data" / "trajectories").mkdir(parents=True)
    pq.write_table(pa.table({"run_id": [run_id]}), release / "data" / "trajectories" / "train-00000-of-00001.parquet")
    (release / "manifest.json").write_text("{}")
    config = tmp_path / "project.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "tasks": [{"path": str(DEFAULT_CONFIG.parent / "tasks/demo/tasks.jsonl")}],
                "models": [{"name": CAREFUL.name, "route": CAREFUL.route, "scaffold": "builtin"}],
                "sandbox": DOCKER.model_dump(),
                "release": {"name": "replay-test", "replay_sample": 3},
            }
        )
    )
    result = materialize(
        [release_replay],
        instance=DagsterInstance.ephemeral(),
        resources={"store": StoreResource(root=str(store.root)), "project": ProjectResource(path=str(config))},
    )
    assert result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == CHECK and check.passed
    (materialization,) = result.asset_materializations_for_node("release_replay")
    assert materialization.metadata["replayed"].value == 1  # the release holds one run
    assert [r.data for r in materialization.metadata["replays"].records] == [
        {"run": run_id, "fidelity": 1.0, "first_divergence": "none", "outcome_differs_in": "same"}
    ]
    (row,) = store.sql("SELECT * FROM replays WHERE release_version = 'v-test'").to_pylist()
    assert (row["run_id"], row["fidelity"], row["reproduced"]) == (run_id, 1.0, True)
    assert row["recorded_calls"] >= 8 and row["matched_calls"] == row["recorded_calls"] == row["replayed_calls"]
    assert row["divergence_path"] is None and row["outcome_differences"] == []
    assert row["replay_run_id"].startswith(REPLAY_PREFIX)
    # The replay's calls went through a proxy of its own, recorded apart from the runs, and
    # asked for the model the run asked for.
    replayed = read_run(store.root / "replays" / "recordings" / f"{row['replay_run_id']}.jsonl").records
    assert len(replayed) == row["recorded_calls"] and {r["model"] for r in replayed} == {CAREFUL.route}
    assert not (store.root / "recordings").exists()


def test_a_divergence_exits_non_zero(recorded_builtin, monkeypatch, capsys, tmp_path):
    """`trajhub replay` on a run whose task changed since: exit code 3, the divergence printed."""
    store, run_id = recorded_builtin
    changed = tmp_path / "home"
    shutil.copytree(store.root / "tables", changed / "tables", ignore=shutil.ignore_patterns("replays"))
    workspace = tmp_path / "workspace"
    shutil.copytree(TASK["workspace_source"], workspace)
    (workspace / "EXTRA_FILE.txt").write_text("not in the recording\n")  # `ls -R` shows it
    item = dataclasses.replace(DEMO["demo-lru-eviction"], record=dict(TASK, workspace_source=str(workspace)))
    Store(changed).write(TASKS, tasks_to_table([item]))
    monkeypatch.setenv("TRAJHUB_HOME", str(changed))
    monkeypatch.setenv("TRAJHUB_CONFIG", str(DEFAULT_CONFIG))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["replay", run_id, "--no-store"])
    with pytest.raises(SystemExit) as exit_:
        args.func(args)
    assert exit_.value.code == DIVERGED_EXIT_CODE
    out = capsys.readouterr().out
    assert "DIVERGED" in out and "EXTRA_FILE.txt" in out and "first divergence: agent call 1" in out, out
    assert "replays" not in Store(changed).table_names()
