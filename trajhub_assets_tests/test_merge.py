"""merge_calls: conversations from per-call records, their kinds and edge cases, and the table schema."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pytest

from trajhub_assets.errors import RecordError, StoreError
from trajhub_assets.merge import merge
from trajhub_assets.merge.merge import merge_calls
from trajhub_assets.merge.schema import CONVERSATION_SCHEMA, conversations_to_table, table_to_conversations

TOOLS = [
    {
        "name": "Bash",
        "description": "Run a command.",
        "input_schema": {"type": "object", "properties": {"cmd": {"type": "string"}}},
    },
    {
        "name": "Task",
        "description": "Start a subagent.",
        "input_schema": {"type": "object", "properties": {"prompt": {"type": "string"}}},
    },
]
SYSTEM = "You are a coding agent."


def call(call_id, seq, messages, response=None, *, system=SYSTEM, tools=TOOLS, **fields):
    request = {"model": "m", "tools": tools, "messages": messages, "max_tokens": 100}
    if system:
        request["system"] = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
    return {
        "run_id": "run-1",
        "call_id": call_id,
        "seq": seq,
        "started_at": 100.0 + seq,
        "ended_at": 100.5 + seq,
        "wire_format": "anthropic_messages",
        "call_kind": "agent",
        "request": request,
        "response": None if response is None else {"content": response},
        "status": "ok" if response is not None else "error",
        "error": None if response is not None else {"status_code": 529, "message": "overloaded"},
        **fields,
    }


def user(text):
    return {"role": "user", "content": text}


def text(t):
    return {"type": "text", "text": t}


def thinking(t):
    return {"type": "thinking", "thinking": t, "signature": "c2ln"}


def tool_use(id, name, input):
    return {"type": "tool_use", "id": id, "name": name, "input": input}


def tool_result(id, content, is_error=False):
    return {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": id, "content": content, "is_error": is_error}],
    }


FIRST = [thinking("Look around first."), text("Let me look."), tool_use("t1", "Bash", {"cmd": "ls"})]
# The client sends the first response back without its thinking, as Claude Code does.
HISTORY = [user("Fix the bug."), {"role": "assistant", "content": FIRST[1:]}, tool_result("t1", "a.py")]


def session():
    return [call("c1", 0, [user("Fix the bug.")], FIRST), call("c2", 1, HISTORY, [text("Fixed it.")])]


def merged(records, **kw):
    return merge_calls(records, model="m", instance="i", attempt=0, **kw)


def roles(conversation):
    return [m["role"] for m in conversation["messages"]]


# -- one conversation -----------------------------------------------------------------------
def test_empty_run():
    assert merged([]) == []
    assert merged([{**call("c0", 0, [user("hi")]), "call_kind": "count_tokens"}]) == []


def test_one_call():
    [conversation] = merged([call("c1", 0, [user("hi")], [text("hello")])])
    assert roles(conversation) == ["system", "user", "assistant"]
    assert conversation["messages"][2] == {
        "role": "assistant",
        "content": "hello",
        "reasoning_content": None,
        "tool_calls": None,
        "tool_call_id": None,
        "name": None,
        "is_error": None,
        "generation": True,
        "generated_by": "c1",
        "content_parts": None,
        "thinking_blocks": None,
        "extra": None,
    }
    meta = conversation["meta"]
    assert (meta["kind"], meta["call_ids"], meta["n_generations"], meta["parent_conversation_id"]) == (
        "main",
        ["c1"],
        1,
        None,
    )
    assert (meta["run_id"], meta["model"], meta["instance"], meta["attempt"]) == ("run-1", "m", "i", 0)
    assert conversation["tools"][0] == {
        "type": "function",
        "function": {"name": "Bash", "description": "Run a command.", "parameters": TOOLS[0]["input_schema"]},
    }


def test_prefix_calls_are_absorbed_and_dropped_thinking_restored():
    [conversation] = merged(session())
    assert roles(conversation) == ["system", "user", "assistant", "tool", "assistant"]
    first, result, last = conversation["messages"][2:]
    assert first["reasoning_content"] == "Look around first."
    assert (first["content"], first["generation"], first["generated_by"]) == ("Let me look.", True, "c1")
    assert first["tool_calls"] == [
        {"id": "t1", "type": "function", "function": {"name": "Bash", "arguments": '{"cmd": "ls"}'}}
    ]
    assert (result["tool_call_id"], result["name"], result["content"]) == ("t1", "Bash", "a.py")
    assert result["is_error"] is False
    assert (last["content"], last["generated_by"]) == ("Fixed it.", "c2")
    assert conversation["meta"]["call_ids"] == ["c1", "c2"]


def test_echo_that_no_recorded_call_produced_is_not_a_generation():
    [conversation] = merged([session()[1]])  # c1 was not recorded
    assistant = conversation["messages"][2]
    assert assistant["generation"] is False
    assert assistant["generated_by"] is None and assistant["reasoning_content"] is None


def test_a_call_logged_twice_counts_once():
    records = session()
    later_copy = {**copy.deepcopy(records[1]), "seq": 7, "started_at": 300.0}
    twice = records + [copy.deepcopy(records[0]), later_copy]
    assert merged(twice) == merged(records)


def test_records_in_any_order():
    assert merged(session()[::-1]) == merged(session())


def test_content_blocks_in_order_and_markers_for_non_text():
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    response = [
        thinking("one"),
        text("A"),
        tool_use("t1", "Bash", {"cmd": "ls"}),
        thinking("two"),
        text("B"),
        tool_use("t2", "Bash", {"cmd": "pwd"}),
    ]
    [conversation] = merged([call("c1", 0, [{"role": "user", "content": [text("see "), image]}], response)])
    user_message, assistant = conversation["messages"][1:]
    assert user_message["content"] == "see [image]"
    assert (assistant["content"], assistant["reasoning_content"]) == ("AB", "one\n\ntwo")
    assert [c["id"] for c in assistant["tool_calls"]] == ["t1", "t2"]
    # Interleaved blocks keep their order in content_parts; the k-th thinking part is thinking_blocks[k].
    assert [(p["type"], p["text"], p["ref"]) for p in assistant["content_parts"]] == [
        ("thinking", None, None),
        ("text", "A", None),
        ("tool_use", None, "t1"),
        ("thinking", None, None),
        ("text", "B", None),
        ("tool_use", None, "t2"),
    ]
    assert [(b["thinking"], b["signature"]) for b in assistant["thinking_blocks"]] == [("one", "c2ln"), ("two", "c2ln")]
    # The image is a reference: the hash of its base64 text, never the payload itself.
    assert user_message["content_parts"] == [
        {"type": "text", "text": "see ", "media_type": None, "ref": None},
        {
            "type": "image",
            "text": None,
            "media_type": "image/png",
            "ref": "sha256:" + hashlib.sha256(b"AAAA").hexdigest(),
        },
    ]
    assert "AAAA" not in json.dumps(conversation)


def test_flat_blocks_leave_content_parts_empty():
    [conversation] = merged(session())
    assert all(m["content_parts"] is None for m in conversation["messages"][1:])  # thinking, text, tool_use
    unsigned = {"type": "thinking", "thinking": "Hm."}  # as mini-vela logs it: reasoning_content says it all
    [conversation] = merged([call("c1", 0, [user("hi")], [unsigned, text("hello")])])
    assert (conversation["messages"][-1]["reasoning_content"], conversation["messages"][-1]["thinking_blocks"]) == (
        "Hm.",
        None,
    )


def test_same_caption_different_image_is_a_different_message():
    def image(data):
        return {
            "role": "user",
            "content": [
                text("what is this?"),
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
            ],
        }

    first, second = merged(
        [call("c1", 0, [image("AAAA")], [text("a cat")]), call("c2", 1, [image("BBBB")], [text("a dog")])]
    )
    assert first["messages"][1]["content_parts"][1]["ref"] != second["messages"][1]["content_parts"][1]["ref"]
    assert second["meta"]["kind"] != "edit"


def test_fields_without_a_column_are_kept_in_extra():
    block = {
        "type": "text",
        "text": "See the docs.",
        "citations": [{"cited_text": "x"}],
        "cache_control": {"type": "ephemeral"},
    }
    server_tool = {"type": "server_tool_use", "id": "s1", "name": "web_search", "input": {"query": "q"}}
    [conversation] = merged([call("c1", 0, [{"role": "user", "content": [block]}], [server_tool, text("Found.")])])
    user_message, assistant = conversation["messages"][1:]
    assert json.loads(user_message["extra"]) == {"content[0].citations": [{"cited_text": "x"}]}  # cache hints dropped
    assert json.loads(assistant["extra"]) == {"content[0]": server_tool}  # a block we cannot read, whole
    assert assistant["content"] == "[server_tool_use]Found."


# -- Claude Code 2.1.330 --------------------------------------------------------------------
ENVIRONMENT = "# Environment\nWorking directory: /workspace\nPlatform: linux\nToday's date: 2026-11-30"


def claude_code_call(call_id, seq, messages, response):
    """The request shape of Claude Code 2.1.330: adaptive thinking, effort, and its environment
    block as a `system` message at messages[1] of every request."""
    record = call(call_id, seq, [messages[0], {"role": "system", "content": ENVIRONMENT}, *messages[1:]], response)
    record["request"] |= {"thinking": {"type": "adaptive"}, "output_config": {"effort": "high"}}
    return record


def test_claude_code_system_message_in_messages_stays_in_place():
    redacted = {"type": "redacted_thinking", "data": "RVhBTVBMRQ=="}
    signed = {"type": "thinking", "thinking": "Check the tests.", "signature": "c2lnLTE="}
    first = [signed, redacted, text("Running the tests."), tool_use("t1", "Bash", {"cmd": "pytest"})]
    # Later requests send the response back without its thinking, as Claude Code does.
    history = [user("Fix the bug."), {"role": "assistant", "content": first[2:]}, tool_result("t1", "1 failed")]
    [conversation] = merged(
        [claude_code_call("c1", 0, [user("Fix the bug.")], first), claude_code_call("c2", 1, history, [text("Fixed.")])]
    )
    assert roles(conversation) == ["system", "user", "system", "assistant", "tool", "assistant"]
    assert conversation["messages"][2]["content"] == ENVIRONMENT
    assistant = conversation["messages"][3]
    assert assistant["thinking_blocks"] == [
        {"type": "thinking", "thinking": "Check the tests.", "signature": "c2lnLTE=", "data": None},
        {"type": "redacted_thinking", "thinking": None, "signature": None, "data": "RVhBTVBMRQ=="},
    ]
    assert assistant["reasoning_content"] == "Check the tests.\n\n[redacted_thinking]"
    assert (assistant["generated_by"], assistant["content_parts"]) == ("c1", None)
    assert conversation["meta"]["call_ids"] == ["c1", "c2"] and conversation["meta"]["kind"] == "main"
    table = conversations_to_table([conversation])
    assert table_to_conversations(table, model="m", instance="i") == [conversation]


# -- failures and edits -------------------------------------------------------------------
def test_a_tool_call_echoed_with_an_argument_at_its_schema_default_is_the_generated_one():
    """Claude Code 2.1.330 sends its Edit calls back with `"replace_all": false` (the schema's
    default) added: still the model's own message, not an edit of the history."""
    edit_tool = {
        "name": "Edit",
        "description": "Edit a file.",
        "input_schema": {
            "type": "object",
            "properties": {
                "file_path": {"type": "string"},
                "old_string": {"type": "string"},
                "new_string": {"type": "string"},
                "replace_all": {"type": "boolean", "default": False},
            },
        },
    }
    generated = tool_use("e1", "Edit", {"file_path": "a.py", "old_string": "x", "new_string": "y"})
    echoed = tool_use("e1", "Edit", {"file_path": "a.py", "old_string": "x", "new_string": "y", "replace_all": False})
    history = [user("Fix it."), {"role": "assistant", "content": [echoed]}, tool_result("e1", "edited")]
    records = [
        call("c1", 0, [user("Fix it.")], [generated], tools=[edit_tool]),
        call("c2", 1, history, [text("Done.")], tools=[edit_tool]),
    ]
    [conversation] = merged(records)
    edit = conversation["messages"][2]
    assert (edit["generation"], edit["generated_by"]) == (True, "c1")
    assert json.loads(edit["tool_calls"][0]["function"]["arguments"]) == generated["input"]  # as generated
    assert conversation["meta"]["call_ids"] == ["c1", "c2"]
    # A value other than the default is a real change of the history: an edit.
    changed = copy.deepcopy(records)
    changed[1]["request"]["messages"][1]["content"][0]["input"]["replace_all"] = True
    assert sorted(c["meta"]["kind"] for c in merged(changed)) == ["edit", "main"]


def test_failed_call_that_was_retried_is_absorbed():
    records = session()
    failed = {**call("c2-failed", 1, HISTORY), "seq": 1}
    records[1]["seq"] = 2
    [conversation] = merged(records + [failed])
    assert conversation["meta"]["failed_call_ids"] == ["c2-failed"]
    assert conversation["meta"]["call_ids"] == ["c1", "c2-failed", "c2"]
    assert conversation["meta"]["error"] is None


def test_failed_last_call_ends_the_conversation_without_a_reply():
    records = session()[:1] + [call("c2", 1, HISTORY)]
    [conversation] = merged(records)
    assert roles(conversation) == ["system", "user", "assistant", "tool"]
    assert conversation["meta"]["failed_call_ids"] == ["c2"]
    assert json.loads(conversation["meta"]["error"]) == {"status_code": 529, "message": "overloaded"}


def test_history_edit_the_client_went_on_with_is_main():
    edited = [
        user("Fix the bug."),
        {"role": "assistant", "content": [text("Let me look, differently.")]},
        user("Go on."),
    ]
    left, rewritten = merged(session() + [call("c3", 2, edited, [text("OK.")])])
    assert (rewritten["meta"]["kind"], rewritten["meta"]["call_ids"]) == ("main", ["c3"])
    assert rewritten["messages"][2]["generation"] is False  # the rewritten message, never generated
    assert rewritten["messages"][-1]["generated_by"] == "c3"
    assert (
        left["meta"]["kind"],
        left["meta"]["parent_conversation_id"],
        left["meta"]["parent_link"],
        left["meta"]["branch_index"],
    ) == ("edit", rewritten["meta"]["conversation_id"], "shared_prefix", 2)
    assert left["meta"]["call_ids"] == ["c1", "c2"]


def test_a_branch_the_client_left_is_an_edit():
    resampled = call("c1b", 1, [user("Fix the bug.")], [text("Another first reply.")])
    records = session()
    records[1]["seq"] = 2
    main, edit = merged(records + [resampled])
    assert (main["meta"]["kind"], main["meta"]["call_ids"]) == ("main", ["c1", "c2"])
    assert (edit["meta"]["kind"], edit["meta"]["parent_conversation_id"], edit["meta"]["branch_index"]) == (
        "edit",
        main["meta"]["conversation_id"],
        2,
    )


MINI_SWE_AGENT_RUN = Path(__file__).parent / "data" / "mini_swe_agent" / "text_only_replies.jsonl"


def test_mini_swe_agent_dropped_replies_are_edits_of_the_whole_trajectory():
    """A real mini-swe-agent 2.4.6 recording: the client drops every text-only reply from its
    history and sends a format error instead, so each such reply is a branch of its own."""
    records = [json.loads(line) for line in MINI_SWE_AGENT_RUN.read_text().splitlines()]
    dropped = [r for r in records if not r["response"]["choices"][0]["message"].get("tool_calls")]
    last = max(records, key=lambda r: r["seq"])
    conversations = merge_calls(records)
    assert len(conversations) == 1 + len(dropped) == 5
    [main] = [c for c in conversations if c["meta"]["kind"] == "main"]
    assert main["meta"]["call_ids"][-1] == last["call_id"]
    assert len(main["messages"]) == len(last["request"]["messages"]) + 1  # all the client kept, and the reply
    edits = [c for c in conversations if c is not main]
    for edit, record in zip(edits, dropped, strict=True):
        meta = edit["meta"]
        assert (meta["kind"], meta["parent_conversation_id"], meta["parent_link"], meta["branch_index"]) == (
            "edit",
            main["meta"]["conversation_id"],
            "shared_prefix",
            len(record["request"]["messages"]),
        )
        reply = edit["messages"][-1]
        assert (reply["generated_by"], reply["content"]) == (
            record["call_id"],
            record["response"]["choices"][0]["message"]["content"],
        )
    # LiteLLM's provider fields on each reply are kept, as the client sent them back.
    assert json.loads(main["messages"][-1]["extra"]) == {"provider_specific_fields": {"refusal": None}}
    table = conversations_to_table(conversations)
    meta = main["meta"]
    assert table_to_conversations(table, model=meta["model"], instance=meta["instance"]) == conversations


# -- several conversations in a run ---------------------------------------------------------
PROMPT = "Find every TODO comment under src/ and list file and line."


def test_kinds_of_a_claude_code_like_run():
    warmup = call("w1", 0, [user("Warmup")], [text("Ready.")], system="You are a search subagent.", tools=[])
    title = {**call("t1", 1, [user("Fix the bug.")], [text("Bug fix")], system="Write a title."), "call_kind": "title"}
    spawn = [user("Fix the bug.")]
    main = [call("c1", 2, spawn, [text("Searching."), tool_use("task1", "Task", {"prompt": PROMPT})])]
    sub = call(
        "s1",
        3,
        [user("<system-reminder>Be brief.</system-reminder>\n" + PROMPT)],
        [text("src/a.py:3")],
        system="You are a search subagent.",
        tools=TOOLS[:1],
    )
    loose = call(
        "s2",
        4,
        [user("Something else entirely, not from a tool call.")],
        [text("ok")],
        system="You are a search subagent.",
        tools=TOOLS[:1],
    )
    back = spawn + [
        {"role": "assistant", "content": main[0]["response"]["content"]},
        tool_result("task1", "src/a.py:3"),
    ]
    summary = "The bug is in src/a.py line 3: the loop stops one element early."
    main.append(call("c2", 5, back, [text(f"Summary of the work so far:\n{summary}")]))
    compacted = call(
        "c3", 6, [user(f"This session continues an earlier one. Summary:\n{summary}\nGo on.")], [text("Continuing.")]
    )
    later = call("c4", 7, [user("Now also add a test.")], [text("Added.")])
    conversations = merged([warmup, title, *main, sub, loose, compacted, later])
    kinds = [(c["meta"]["kind"], c["meta"]["parent_link"]) for c in conversations]
    assert kinds == [
        ("warmup", None),
        ("title", None),
        ("main", None),
        ("subagent", "tool_call"),
        ("subagent", "time"),
        ("compaction", "previous"),
        ("continuation", "previous"),
    ]
    ids = [c["meta"]["conversation_id"] for c in conversations]
    assert ids == [f"run-1-c{i}" for i in range(7)]
    parents = [c["meta"]["parent_conversation_id"] for c in conversations]
    assert parents == [None, None, None, ids[2], ids[2], ids[2], ids[5]]


# -- other wire formats ---------------------------------------------------------------------
def chat_call(call_id, seq, messages, message, tools=()):
    return {
        "run_id": "r",
        "call_id": call_id,
        "seq": seq,
        "wire_format": "openai_chat",
        "request": {"messages": messages, "tools": list(tools)},
        "response": {"choices": [{"index": 0, "message": message}]},
        "status": "ok",
    }


def bash(arguments):
    return [{"id": "x1", "type": "function", "function": {"name": "Bash", "arguments": arguments}}]


def test_openai_chat():
    tools = [{"type": "function", "function": {"name": "Bash", "parameters": {"type": "object"}}}]
    first = {
        "role": "assistant",
        "content": None,
        "reasoning_content": "think",
        "tool_calls": bash('{"cmd": "ls", "n": 1}'),
    }
    # The client drops reasoning_content and re-serialises the arguments (spacing, key order).
    echo = {"role": "assistant", "content": "", "tool_calls": bash('{"n":1,"cmd":"ls"}')}
    history = [{"role": "system", "content": "sys"}, {"role": "user", "content": [{"type": "text", "text": "go"}]}]
    result = {"role": "tool", "tool_call_id": "x1", "content": "a.py"}
    [conversation] = merged(
        [
            chat_call("a", 0, history, first, tools),
            chat_call("b", 1, history + [echo, result], {"content": "done"}, tools),
        ]
    )
    assert roles(conversation) == ["system", "user", "assistant", "tool", "assistant"]
    assistant, tool = conversation["messages"][2:4]
    # The response's null content is kept; the client's "" echo of it still matches.
    assert (assistant["content"], assistant["reasoning_content"], assistant["generated_by"]) == (None, "think", "a")
    assert assistant["tool_calls"][0]["function"]["arguments"] == '{"cmd": "ls", "n": 1}'  # as generated
    assert (tool["name"], tool["is_error"]) == ("Bash", None)
    assert conversation["tools"] == [
        {"type": "function", "function": {"name": "Bash", "description": "", "parameters": {"type": "object"}}}
    ]


def test_openai_chat_null_content_and_provider_fields_are_kept():
    # As LiteLLM returns it (kilo, droid, mini-swe-agent): null content, provider fields, null leftovers.
    reply = {
        "role": "assistant",
        "content": None,
        "tool_calls": bash('{"cmd": "ls"}'),
        "function_call": None,
        "provider_specific_fields": {"refusal": None, "citations": ["c"]},
        "annotations": [],
    }
    history = [{"role": "developer", "content": "sys"}, {"role": "user", "content": "go"}]
    [conversation] = merged([chat_call("a", 0, history, reply)])
    system, _, assistant = conversation["messages"]
    assert (system["role"], json.loads(system["extra"])) == ("system", {"role": "developer"})
    legacy = {"role": "function", "name": "Bash", "content": "a.py"}
    [conversation] = merged([chat_call("b", 0, history + [legacy], {"content": "ok"})])
    assert (conversation["messages"][2]["role"], json.loads(conversation["messages"][2]["extra"])) == (
        "tool",
        {"role": "function"},
    )
    assert assistant["content"] is None
    assert json.loads(assistant["extra"]) == {"provider_specific_fields": {"refusal": None, "citations": ["c"]}}


def test_openai_chat_thinking_blocks_and_image_url():
    blocks = [{"type": "thinking", "thinking": "hm", "signature": "c2ln"}]
    reply = {"role": "assistant", "content": "a cat", "reasoning_content": "hm", "thinking_blocks": blocks}
    picture = {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD", "detail": "low"}}
    [conversation] = merged([chat_call("a", 0, [{"role": "user", "content": [picture]}], reply)])
    user_message, assistant = conversation["messages"]
    assert user_message["content_parts"] == [
        {
            "type": "image_url",
            "text": None,
            "media_type": "image/jpeg",
            "ref": "sha256:" + hashlib.sha256(b"QUJD").hexdigest(),
        }
    ]
    assert json.loads(user_message["extra"]) == {"content[0].detail": "low"}
    assert assistant["thinking_blocks"] == [{**blocks[0], "data": None}]


def responses_call(call_id, seq, input, output, **request):
    return {
        "run_id": "r",
        "call_id": call_id,
        "seq": seq,
        "wire_format": "openai_responses",
        "request": {"instructions": "sys", "input": input, **request},
        "response": {"id": f"resp_{call_id}", "output": output},
        "status": "ok",
    }


def test_openai_responses_with_and_without_previous_response_id():
    out1 = [
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "plan"}]},
        {"type": "function_call", "call_id": "f1", "name": "Bash", "arguments": "{}"},
    ]
    result = {"type": "function_call_output", "call_id": "f1", "output": "a.py"}
    out2 = [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "done"}]}]
    stateless = merged(
        [
            responses_call("a", 0, "go", out1),
            responses_call("b", 1, [{"role": "user", "content": "go"}, out1[1], result], out2),
        ]
    )
    stateful = merged(
        [responses_call("a", 0, "go", out1), responses_call("b", 1, [result], out2, previous_response_id="resp_a")]
    )
    for [conversation] in (stateless, stateful):
        assert roles(conversation) == ["system", "user", "assistant", "tool", "assistant"]
        assistant, tool = conversation["messages"][2:4]
        assert (assistant["reasoning_content"], assistant["generated_by"]) == ("plan", "a")
        assert (tool["name"], tool["content"]) == ("Bash", "a.py")
    assert stateless[0]["messages"] == stateful[0]["messages"]
    encrypted = [{"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "ZW5j"}, *out2]
    [conversation] = merged([responses_call("c", 0, "go", encrypted)])
    assert json.loads(conversation["messages"][-1]["extra"]) == {
        "items[0].id": "rs_1",
        "items[0].encrypted_content": "ZW5j",
    }
    with pytest.raises(RecordError, match=r"record 'b', field 'request.previous_response_id'"):
        merged([responses_call("b", 1, [result], out2, previous_response_id="resp_missing")])


def test_several_choices_are_several_conversations():
    choices = [{"index": i, "message": {"role": "assistant", "content": c}} for i, c in enumerate(["x", "y"])]
    record = {
        "run_id": "r",
        "call_id": "a",
        "seq": 0,
        "wire_format": "openai_chat",
        "request": {"messages": [{"role": "user", "content": "go"}]},
        "response": {"choices": choices},
    }
    first, second = merged([record])
    assert [first["messages"][-1]["content"], second["messages"][-1]["content"]] == ["x", "y"]
    assert (second["meta"]["kind"], second["meta"]["branch_index"]) == ("edit", 1)


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, where",
    [
        (lambda r: r.pop("call_id"), "field 'call_id'"),
        (lambda r: r.update(wire_format="gemini"), "record 'c1', field 'wire_format'"),
        (lambda r: r["request"].update(messages="hi"), "record 'c1', field 'request.messages'"),
        (
            lambda r: r["request"]["messages"].append({"role": "robot", "content": "x"}),
            "field 'request.messages[1].role'",
        ),
        (lambda r: r.update(response={"content": None}), "record 'c1', field 'response.content'"),
        (lambda r: r.update(run_id="other"), "record 'c1', field 'run_id'"),
        (lambda r: r.update(seq="first"), "record 'c1', field 'seq'"),
        (lambda r: r["request"]["tools"].append("Bash"), "record 'c1', field 'request.tools[2]'"),
    ],
)
def test_bad_records_name_the_call_and_the_field(change, where):
    record = call("c1", 0, [user("hi")], [text("hello")], tools=list(TOOLS))
    change(record)
    with pytest.raises(RecordError, match=where.replace("[", r"\[").replace("]", r"\]")):
        merged([record], run_id="run-1")
    with pytest.raises(RecordError, match="record '#0'"):
        merged(["not a record"])


# -- linear time ----------------------------------------------------------------------------
def test_each_message_of_each_call_is_keyed_once(monkeypatch):
    """The merge never compares calls with each other: it keys every message of every call once
    and follows prefixes by key, so its work is proportional to the size of the calls."""
    keyed = []
    original = merge.message_key
    monkeypatch.setattr(merge, "message_key", lambda m, canonical: keyed.append(m) or original(m, canonical))
    history, records = [user("start")], []
    for step in range(40):
        response = [text(f"step {step}"), tool_use(f"t{step}", "Bash", {"cmd": f"echo {step}"})]
        records.append(call(f"c{step}", step, list(history), response))
        history = history + [{"role": "assistant", "content": response}, tool_result(f"t{step}", "x" * 100)]
    [conversation] = merged(records)
    # Here each Anthropic message is one unified message: system + history + response per call.
    assert len(keyed) == sum(1 + len(r["request"]["messages"]) + 1 for r in records)
    assert len(conversation["messages"]) == 1 + 1 + 2 * 40 - 1


# -- table ----------------------------------------------------------------------------------
def test_schema_leaves_partition_columns_to_the_store():
    assert "model" not in CONVERSATION_SCHEMA.names and "instance" not in CONVERSATION_SCHEMA.names
    tool_call = CONVERSATION_SCHEMA.field("messages").type.value_type.field("tool_calls").type.value_type
    assert [f.name for f in tool_call] == ["id", "type", "name", "arguments"]


def test_table_round_trip():
    conversations = merged(session() + [call("c3", 2, [user("again")])])
    table = conversations_to_table(conversations)
    assert table.schema == CONVERSATION_SCHEMA and table.num_rows == 2
    assert table_to_conversations(table, model="m", instance="i") == conversations
    with_partitions = table.append_column("model", pa.array(["m"] * 2)).append_column("instance", pa.array(["i"] * 2))
    assert table_to_conversations(with_partitions) == conversations
    assert table_to_conversations(conversations_to_table([])) == []


def test_table_refuses_unknown_meta():
    [conversation] = merged(session())
    conversation["meta"]["colour"] = "blue"
    with pytest.raises(StoreError, match="colour"):
        conversations_to_table([conversation])
