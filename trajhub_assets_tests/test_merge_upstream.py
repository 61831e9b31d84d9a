"""Merging from what the model saw: a translated call's prompt comes from its upstream_request."""

from __future__ import annotations

import copy
import json

import pyarrow.parquet as pq
import pytest

from trajhub_assets.errors import RecordError
from trajhub_assets.merge.merge import merge_calls
from trajhub_assets.merge.schema import MERGED_TRAJECTORIES, conversations_to_table, table_to_conversations
from trajhub_assets.store import Store

# Recorded by the real proxy (scripted upstream): an OpenAI chat client on the `scripted-anthropic`
# route. litellm moved the mid-conversation system message into the user turn behind a note,
# dropped the user's `name`, the tool's `strict` and `$schema`, and turned `user` into metadata.
REQUEST = {
    "model": "scripted-anthropic",
    "stream": False,
    "temperature": 0.2,
    "parallel_tool_calls": False,
    "user": "agent-7",
    "max_tokens": 512,
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "bash",
                "description": "Run a shell command.",
                "strict": True,
                "parameters": {
                    "type": "object",
                    "properties": {"cmd": {"type": "string"}},
                    "required": ["cmd"],
                    "additionalProperties": False,
                    "$schema": "http://json-schema.org/draft-07/schema#",
                },
            },
        }
    ],
    "messages": [
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": "Fix the pagination bug.", "name": "dev"},
        {"role": "system", "content": "Working directory: /workspace"},
        {
            "role": "assistant",
            "content": "Looking.",
            "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "bash", "arguments": '{"cmd": "ls"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "pager/"},
    ],
}
NOTE = "Operator note (not from the user): the following was originally a mid-conversation system-role reminder."
UPSTREAM_REQUEST = {
    "model": "scripted-claude",
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Fix the pagination bug."},
                {"type": "text", "text": NOTE},
                {"type": "text", "text": "Working directory: /workspace"},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"cmd": "ls"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "pager/"}]},
    ],
    "temperature": 0.2,
    "max_tokens": 512,
    "metadata": {"user_id": "agent-7"},
    "tools": [
        {
            "name": "bash",
            "input_schema": {
                "type": "object",
                "properties": {"cmd": {"type": "string"}},
                "required": ["cmd"],
                "additionalProperties": False,
            },
            "type": "custom",
            "description": "Run a shell command.",
        }
    ],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "system": [{"type": "text", "text": "You are a coding agent."}],
}
CHOICES = [
    {
        "finish_reason": "tool_calls",
        "index": 0,
        "message": {
            "content": "Reading.",
            "role": "assistant",
            "tool_calls": [
                {
                    "index": 1,
                    "function": {"arguments": '{"cmd": "cat pager.py"}', "name": "bash"},
                    "id": "toolu_2",
                    "type": "function",
                }
            ],
            "provider_specific_fields": {"citations": None, "thinking_blocks": None},
        },
    }
]


def translated(
    call_id="c1",
    seq=0,
    request=REQUEST,
    upstream=UPSTREAM_REQUEST,
    choices=CHOICES,
    litellm_model="anthropic/scripted-claude",
    **fields,
):
    return {
        "run_id": "r",
        "call_id": call_id,
        "seq": seq,
        "started_at": 100.0 + seq,
        "ended_at": 100.5 + seq,
        "wire_format": "openai_chat",
        "call_kind": "agent",
        "litellm_model": litellm_model,
        "request": copy.deepcopy(request),
        "upstream_request": copy.deepcopy(upstream),
        "response": None if choices is None else {"choices": copy.deepcopy(choices)},
        "status": "ok" if choices is not None else "error",
        "error": None if choices is not None else {"status_code": 400, "message": "refused"},
        **fields,
    }


def merged(records):
    return merge_calls(records, model="m", instance="i", attempt=0)


def fields(m):
    return (m["role"], m["content"], m["tool_calls"], m["tool_call_id"], m["name"])


def test_prompt_and_tools_are_what_the_upstream_got():
    [conversation] = merged([translated()])
    system, user, assistant, tool, reply = conversation["messages"]
    # The upstream's system prompt, and no second system message: litellm moved it into the user turn.
    assert [m["role"] for m in conversation["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert fields(system) == ("system", "You are a coding agent.", None, None, None)
    assert fields(user) == (
        "user",
        "".join(b["text"] for b in UPSTREAM_REQUEST["messages"][0]["content"]),
        None,
        None,
        None,
    )  # no name: litellm dropped it
    assert [p["text"] for p in user["content_parts"]] == [
        "Fix the pagination bug.",
        NOTE,
        "Working directory: /workspace",
    ]
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"cmd": "ls"}
    assert (tool["tool_call_id"], tool["name"], tool["content"], tool["is_error"]) == (
        "toolu_1",
        "bash",
        "pager/",
        False,
    )
    # Tools as the model was shown them: the upstream's input_schema, without $schema.
    assert conversation["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "bash",
                "description": "Run a shell command.",
                "parameters": UPSTREAM_REQUEST["tools"][0]["input_schema"],
            },
        }
    ]
    # The response stays as the client received it (OpenAI chat).
    assert (reply["content"], reply["generated_by"], reply["tool_calls"][0]["id"]) == ("Reading.", "c1", "toolu_2")
    assert json.loads(reply["extra"])["tool_calls[0].index"] == 1
    meta = conversation["meta"]
    assert (meta["prompt_from"], meta["prompt_fallback_call_ids"], meta["wire_format"]) == (
        "upstream_request",
        [],
        "openai_chat",
    )
    assert table_to_conversations(conversations_to_table([conversation]), model="m", instance="i") == [conversation]


def test_without_upstream_request_the_prompt_is_the_request():
    [conversation] = merged([translated(upstream=None)])
    assert [m["role"] for m in conversation["messages"]] == [
        "system",
        "user",
        "system",
        "assistant",
        "tool",
        "assistant",
    ]
    assert conversation["messages"][1]["name"] == "dev"
    assert "$schema" in conversation["tools"][0]["function"]["parameters"]
    assert (conversation["meta"]["prompt_from"], conversation["meta"]["prompt_fallback_call_ids"]) == ("request", [])


GEMINI_BODY = {
    "contents": [{"role": "user", "parts": [{"text": "Fix the pagination bug."}]}],
    "system_instruction": {"parts": [{"text": "You are a coding agent."}]},
}


def test_an_upstream_body_of_unknown_format_falls_back_to_the_request_and_says_so():
    for litellm_model, upstream in [
        ("gemini/gemini-2.5-pro", GEMINI_BODY),
        (None, UPSTREAM_REQUEST),
        ("anthropic/scripted-claude", {"_unparsed": "not json {"}),
    ]:
        [conversation] = merged([translated(upstream=upstream, litellm_model=litellm_model)])
        assert conversation["messages"][:-1] == merged([translated(upstream=None)])[0]["messages"][:-1]
        assert (conversation["meta"]["prompt_from"], conversation["meta"]["prompt_fallback_call_ids"]) == (
            "request",
            ["c1"],
        )


def test_an_openai_route_gets_chat_or_responses_by_the_body():
    upstream = {
        "model": "gpt-x",
        "messages": [{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "Fix it."}],
    }
    [conversation] = merged([translated(upstream=upstream, litellm_model="openai/gpt-x")])
    assert [fields(m)[:2] for m in conversation["messages"][:-1]] == [("system", "Be terse."), ("user", "Fix it.")]
    responses = {"model": "gpt-x", "instructions": "Be terse.", "input": [{"role": "user", "content": "Fix it."}]}
    [conversation] = merged([translated(upstream=responses, litellm_model="openai/gpt-x")])
    assert [fields(m)[:2] for m in conversation["messages"][:-1]] == [("system", "Be terse."), ("user", "Fix it.")]
    assert conversation["meta"]["prompt_from"] == "upstream_request"


# A three-call chat session on an Anthropic route, translated as litellm does when nothing moves.
SYSTEM = {"role": "system", "content": "You are a coding agent."}
ASK = {"role": "user", "content": "Fix the pagination bug."}
LOOK = {
    "role": "assistant",
    "content": "Looking.",
    "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "bash", "arguments": '{"cmd": "ls"}'}}],
}
RESULT = {"role": "tool", "tool_call_id": "toolu_1", "content": "pager/"}


def upstream_of(*messages):
    return {
        "model": "scripted-claude",
        "system": [{"type": "text", "text": SYSTEM["content"]}],
        "tools": UPSTREAM_REQUEST["tools"],
        "messages": list(messages),
    }


ANTHROPIC_ASK = {"role": "user", "content": [{"type": "text", "text": ASK["content"]}]}
ANTHROPIC_LOOK = UPSTREAM_REQUEST["messages"][1]
ANTHROPIC_RESULT = UPSTREAM_REQUEST["messages"][2]


def session():
    schema = UPSTREAM_REQUEST["tools"][0]["input_schema"]  # one litellm passes on as it is
    tools = [
        {"type": "function", "function": {"name": "bash", "description": "Run a shell command.", "parameters": schema}}
    ]
    first = translated(
        "c1",
        0,
        {"model": "scripted-anthropic", "tools": tools, "messages": [SYSTEM, ASK]},
        upstream_of(ANTHROPIC_ASK),
        [{"index": 0, "message": LOOK}],
    )
    history = {"model": "scripted-anthropic", "tools": tools, "messages": [SYSTEM, ASK, LOOK, RESULT]}
    # Refused before anything was sent upstream (so no upstream_request), then retried.
    refused = translated("c2", 1, history, None, None)
    retried = translated(
        "c3",
        2,
        history,
        upstream_of(ANTHROPIC_ASK, ANTHROPIC_LOOK, ANTHROPIC_RESULT),
        [{"index": 0, "message": {"role": "assistant", "content": "Fixed."}}],
    )
    return [first, refused, retried]


def test_calls_with_and_without_upstream_request_make_one_conversation():
    [conversation] = merged(session())
    assert [m["role"] for m in conversation["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    look = conversation["messages"][2]
    # The response, read as the client got it, is the message the upstream was sent back.
    assert (look["generation"], look["generated_by"]) == (True, "c1")
    meta = conversation["meta"]
    assert (meta["call_ids"], meta["failed_call_ids"], meta["kind"]) == (["c1", "c2", "c3"], ["c2"], "main")
    assert (meta["prompt_from"], meta["prompt_fallback_call_ids"], meta["tools_changed"]) == ("mixed", [], False)


def test_conversations_without_the_new_fields_still_fit_the_table(tmp_path):
    [conversation] = merged([translated()])
    for name in ("prompt_from", "prompt_fallback_call_ids"):
        del conversation["meta"][name]  # as an import builds them
    table = conversations_to_table([conversation])
    [back] = table_to_conversations(table, model="m", instance="i")
    assert (back["meta"]["prompt_from"], back["meta"]["prompt_fallback_call_ids"]) == (None, None)
    # A partition written before the columns existed reads with them null.
    store, partition = Store(tmp_path), {"model": "m", "instance": "i"}
    path = store.partition_file(MERGED_TRAJECTORIES, partition)
    path.parent.mkdir(parents=True)
    pq.write_table(table.drop_columns(["prompt_from", "prompt_fallback_call_ids"]), path)
    assert table_to_conversations(store.read(MERGED_TRAJECTORIES, partition), **partition) == [back]


def test_errors_name_the_body_they_were_read_from():
    bad = translated(upstream={**UPSTREAM_REQUEST, "messages": [{"role": "robot", "content": "x"}]})
    with pytest.raises(RecordError, match=r"record 'c1', field 'upstream_request\.messages\[0\]\.role'"):
        merged([bad])


def test_a_chained_responses_call_sent_upstream_whole_starts_from_its_history():
    def responses_call(call_id, seq, request, upstream, output):
        return {
            "run_id": "r",
            "call_id": call_id,
            "seq": seq,
            "wire_format": "openai_responses",
            "litellm_model": "anthropic/scripted-claude",
            "request": request,
            "upstream_request": upstream,
            "response": {"id": f"resp_{call_id}", "output": output},
            "status": "ok",
        }

    call = {"type": "function_call", "call_id": "toolu_1", "name": "bash", "arguments": '{"cmd": "ls"}'}
    done = [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Done."}]}]
    first = responses_call(
        "a", 0, {"instructions": SYSTEM["content"], "input": ASK["content"]}, upstream_of(ANTHROPIC_ASK), [call]
    )
    # The client names its history by id; litellm sent the upstream all of it.
    second = responses_call(
        "b",
        1,
        {
            "previous_response_id": "resp_a",
            "input": [{"type": "function_call_output", "call_id": "toolu_1", "output": "pager/"}],
        },
        upstream_of(ANTHROPIC_ASK, {"role": "assistant", "content": [ANTHROPIC_LOOK["content"][1]]}, ANTHROPIC_RESULT),
        done,
    )
    [conversation] = merged([first, second])
    assert [m["role"] for m in conversation["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert [m["generated_by"] for m in conversation["messages"] if m["generation"]] == ["a", "b"]
