"""One attempt that goes wrong, in Docker, through the real proxy: a hanging agent is killed
at the run's timeout and a crashing one is recorded as failed; neither leaves a container
behind or loses the calls recorded before the end."""

import json

import pytest

from trajhub_assets.config import ModelConfig, SandboxConfig, load_config
from trajhub_assets.recording.attempts import run_attempt
from trajhub_assets.recording.raw_calls import read_run
from trajhub_assets.recording.scripted_upstream import Fail, Reply, tool_use_block
from trajhub_assets.sandbox.docker import LABEL_RUN_ID
from trajhub_assets.tasks.catalog import load_catalog

TASK = next(item.record for item in load_catalog(load_config()) if item.record["instance_id"] == "demo-lru-eviction")
MODEL = ModelConfig(name="scripted/agent", route="scripted-openai", scaffold="builtin")


def attempt(proxy, backend="docker", timeout_s=300):
    return run_attempt(
        TASK,
        MODEL,
        0,
        proxy.endpoint,
        SandboxConfig(backend=backend, timeout_s=timeout_s, cpus=1, memory="1g"),
    )


def containers_of(client, run_id):
    return client.containers.list(all=True, filters={"label": f"{LABEL_RUN_ID}={run_id}"})


def test_a_hanging_agent_is_killed_at_the_timeout(docker_engine, proxy, upstream):
    upstream.set_script(
        lambda request: Reply([tool_use_block(f"call_{request.index}", "shell", {"command": "sleep 600"})])
    )
    row = attempt(proxy, timeout_s=12)
    assert row["timed_out"] and row["stop_reason"] == "timeout"
    assert row["run_seconds"] < 60
    assert containers_of(docker_engine, row["run_id"]) == []
    recorded = read_run(proxy.recording(row["run_id"])).records
    assert len(recorded) >= 1 and all(r["status"] == "ok" for r in recorded)


def test_a_crashing_agent_is_recorded_as_failed(docker_engine, proxy, upstream):
    script = [Reply([tool_use_block("call_1", "shell", {"command": "ls"})])] + [Fail(500, "upstream exploded")] * 10
    upstream.set_script(lambda request: script[min(request.index, len(script) - 1)])
    row = attempt(proxy)
    assert row["stop_reason"] == "error" and row["agent_exit_code"] == 1
    assert "InternalServerError" in row["agent_stderr_tail"]
    assert not row["timed_out"]
    assert row["error"].startswith("the agent (builtin) exited with 1: InternalServerError")  # a failed run
    assert row["tests_total"] and not row["resolved"]  # the tests still ran after the crash
    assert containers_of(docker_engine, row["run_id"]) == []
    recorded = read_run(proxy.recording(row["run_id"])).records
    statuses = [r["status"] for r in recorded]
    assert statuses[0] == "ok" and "error" in statuses  # the failed calls are recorded too
    first = json.dumps(recorded[0]["response"])
    assert "call_1" in first


@pytest.mark.parametrize("backend", ["local"])
def test_a_sandbox_that_cannot_start_is_a_row_with_its_error(proxy, upstream, backend):
    broken = dict(TASK, workspace_source="/nonexistent/workspace")
    row = run_attempt(broken, MODEL, 0, proxy.endpoint, SandboxConfig(backend=backend))
    assert row["error"].startswith("RecordError") and "workspace_source" in row["error"]
