"""The builtin agent's tools and the baseline policies, on the local sandbox backend."""

import json

import pytest

from trajhub_assets.config import load_config
from trajhub_assets.sandbox import Limits, collect_outcome, make_sandbox
from trajhub_assets.scaffolds.baselines import BaselinePolicies
from trajhub_assets.scaffolds.builtin import AgentLimits, Toolbox, ToolError
from trajhub_assets.tasks.catalog import load_catalog

DEMO = [item.record for item in load_catalog(load_config())]
LRU = next(t for t in DEMO if t["instance_id"] == "demo-lru-eviction")


@pytest.fixture
def toolbox():
    with make_sandbox(LRU, backend="local", limits=Limits(run_timeout=120)) as sandbox:
        yield Toolbox(sandbox, AgentLimits(command_timeout=30))


@pytest.mark.parametrize("path", ["../outside.txt", "/etc/passwd", "lrucache/../../x"])
def test_paths_outside_the_workspace_are_refused(toolbox, path):
    with pytest.raises(ToolError, match="outside the workspace"):
        toolbox.call("read_file", json.dumps({"path": path}))


def test_read_edit_search_shell(toolbox):
    assert "class LRUCache" in toolbox.call("read_file", '{"path": "lrucache/cache.py"}')
    assert toolbox.call("read_file", '{"path": "lrucache/./cache.py"}')
    toolbox.call(
        "edit_file",
        json.dumps({"path": "lrucache/cache.py", "old": "class LRUCache", "new": "class LRUCache  # edited"}),
    )
    assert "# edited" in toolbox.call("search", '{"pattern": "edited", "path": "."}')
    assert toolbox.call("search", '{"pattern": "no such text anywhere", "path": "."}') == "no match"
    assert toolbox.call("shell", '{"command": "echo hi"}') == "exit code 0\nhi"


@pytest.mark.parametrize(
    "name, arguments, message",
    [
        ("shell", '{"command": "exit 3"}', "exit code 3"),
        ("read_file", '{"path": "missing.py"}', "cannot read missing.py"),
        ("edit_file", '{"path": "lrucache/cache.py", "old": "self", "new": "x"}', "occurs .* times"),
        ("launch", "{}", "unknown tool 'launch'"),
        ("shell", "{not json", "not valid JSON"),
        ("shell", '{"cmd": "ls"}', "unexpected keyword argument"),
    ],
)
def test_tool_errors_go_back_to_the_model(toolbox, name, arguments, message):
    with pytest.raises(ToolError, match=message):
        toolbox.call(name, arguments)


def drive(policy: str, task: dict, seed: int | None = None) -> tuple[list[dict], object]:
    """Let a baseline policy pick each tool call and carry it out with the builtin tools."""
    policies = BaselinePolicies(DEMO)
    with make_sandbox(task, backend="local", limits=Limits(run_timeout=300)) as sandbox:
        toolbox = Toolbox(sandbox, AgentLimits(command_timeout=60))
        messages = [{"role": "system", "content": "baseline test"}]
        for query in task["user_query"]:
            messages.append({"role": "user", "content": query})
            for _ in range(50):
                message = policies.respond(
                    policy, {"messages": messages} | ({"seed": seed} if seed is not None else {})
                )
                messages.append(message)
                if not message.get("tool_calls"):
                    break
                (call,) = message["tool_calls"]
                try:
                    output = toolbox.call(call["function"]["name"], call["function"]["arguments"])
                except ToolError as error:
                    output = f"ERROR: {error}"
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": output})
                if call["function"]["name"] == "finish":
                    break
        return messages, collect_outcome(sandbox, task)


@pytest.mark.parametrize("task", DEMO, ids=[t["instance_id"] for t in DEMO])
def test_careful_baseline_fixes_every_demo_task(task):
    messages, outcome = drive("careful", task)
    assert outcome.tests_failed == 0 and outcome.tests_passed == outcome.tests_total > 0
    names = [m["tool_calls"][0]["function"]["name"] for m in messages if m.get("tool_calls")]
    assert names.index("read_file") < names.index("write_file")
    assert names[-1] == "finish" and outcome.diff


def test_hasty_baseline_repeats_itself_and_skips_the_tests():
    messages, outcome = drive("hasty", LRU)
    commands = [
        json.loads(m["tool_calls"][0]["function"]["arguments"]).get("command") for m in messages if m.get("tool_calls")
    ]
    assert commands[:2] == ["ls", "ls"]
    assert LRU["test_command"] not in commands
    assert outcome.diff and "lrucache/cache.py" in outcome.diff


def test_unknown_task_gets_a_plain_answer():
    reply = BaselinePolicies(DEMO).respond("careful", {"messages": [{"role": "user", "content": "hi"}]})
    assert reply == {"role": "assistant", "content": "baseline: this is not a known task."}


def _actions(messages: list[dict]) -> list[tuple[str, str]]:
    return [
        (m["tool_calls"][0]["function"]["name"], m["tool_calls"][0]["function"]["arguments"])
        for m in messages
        if m.get("tool_calls")
    ]


def test_the_explorer_is_seeded_and_its_runs_differ_in_path_and_outcome():
    runs = {seed: drive("explorer", LRU, seed) for seed in range(8)}
    assert _actions(drive("explorer", LRU, 3)[0]) == _actions(runs[3][0])  # a seed is one run
    assert len({tuple(_actions(messages)) for messages, _ in runs.values()}) >= 6
    assert {outcome.resolved for _, outcome in runs.values()} == {True, False}
    for messages, _ in runs.values():
        assert _actions(messages)[-1][0] == "finish" and len(_actions(messages)) <= 11
