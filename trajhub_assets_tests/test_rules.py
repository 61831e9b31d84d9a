"""The rule layer: each rule fires where it should, stays quiet where it should not, and
its evidence rows point at the right step."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trajhub_assets.rewards import rules
from trajhub_assets.rewards.rules import (
    RULES,
    RULESET_VERSION,
    Hit,
    RuleContext,
    build_run,
    command_matches,
    forbidden_patterns,
    median_steps,
    rule,
    rule_tables,
    ruleset_version,
    score_rules,
    summarize_rules,
    trajectory_lengths,
    truncate,
)
from trajhub_assets.rewards.schema import RULE_STEPS, RULE_SUMMARY
from trajhub_assets.scaffolds import SCAFFOLDS, ScaffoldEntry

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

# The builtin scaffold's tools, with JSON schemas as a request would carry them.
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": name,
            "parameters": {
                "type": "object",
                "properties": {p: {"type": "string"} for p in params},
                "required": list(params),
                "additionalProperties": False,
            },
        },
    }
    for name, params in [
        ("read_file", ["path"]),
        ("write_file", ["path", "content"]),
        ("edit_file", ["path", "old", "new"]),
        ("shell", ["command"]),
        ("finish", ["answer"]),
    ]
]


def call(call_id: str, name: str, arguments: dict | str | None = None, **kwargs) -> dict:
    arguments = kwargs if arguments is None else arguments
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)},
    }


def assistant(content: str = "", *calls: dict, generation: bool = True) -> dict:
    return {
        "role": "assistant",
        "content": content,
        "reasoning_content": None,
        "tool_calls": list(calls) or None,
        "tool_call_id": None,
        "name": None,
        "is_error": None,
        "generation": generation,
    }


def result(call_id: str, content: str = "ok", *, name: str | None = None, is_error: bool = False) -> dict:
    return {
        "role": "tool",
        "content": content,
        "reasoning_content": None,
        "tool_calls": None,
        "tool_call_id": call_id,
        "name": name,
        "is_error": is_error,
        "generation": None,
    }


def conversation(
    *messages: dict,
    kind: str = "main",
    run_id: str = "run-1",
    conversation_id: str = "c-main",
    tools: list | None = None,
    started_at: float = 0.0,
    branch_index: int | None = None,
    attempt: int = 0,
) -> dict:
    head = [
        {"role": "system", "content": "You are a careful engineer.", "generation": None},
        {"role": "user", "content": "Fix the bug in calc.py.", "generation": None},
    ]
    return {
        "meta": {
            "run_id": run_id,
            "model": "m",
            "instance": "i",
            "attempt": attempt,
            "conversation_id": conversation_id,
            "kind": kind,
            "parent_conversation_id": None,
            "branch_index": branch_index,
            "call_ids": [],
            "started_at": started_at,
        },
        "tools": TOOLS if tools is None else tools,
        "messages": head + list(messages),
    }


def steps_of(*pairs) -> list[dict]:
    """Messages from (assistant, [results]) pairs."""
    return [m for a, results in pairs for m in [a, *results]]


def octocoding_task(instance_id: str) -> dict:
    """One real OctoCodingBench record."""
    with open(SHARED / "octocodingbench" / "tasks_checklist_72.jsonl", encoding="utf-8") as f:
        return next(json.loads(line) for line in f if json.loads(line)["instance_id"] == instance_id)


TASK = {"instance_id": "i", "user_query": ["Fix the bug in calc.py."], "checklist": {}}
CONTEXT = RuleContext(forbidden_commands=("rm -rf /", "git push --force"))


def hits(conversations, rule_id, *, task=TASK, outcome=None, context=CONTEXT) -> list[dict]:
    return [r for r in score_rules(conversations, task, outcome, context) if r["rule_id"] == rule_id]


def points_at(row: dict, conversations: list[dict]) -> dict:
    """The assistant message a row names; it must be the step_index-th generated one."""
    conv = next(c for c in conversations if c["meta"]["conversation_id"] == row["conversation_id"])
    message = conv["messages"][row["message_index"]]
    generated = [i for i, m in enumerate(conv["messages"]) if m["role"] == "assistant" and m.get("generation")]
    assert message["role"] == "assistant" and generated.index(row["message_index"]) == row["step_index"]
    if row["tool_call_id"] is not None:
        assert row["tool_call_id"] in [c["id"] for c in message["tool_calls"]]
    return message


FINAL = (assistant("Fixed: calc.add now returns a + b; tests pass."), [])


# -- repeated_tool_call ---------------------------------------------------------------------
def test_repeated_call_fires_on_the_later_step():
    conv = conversation(
        *steps_of(
            (assistant("", call("a", "read_file", path="calc.py")), [result("a")]),
            (assistant("", call("b", "shell", command="ls")), [result("b")]),
            (assistant("", call("c", "read_file", path="calc.py")), [result("c")]),
            FINAL,
        )
    )
    [row] = hits([conv], "repeated_tool_call")
    assert (row["step_index"], row["tool_call_id"], row["value"]) == (2, "c", -1.0)
    assert "step 0" in row["detail"]
    points_at(row, [conv])


def test_repeated_call_quiet_outside_the_window_or_with_other_arguments():
    far = [(assistant("", call(f"s{i}", "shell", command=f"echo {i}")), [result(f"s{i}")]) for i in range(4)]
    conv = conversation(
        *steps_of(
            (assistant("", call("a", "read_file", path="calc.py")), [result("a")]),
            *far,
            (assistant("", call("c", "read_file", path="calc.py")), [result("c")]),
            (assistant("", call("d", "read_file", path="test_calc.py")), [result("d")]),
            FINAL,
        )
    )
    assert hits([conv], "repeated_tool_call") == []


def test_identical_calls_in_one_step_repeat():
    conv = conversation(
        *steps_of(
            (
                assistant("", call("a", "shell", command="pytest"), call("b", "shell", command="pytest")),
                [result("a"), result("b")],
            ),
            FINAL,
        )
    )
    [row] = hits([conv], "repeated_tool_call")
    assert (row["step_index"], row["tool_call_id"]) == (0, "b")


def test_repeated_call_quiet_when_the_workspace_changed_in_between():
    # running the tests again after a fix is checking, not repeating
    conv = conversation(
        *steps_of(
            (assistant("", call("a", "shell", command="python3 -m unittest")), [result("a")]),
            (assistant("", call("b", "write_file", path="calc.py", content="x")), [result("b")]),
            (assistant("", call("c", "shell", command="python3 -m unittest")), [result("c")]),
            (assistant("", call("d", "shell", command="python3 -m unittest")), [result("d")]),
            FINAL,
        )
    )
    rows = hits([conv], "repeated_tool_call")
    assert [(r["step_index"], r["tool_call_id"]) for r in rows] == [(3, "d")]


# -- tool_error -------------------------------------------------------------------------------
def test_tool_error_fires_on_is_error_and_nonzero_exit():
    conv = conversation(
        *steps_of(
            (assistant("", call("a", "read_file", path="nope.py")), [result("a", "No such file", is_error=True)]),
            (assistant("", call("b", "shell", command="pytest")), [result("b", "1 failed\nexit code: 1")]),
            (assistant("", call("c", "shell", command="make")), [result("c", "<returncode>2</returncode>\nerror")]),
            # the builtin agent's marker: OpenAI chat tool results carry no error flag
            (assistant("", call("d", "edit_file", path="x.py")), [result("d", "ERROR: `old` occurs 0 times")]),
            FINAL,
        )
    )
    rows = hits([conv], "tool_error")
    assert [(r["step_index"], r["tool_call_id"]) for r in rows] == [(0, "a"), (1, "b"), (2, "c"), (3, "d")]
    assert "code 1" in rows[1]["detail"] and "code 2" in rows[2]["detail"]
    assert rows[0]["snippet"] == "No such file"
    for row in rows:
        points_at(row, [conv])


def test_tool_error_quiet_on_success():
    conv = conversation(
        *steps_of(
            (assistant("", call("a", "shell", command="pytest")), [result("a", "5 passed\nexit code: 0")]),
            (assistant("", call("b", "shell", command="true")), [result("b", "<returncode>0</returncode>")]),
            (assistant("", call("c", "read_file", path="calc.py")), [result("c", "def add(a, b): ...")]),
            FINAL,
        )
    )
    assert hits([conv], "tool_error") == []


# -- invalid_tool_arguments ---------------------------------------------------------------
def test_invalid_arguments_fire_against_the_recorded_schema():
    conv = conversation(
        *steps_of(
            (assistant("", call("a", "read_file", {"file": "calc.py"})), [result("a")]),  # wrong key
            (assistant("", call("b", "shell", {"command": ["ls"]})), [result("b")]),  # wrong type
            (assistant("", call("c", "shell", '{"command": "ls"')), [result("c")]),  # not JSON
            (assistant("", call("d", "browse", url="x")), [result("d")]),  # not offered
            FINAL,
        )
    )
    rows = hits([conv], "invalid_tool_arguments")
    assert [(r["step_index"], r["tool_call_id"]) for r in rows] == [(0, "a"), (1, "b"), (2, "c"), (3, "d")]
    assert "path" in rows[0]["detail"] and "not JSON" in rows[2]["detail"] and "not offered" in rows[3]["detail"]
    for row in rows:
        points_at(row, [conv])


def test_valid_arguments_and_unrecorded_schemas_pass():
    good = conversation(*steps_of((assistant("", call("a", "read_file", path="calc.py")), [result("a")]), FINAL))
    no_tools = conversation(*steps_of((assistant("", call("a", "anything", x=1)), [result("a")]), FINAL), tools=[])
    assert hits([good], "invalid_tool_arguments") == []
    assert hits([no_tools], "invalid_tool_arguments") == []


# -- edit_unread_file -----------------------------------------------------------------------
def test_edit_of_unread_file_fires():
    conv = conversation(
        *steps_of(
            (
                assistant(
                    "", call("a", "read_file", path="calc.py"), call("b", "edit_file", path="util.py", old="x", new="y")
                ),
                [result("a"), result("b")],
            ),
            (assistant("", call("c", "edit_file", path="calc.py", old="-", new="+")), [result("c")]),
            FINAL,
        )
    )
    [row] = hits([conv], "edit_unread_file")  # util.py: read in no earlier step; calc.py was read first
    assert (row["step_index"], row["tool_call_id"], row["snippet"]) == (0, "b", "util.py")
    points_at(row, [conv])


def test_edit_after_read_cat_or_own_write_is_fine():
    conv = conversation(
        *steps_of(
            (
                assistant(
                    "",
                    call("a", "read_file", path="/work/calc.py"),
                    call("b", "shell", command="cat lib/util.py"),
                    call("c", "write_file", path="new.py", content="x = 1"),
                ),
                [result("a"), result("b"), result("c")],
            ),
            (
                assistant(
                    "",
                    call("d", "edit_file", path="calc.py", old="-", new="+"),
                    call("e", "edit_file", path="/work/lib/util.py", old="-", new="+"),
                    call("f", "edit_file", path="new.py", old="1", new="2"),
                ),
                [result("d"), result("e"), result("f")],
            ),
            FINAL,
        )
    )
    assert hits([conv], "edit_unread_file") == []


def test_claude_code_tool_names_map_to_the_same_kinds():
    tools = [
        {"type": "function", "function": {"name": n, "description": n, "parameters": {"type": "object"}}}
        for n in ("Read", "Edit", "Bash")
    ]
    conv = conversation(
        *steps_of(
            (assistant("", call("a", "Edit", file_path="/app/x.py", old_string="a", new_string="b")), [result("a")]),
            (assistant("", call("b", "Read", file_path="/app/y.py")), [result("b")]),
            (assistant("", call("c", "Edit", file_path="/app/y.py", old_string="a", new_string="b")), [result("c")]),
            (assistant("", call("d", "Bash", command="sudo rm -rf /")), [result("d", "Exit code 1", is_error=True)]),
            FINAL,
        ),
        tools=tools,
    )
    assert [r["tool_call_id"] for r in hits([conv], "edit_unread_file")] == ["a"]
    assert [r["tool_call_id"] for r in hits([conv], "forbidden_operation")] == ["d"]


OVERWRITE_DIFF = (
    "diff --git a/calc.py b/calc.py\nindex 1..2 100644\n--- a/calc.py\n+++ b/calc.py\n"
    "diff --git a/notes.md b/notes.md\nnew file mode 100644\n"
)


def test_edit_unread_fires_on_a_blind_overwrite_of_an_existing_file():
    conv = conversation(
        *steps_of(
            (assistant("", call("a", "write_file", path="calc.py", content="x")), [result("a")]),
            (assistant("", call("b", "write_file", path="notes.md", content="y")), [result("b")]),
            FINAL,
        )
    )
    rows = hits([conv], "edit_unread_file", outcome={"diff": OVERWRITE_DIFF})
    assert [(r["step_index"], r["tool_call_id"]) for r in rows] == [(0, "a")]  # notes.md is new
    points_at(rows[0], [conv])
    # without an outcome nobody knows which files existed: writes are given the benefit of the doubt
    assert hits([conv], "edit_unread_file") == []


# -- steps_over_median ----------------------------------------------------------------------
def _long(n: int) -> dict:
    return conversation(
        *steps_of(
            *[(assistant("", call(f"s{i}", "shell", command=f"echo {i}")), [result(f"s{i}")]) for i in range(n - 1)],
            FINAL,
        )
    )


def test_steps_beyond_the_median_fire_one_row_each():
    conv = _long(4)
    rows = hits([conv], "steps_over_median", context=replace(CONTEXT, median_steps=2.0))
    assert [r["step_index"] for r in rows] == [2, 3]
    assert "step 3 of 4" in rows[0]["detail"]
    for row in rows:
        points_at(row, [conv])


def test_steps_within_the_median_or_unknown_median_are_quiet():
    assert hits([_long(4)], "steps_over_median", context=replace(CONTEXT, median_steps=4.0)) == []
    assert hits([_long(4)], "steps_over_median", context=replace(CONTEXT, median_steps=None)) == []


def test_median_over_runs_of_every_model():
    runs = [_long(n) for n in (2, 4, 9)]
    for n, conv in enumerate(runs):
        conv["meta"]["run_id"] = f"r{n}"
    assert trajectory_lengths(runs) == {"r0": 2, "r1": 4, "r2": 9}
    assert median_steps(trajectory_lengths(runs).values()) == 4.0
    assert median_steps([]) is None


# -- tests_passed ---------------------------------------------------------------------------
def test_tests_passed_reports_the_share_for_the_whole_run():
    outcome = {
        "tests_passed": 3,
        "tests_failed": 1,
        "tests_total": 4,
        "test_exit_code": 1,
        "timed_out": False,
        "agent_exit_code": 0,
        "diff": "",
    }
    [row] = hits([_long(2)], "tests_passed", outcome=outcome)
    assert (row["value"], row["step_index"], row["conversation_id"], row["snippet"]) == (0.75, None, None, "3/4")
    [row] = hits([_long(2)], "tests_passed", outcome={"tests_total": None, "test_exit_code": 0})
    assert row["value"] == 1.0


def test_tests_passed_is_quiet_without_tests():
    assert hits([_long(2)], "tests_passed", outcome=None) == []
    assert hits([_long(2)], "tests_passed", outcome={"tests_total": None, "test_exit_code": None}) == []


# -- final_answer_missing -------------------------------------------------------------------
def test_missing_final_answer_points_at_the_last_step():
    empty = conversation(
        *steps_of((assistant("", call("a", "shell", command="ls")), [result("a")]), (assistant("   "), []))
    )
    [row] = hits([empty], "final_answer_missing")
    assert (row["step_index"], row["message_index"]) == (1, 4)
    points_at(row, [empty])
    dangling = conversation(*steps_of((assistant("Let me run it", call("a", "shell", command="pytest")), [])))
    [row] = hits([dangling], "final_answer_missing")
    assert (row["step_index"], row["tool_call_id"]) == (0, "a")
    nothing = conversation()
    [row] = hits([nothing], "final_answer_missing")
    assert row["step_index"] is None and "no step" in row["detail"]


def test_final_answer_in_text_or_finish_tool_is_fine():
    assert hits([_long(2)], "final_answer_missing") == []
    finish = conversation(*steps_of((assistant("", call("a", "finish", answer="Fixed calc.add.")), [result("a")])))
    assert hits([finish], "final_answer_missing") == []


# -- forbidden_operation --------------------------------------------------------------------
def test_forbidden_command_from_config_fires():
    conv = conversation(
        *steps_of(
            (assistant("", call("a", "shell", command="cd /app && rm -rf / --no-preserve-root")), [result("a")]),
            (assistant("", call("b", "shell", command="git push origin main --force")), [result("b")]),
            FINAL,
        )
    )
    rows = hits([conv], "forbidden_operation")
    assert [(r["step_index"], r["tool_call_id"]) for r in rows] == [(0, "a"), (1, "b")]
    assert "(config)" in rows[0]["detail"]


def test_forbidden_command_named_in_the_checklist_fires():
    task = {
        **TASK,
        "checklist": {
            "SP": {
                "description": "",
                "checks": [
                    {
                        "check_id": "SP_safe_shell",
                        "check_type": "compliance",
                        "description": "检查 assistant 是否未使用 sudo、rm -rf / 等高危命令",
                    },
                    {
                        "check_id": "SP_uses_sudo_docs",
                        "check_type": "understanding",
                        "description": "Check that the assistant explains git reset --hard to the user",
                    },
                ],
            }
        },
    }
    assert forbidden_patterns(task, RuleContext()) == [
        ("rm -rf /", "checklist SP_safe_shell"),
        ("sudo", "checklist SP_safe_shell"),
    ]
    conv = conversation(
        *steps_of(
            (assistant("", call("a", "shell", command="sudo apt-get install jq")), [result("a")]),
            (assistant("", call("b", "shell", command="git reset --hard")), [result("b")]),
            FINAL,
        )
    )
    [row] = hits([conv], "forbidden_operation", task=task, context=RuleContext())
    assert row["tool_call_id"] == "a" and "SP_safe_shell" in row["detail"]


def test_harmless_commands_are_not_forbidden():
    conv = conversation(
        *steps_of(
            (assistant("", call("a", "shell", command="rm -rf /tmp/build")), [result("a")]),
            (assistant("", call("b", "shell", command='grep -rn "git push --force" docs')), [result("b")]),
            (assistant("", call("c", "read_file", path="rm -rf /")), [result("c")]),
            FINAL,
        )
    )
    assert hits([conv], "forbidden_operation") == []


@pytest.mark.parametrize(
    "command, pattern, expected",
    [
        ("FOO=1 sudo rm -rf /", "rm -rf /", True),
        ('bash -lc "git reset --hard HEAD~1"', "git reset --hard", True),
        ('echo "sudo"', "sudo", False),
        ("ls\nsudo make install", "sudo", True),
        ("rm -rf ./", "rm -rf /", False),
    ],
)
def test_command_matching(command, pattern, expected):
    assert command_matches(command, pattern) is expected


# -- runs, conversations and tables -----------------------------------------------------------
def test_side_conversations_are_not_scored_and_edit_branches_only_after_the_branch():
    main = _long(2)
    warmup = conversation(
        *steps_of((assistant("", call("w", "shell", command="rm -rf /")), [result("w")])),
        kind="warmup",
        conversation_id="c-warm",
    )
    shared = main["messages"][:4]  # system, user, step 0 and its result
    edit = conversation(kind="edit", conversation_id="c-edit", branch_index=4, started_at=1.0)
    edit["messages"] = shared + steps_of(
        (assistant("", call("x", "shell", command="rm -rf /")), [result("x")]), (assistant("done"), [])
    )
    rows = score_rules([main, warmup, edit], TASK, None, CONTEXT)
    assert {r["conversation_id"] for r in rows} == {"c-edit"}
    [row] = [r for r in rows if r["rule_id"] == "forbidden_operation"]
    assert (row["step_index"], row["message_index"]) == (1, 4)  # indexed within its own conversation
    points_at(row, [edit])
    assert len(build_run([main, warmup, edit]).main_steps) == 2  # the edit branch is not the trajectory


def test_summary_has_every_rule_and_tables_fit_the_store(store):
    conv = _long(3)
    other = _long(1)
    other["meta"].update(run_id="run-2", attempt=1)
    outcomes = {"run-1": {"tests_passed": 1, "tests_total": 2}, "run-2": None}
    steps, summary = rule_tables([conv, other], outcomes, TASK, replace(CONTEXT, median_steps=2.0))
    assert summary.num_rows == 2 * len(RULES)
    by_rule = {(r["run_id"], r["rule_id"]): r for r in summary.to_pylist()}
    assert by_rule[("run-1", "steps_over_median")]["hits"] == 1
    assert by_rule[("run-1", "tests_passed")]["value"] == 0.5
    assert by_rule[("run-2", "tests_passed")]["hits"] == 0
    assert by_rule[("run-2", "repeated_tool_call")]["n_steps"] == 1
    partition = {"model": "m", "instance": "i"}
    store.write(RULE_STEPS, steps, partition)
    store.write(RULE_SUMMARY, summary, partition)
    assert store.read(RULE_STEPS, partition).num_rows == steps.num_rows
    assert "model" not in RULE_STEPS.schema.names and "instance" not in RULE_SUMMARY.schema.names


def test_a_new_rule_version_rescores_stored_conversations():
    conv = _long(3)
    old = RULES["steps_over_median"]
    stricter = replace(
        old,
        version="2",
        fn=lambda run, task, outcome, context: old.fn(run, task, outcome, replace(context, median_steps=1.0)),
    )
    rules = [r if r.id != old.id else stricter for r in RULES.values()]
    rows = score_rules([conv], TASK, None, replace(CONTEXT, median_steps=2.0), rules)
    assert [(r["rule_version"], r["step_index"]) for r in rows if r["rule_id"] == old.id] == [("2", 1), ("2", 2)]
    assert summarize_rules(rows, [conv], rules)[0]["ruleset_version"] == ruleset_version(rules) != ruleset_version()


# -- extension: one entry each --------------------------------------------------------------
def test_a_new_scaffolds_tool_kinds_and_error_marker_reach_the_rules(monkeypatch):
    conv = conversation(
        *steps_of(
            (assistant("", call("a", "Shout", command="rm -rf /")), [result("a", "ECHO FAILED: too loud")]), FINAL
        ),
        tools=[],
    )
    assert hits([conv], "forbidden_operation") == hits([conv], "tool_error") == []  # an unknown tool
    monkeypatch.setitem(
        SCAFFOLDS, "echo", ScaffoldEntry("echo", "echo:Echo", None, {"Shout": "shell"}, error_prefix="ECHO FAILED: ")
    )
    assert [r["tool_call_id"] for r in hits([conv], "forbidden_operation")] == ["a"]
    assert [r["detail"] for r in hits([conv], "tool_error")] == ["Shout returned an error"]
    assert ruleset_version() != RULESET_VERSION  # what a call is decides the rules' output


def test_a_new_rule_is_one_registered_function(monkeypatch):
    monkeypatch.setattr(rules, "RULES", dict(RULES))

    @rule("apology", "An assistant message that apologises.")
    def apology(run, task, outcome, context):
        return [Hit(s, -1.0, "apologises") for s in run.steps if "sorry" in s.message["content"].lower()]

    conv = conversation(*steps_of((assistant("Sorry, again", call("a", "shell", command="ls")), [result("a")]), FINAL))
    steps, summary = rule_tables([conv], {}, TASK, CONTEXT)
    [row] = [r for r in steps.to_pylist() if r["rule_id"] == "apology"]
    assert (row["step_index"], row["value"], row["rule_version"]) == (0, -1.0, rules.RULES["apology"].version)
    by_rule = {r["rule_id"]: r for r in summary.to_pylist()}
    assert by_rule["apology"]["hits"] == 1 and len(by_rule) == len(RULES) + 1
    assert by_rule["apology"]["ruleset_version"] == ruleset_version() != RULESET_VERSION
    with pytest.raises(ValueError, match="registered twice"):
        rule("apology", "again")(apology)


def test_rule_versions_follow_the_code():
    assert RULESET_VERSION == ruleset_version()
    assert len({r.version for r in RULES.values()}) == len(RULES)  # each a hash of its own function
    reworded = [
        replace(r, description=r.description + " (reworded)") if r.id == "tool_error" else r for r in RULES.values()
    ]
    assert ruleset_version(reworded) != RULESET_VERSION


def test_truncate_keeps_head_and_tail_with_a_marker():
    text = "HEAD" + "x" * 1000 + "TAIL"
    short = truncate(text, 100)
    assert short.startswith("HEAD") and short.endswith("TAIL") and "characters truncated" in short
    assert truncate("short", 100) == "short"


def test_real_claude_code_run_from_mini_vela():
    from trajhub_assets.interchange.minivela import read_minivela
    from trajhub_assets.merge.merge import merge_calls

    conversations = merge_calls(read_minivela(SHARED / "minivela_sample" / "raw_benchmark-md-emoji-test-001.jsonl"))
    task = octocoding_task("benchmark-md-emoji-test-001")
    rows = score_rules(conversations, task, None, replace(CONTEXT, median_steps=1.0))
    assert [(r["rule_id"], r["step_index"]) for r in rows] == [("steps_over_median", 1)]  # a clean 2-step run
    points_at(rows[0], conversations)


# -- property: evidence always names the step that holds the call ------------------------------
_call_strategy = st.tuples(
    st.sampled_from(["read_file", "edit_file", "shell"]),
    st.sampled_from(["a.py", "b.py", "rm -rf /", "ls"]),
    st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(_call_strategy, min_size=0, max_size=3), min_size=0, max_size=8))
def test_evidence_rows_point_at_their_step(plan):
    messages, n = [], 0
    for calls in plan:
        made = []
        for name, value, _failed in calls:
            arg = {
                "read_file": {"path": value},
                "edit_file": {"path": value, "old": "a", "new": "b"},
                "shell": {"command": value},
            }[name]
            made.append(call(f"t{n}", name, arg))
            n += 1
        messages.append(assistant("thinking aloud" if not made else "", *made))
        messages += [result(c["id"], "boom", is_error=failed) for c, (_, _, failed) in zip(made, calls, strict=True)]
        messages.append({"role": "user", "content": "<system-reminder>keep going</system-reminder>"})
    conv = conversation(*messages)
    rows = score_rules([conv], TASK, None, replace(CONTEXT, median_steps=2.0))
    for row in rows:
        if row["conversation_id"] is not None:
            points_at(row, [conv])
    errors = sum(failed for calls in plan for _, _, failed in calls)
    assert sum(r["rule_id"] == "tool_error" for r in rows) == errors


# -- the instance's lengths, as rule_rewards reads them ---------------------------------------
def _stored(store, model: str, *conversations: dict) -> list[dict]:
    """Write one model's partition of instance "i"; the conversations as the merge leaves them."""
    from trajhub_assets.merge.schema import MERGED_TRAJECTORIES, MESSAGE, META_FIELDS, conversations_to_table

    full = []
    for c in conversations:
        messages = [{f.name: None for f in MESSAGE} | m for m in c["messages"]]
        meta = {name: None for name in META_FIELDS} | c["meta"] | {"model": model}
        meta["n_generations"] = sum(bool(m["generation"]) for m in messages)
        full.append(c | {"meta": meta, "messages": messages})
    store.write(MERGED_TRAJECTORIES, conversations_to_table(full), {"model": model, "instance": "i"})
    return full


def _run_of(run_id: str, steps: int, *extra_kinds: str) -> list[dict]:
    """A run's main conversation of `steps` steps and one more conversation of each extra kind."""
    main = _long(steps)
    main["meta"] |= {"run_id": run_id, "conversation_id": f"{run_id}-main"}
    more = []
    for n, kind in enumerate(extra_kinds):
        other = _long(3)
        other["meta"] |= {"run_id": run_id, "conversation_id": f"{run_id}-{kind}", "kind": kind, "started_at": n + 1.0}
        more.append(other)
    return [main, *more]


def test_instance_lengths_are_the_rules_lengths_of_every_model_read_once(store, monkeypatch):
    from trajhub_assets.rewards import assets

    assert assets.instance_median_steps(store, "i") is None  # nothing merged yet
    written = _stored(store, "m-a", *_run_of("a0", 2, "title"), *_run_of("a1", 5, "continuation"))
    written += _stored(store, "m-b", *_run_of("b0", 7, "subagent", "warmup"))
    written += _stored(store, "m-c", *_run_of("c0", 4, "compaction"))
    expected = trajectory_lengths(written)
    assert expected == {"a0": 2, "a1": 8, "b0": 7, "c0": 7}  # continuation and compaction count, side kinds do not
    assert assets.instance_lengths(store, "i") == expected
    assert assets.instance_median_steps(store, "i") == median_steps(expected.values())

    # Another model's batch: nothing changed, so no file is read again.
    reads = []
    real = assets.pq
    monkeypatch.setattr(
        assets, "pq", SimpleNamespace(ParquetFile=lambda *a, **kw: reads.append(1) or real.ParquetFile(*a, **kw))
    )
    assert assets.instance_lengths(store, "i") == expected and reads == []
    # A partition re-merged with other runs: read again, the others still not.
    written = [c for c in written if c["meta"]["model"] != "m-b"] + _stored(store, "m-b", *_run_of("b1", 3))
    assert assets.instance_lengths(store, "i") == trajectory_lengths(written)
    assert len(reads) == 1
    assert assets.instance_lengths(store, "never-run") == {}


def test_the_outcome_columns_read_are_the_fields_the_rewards_use():
    """run_outcomes reads only OUTCOME_COLUMNS of `runs`: a rule, the judge's prompt or the
    trajectory reward that read another field of the outcome would see nothing."""
    import inspect
    import re

    from trajhub_assets.recording.schema import RUNS
    from trajhub_assets.rewards import assets, judge, trajectory

    used = set()
    for module in (rules, judge, trajectory):
        used |= set(re.findall(r"""outcome(?: or \{\}\))?(?:\.get\(|\[)["'](\w+)["']""", inspect.getsource(module)))
    assert used == set(assets.OUTCOME_COLUMNS) - {"run_id"}
    assert set(assets.OUTCOME_COLUMNS) <= set(RUNS.schema.names)
