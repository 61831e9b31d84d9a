"""Merging from what the model saw, end to end: an OpenAI chat client on an Anthropic route of the
real proxy (scripted upstream) -> recording -> store -> merged conversation = what the upstream got."""

from __future__ import annotations

import json

from trajhub_assets.merge.merge import merge_calls
from trajhub_assets.recording.raw_calls import load_runs, rebuild_records
from trajhub_assets.recording.run_id import make_run_id, parse_run_id
from trajhub_assets.recording.schema import MESSAGE_BLOBS, RAW_CALLS
from trajhub_assets.recording.scripted_upstream import Reply, text_block, tool_use_block
from trajhub_assets.store import Store
from trajhub_assets_tests.test_recording import post

TOOL = {
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
# A mid-conversation system message and a user's name: litellm moves the one and drops the other.
OPENING = [
    {"role": "system", "content": "You are a coding agent."},
    {"role": "user", "content": "Fix the pagination bug.", "name": "dev"},
    {"role": "system", "content": "Working directory: /workspace"},
]
REPLIES = [
    Reply([text_block("Looking."), tool_use_block("toolu_1", "bash", {"cmd": "ls"})]),
    Reply([tool_use_block("toolu_2", "bash", {"cmd": "cat pager.py", "timeout": 30})]),
    Reply([text_block("Fixed: the last page was dropped.")]),
]
RESULTS = ["pager.py", "def paginate(items, size): ..."]


def seen_by_the_upstream(body: dict) -> list[tuple]:
    """An Anthropic body as (role, content, tool_call_id, tool calls), by the documented
    normalizations: system blocks joined by a blank line, text blocks concatenated, a user
    turn split at its tool results, tool input as a JSON object."""
    system = body.get("system")
    texts = [system] if isinstance(system, str) else [b["text"] for b in system or []]
    out = [("system", "\n\n".join(texts), None, None)] if texts else []
    for m in body["messages"]:
        blocks = [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str) else m["content"]
        if m["role"] == "assistant":
            calls = [(b["id"], b["name"], b["input"]) for b in blocks if b["type"] == "tool_use"]
            out.append(("assistant", "".join(b["text"] for b in blocks if b["type"] == "text"), None, calls or None))
            continue
        pending = []
        for b in blocks:
            if b["type"] == "tool_result":
                if pending:
                    out.append(("user", "".join(pending), None, None))
                    pending = []
                out.append(("tool", b["content"], b["tool_use_id"], None))
            else:
                pending.append(b["text"])
        if pending:
            out.append(("user", "".join(pending), None, None))
    return out


def as_seen(m: dict) -> tuple:
    calls = [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in m["tool_calls"] or []]
    return m["role"], m["content"] or "", m["tool_call_id"], calls or None


def test_merged_conversation_is_what_the_anthropic_upstream_received(proxy, upstream, tmp_path):
    upstream.set_script(REPLIES)
    run_id = make_run_id("scripted-model", "merge-upstream", 0)
    messages, responses = list(OPENING), []
    for i in range(3):
        body = {
            "model": "scripted-anthropic",
            "stream": i == 1,
            "tools": [TOOL],
            "max_tokens": 512,
            "messages": messages,
        }
        response = post(proxy, "/v1/chat/completions", body, run_id)
        assert response.status_code == 200, response.text
        if i == 1:  # a stream: the client joins the chunks, as an agent would
            chunks = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
            calls = [d["tool_calls"][0] for c in chunks for d in [c["choices"][0]["delta"]] if d.get("tool_calls")]
            reply = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": calls[0]["id"],
                        "type": "function",
                        "function": {
                            "name": calls[0]["function"]["name"],
                            "arguments": "".join(c["function"].get("arguments") or "" for c in calls),
                        },
                    }
                ],
            }
        else:
            message = response.json()["choices"][0]["message"]
            reply = {"role": "assistant", "content": message["content"], "tool_calls": message.get("tool_calls")}
        responses.append(reply)
        if i < 2:
            call_id = reply["tool_calls"][0]["id"]
            messages = messages + [reply, {"role": "tool", "tool_call_id": call_id, "content": RESULTS[i]}]

    run = parse_run_id(run_id)
    store = Store(tmp_path / "store")
    load_runs(store, [proxy.recording(run_id)], run.model_key, run.instance)
    partition = {"model": run.model_key, "instance": run.instance}
    records = rebuild_records(store.read(RAW_CALLS, partition), store.read(MESSAGE_BLOBS, partition))
    assert len(records) == 3 and all(r["upstream_request"] is not None for r in records)
    [conversation] = merge_calls(records, run_id=run_id)
    meta, merged = conversation["meta"], conversation["messages"]
    ids = [r["call_id"] for r in sorted(records, key=lambda r: r["seq"])]
    assert (meta["kind"], meta["call_ids"], meta["prompt_from"], meta["prompt_fallback_call_ids"]) == (
        "main",
        ids,
        "upstream_request",
        [],
    )

    last = upstream.served[-1].request.body
    assert len(last["messages"]) < len(messages)  # the upstream did get another conversation
    assert [as_seen(m) for m in merged[:-1]] == seen_by_the_upstream(last)
    assert all(m["name"] is None for m in merged if m["role"] == "user")  # litellm dropped it
    assert [
        (t["function"]["name"], t["function"]["description"], t["function"]["parameters"])
        for t in conversation["tools"]
    ] == [(t["name"], t.get("description"), t["input_schema"]) for t in last["tools"]]
    final = merged[-1]
    assert (final["role"], final["content"], final["generated_by"]) == ("assistant", responses[-1]["content"], ids[-1])
    # Each response, read as the client got it, is the message the upstream was sent back.
    assert [m["generated_by"] for m in merged if m["generation"]] == ids
