"""Property tests: conversations → per-call records (any order, duplicates) → merge → the same.

A generated run holds one to three conversations, each in one wire format. Each assistant
message is the response of one call whose request is everything before it; system
messages may also come in the middle of a conversation (Claude Code's environment block). The client
may drop reasoning from the history it sends back (restored from the response) and may
re-serialise tool arguments; some calls are logged twice, some failed first and were
retried, some are count_tokens calls; the records arrive shuffled. OpenAI clients' calls may
also have gone to an Anthropic route (their prompt read from an upstream_request) or not.
"""

from __future__ import annotations

import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from trajhub_assets.merge.merge import merge_calls
from trajhub_assets.merge.normalize import message, message_key, read_call, thinking_block, tool_call
from trajhub_assets.merge.schema import conversations_to_table, table_to_conversations

FORMATS = ("anthropic_messages", "openai_chat", "openai_responses")
text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
words = st.text(alphabet='abcdefgh \n{}"', min_size=1, max_size=20)
arguments = st.dictionaries(
    st.sampled_from(["path", "cmd", "n", "flag"]), st.one_of(text, st.integers(-5, 5), st.booleans()), max_size=3
)


@st.composite
def conversations(draw, k: int, wire_format: str):
    """One conversation in the unified schema, ending with an assistant message."""
    messages = [message("system", draw(words))] if draw(st.booleans()) else []
    messages.append(message("user", f"conversation {k}: " + draw(text)))
    turns = draw(st.integers(1, 5))
    for turn in range(turns):
        calls = [
            tool_call(
                f"call_{k}_{turn}_{j}",
                draw(st.sampled_from(["Read", "Bash", "Edit"])),
                json.dumps(draw(arguments), ensure_ascii=False),
            )
            for j in range(draw(st.integers(0, 2)))
        ]
        reasoning = draw(st.one_of(st.none(), text))
        messages.append(message("assistant", draw(text), reasoning_content=reasoning, tool_calls=calls))
        if turn == turns - 1:
            break  # the last response may still ask for tools: the run was cut there
        for c in calls:
            is_error = draw(st.booleans()) if wire_format == "anthropic_messages" else None
            messages.append(
                message("tool", draw(text), tool_call_id=c["id"], name=c["function"]["name"], is_error=is_error)
            )
        if not calls or draw(st.booleans()):
            messages.append(message("user", draw(text)))
        if draw(st.integers(0, 4)) == 0:
            messages.append(message("system", draw(words)))
    return messages


# -- unified → wire ---------------------------------------------------------------------
def anthropic_request(messages, echo):
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    out = []
    for m in messages[1 if system is not None else 0 :]:
        if m["role"] == "assistant":
            out.append({"role": "assistant", "content": anthropic_content(m, echo)})
        elif m["role"] == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": m["tool_call_id"],
                "content": m["content"],
                "is_error": m["is_error"],
            }
            if out and out[-1]["role"] == "user" and out[-1]["content"][-1]["type"] == "tool_result":
                out[-1]["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
        elif m["role"] == "system":
            out.append({"role": "system", "content": m["content"]})
        elif out and out[-1]["role"] == "user":  # text after tool results: same user turn
            out[-1]["content"].append({"type": "text", "text": m["content"]})
        else:
            out.append({"role": "user", "content": [{"type": "text", "text": m["content"]}]})
    request = {"model": "m", "messages": out, "max_tokens": 100}
    if system is not None:
        request["system"] = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
    return request


def anthropic_content(m, echo):
    blocks = []
    if m["reasoning_content"] is not None and not echo.drop_reasoning:
        blocks.append({"type": "thinking", "thinking": m["reasoning_content"], "signature": "sig"})
    if m["content"]:
        blocks.append({"type": "text", "text": m["content"]})
    for c in m["tool_calls"] or []:
        blocks.append(
            {
                "type": "tool_use",
                "id": c["id"],
                "name": c["function"]["name"],
                "input": json.loads(c["function"]["arguments"]),
            }
        )
    return blocks


def chat_message(m, echo):
    out = {"role": m["role"], "content": m["content"]}
    if m["role"] == "assistant":
        if m["reasoning_content"] is not None and not echo.drop_reasoning:
            out["reasoning_content"] = m["reasoning_content"]
        if m["tool_calls"]:
            out["tool_calls"] = [
                tool_call(c["id"], c["function"]["name"], echo.arguments(c["function"]["arguments"]))
                for c in m["tool_calls"]
            ]
            if not m["content"] and echo.random.random() < 0.5:
                out["content"] = None
    if m["role"] == "tool":
        out["tool_call_id"] = m["tool_call_id"]
    return out


def response_items(m, echo):
    if m["role"] in ("user", "system"):
        return [{"role": m["role"], "content": m["content"]}]
    if m["role"] == "tool":
        return [{"type": "function_call_output", "call_id": m["tool_call_id"], "output": m["content"]}]
    items = []
    if m["reasoning_content"] is not None and not echo.drop_reasoning:
        summary = [{"type": "summary_text", "text": m["reasoning_content"]}]
        items.append({"type": "reasoning", "summary": summary})
    if m["content"] or not (m["tool_calls"] or items):
        items.append(
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": m["content"]}]}
        )
    for c in m["tool_calls"] or []:
        items.append(
            {
                "type": "function_call",
                "call_id": c["id"],
                "name": c["function"]["name"],
                "arguments": echo.arguments(c["function"]["arguments"]),
            }
        )
    return items


def request_for(wire_format, prompt, echo, since=0):
    """The request body; OpenAI responses calls chained by previous_response_id send only the
    messages after the previous response (`since`)."""
    if wire_format == "anthropic_messages":
        return anthropic_request(prompt, echo)
    if wire_format == "openai_chat":
        return {"model": "m", "messages": [chat_message(m, echo) for m in prompt]}
    system = prompt[0]["content"] if prompt and prompt[0]["role"] == "system" else None
    request = {
        "model": "m",
        "input": [
            item for m in prompt[max(since, 1 if system is not None else 0) :] for item in response_items(m, echo)
        ],
    }
    if system is not None:
        request["instructions"] = system
    return request


def response_for(wire_format, m, call_id):
    exact = Echo(random.Random(0), drop_reasoning=False, reserialise=False)
    if wire_format == "anthropic_messages":
        return {"content": anthropic_content(m, exact), "stop_reason": "end_turn"}
    if wire_format == "openai_chat":
        return {"choices": [{"index": 0, "message": chat_message(m, exact)}]}
    return {"id": f"resp_{call_id}", "output": response_items(m, exact)}


class Echo:
    """How a client repeats history: it may drop reasoning and re-serialise tool arguments."""

    def __init__(self, rng, drop_reasoning, reserialise):
        self.random, self.drop_reasoning, self.reserialise = rng, drop_reasoning, reserialise

    def arguments(self, a):
        return json.dumps(json.loads(a), separators=(",", ":"), ensure_ascii=True) if self.reserialise else a


@st.composite
def runs(draw):
    n = draw(st.integers(1, 3))
    formats = [draw(st.sampled_from(FORMATS)) for _ in range(n)]
    convs = [draw(conversations(k, formats[k])) for k in range(n)]
    rng = random.Random(draw(st.integers(0, 2**32)))
    echo = Echo(rng, drop_reasoning=draw(st.booleans()), reserialise=draw(st.booleans()))
    stateful = draw(st.booleans())  # OpenAI responses: chain calls by previous_response_id
    records, expected = [], []
    for k, (messages, wire_format) in enumerate(zip(convs, formats, strict=True)):
        want, previous = [], None
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                want.append(dict(m))
                continue
            call_id = f"c{k}-{i}"
            chained = stateful and wire_format == "openai_responses" and previous is not None
            request = request_for(wire_format, messages[:i], echo, since=previous[0] + 1 if chained else 0)
            if chained:
                request["previous_response_id"] = f"resp_{previous[1]}"
            base = {"run_id": "run-1", "wire_format": wire_format, "request": request}
            if rng.random() < 0.2:  # failed first, retried
                records.append(
                    {
                        **base,
                        "call_id": call_id + "-failed",
                        "call_kind": "agent",
                        "status": "error",
                        "response": None,
                        "error": {"status_code": 529},
                    }
                )
            if rng.random() < 0.2:
                records.append(
                    {
                        **base,
                        "call_id": call_id + "-count",
                        "call_kind": "count_tokens",
                        "status": "ok",
                        "response": {"input_tokens": 3},
                        "error": None,
                    }
                )
            record = {
                **base,
                "call_id": call_id,
                "call_kind": "agent",
                "status": "ok",
                "response": response_for(wire_format, m, call_id),
                "error": None,
            }
            records.extend([record, dict(record)] if rng.random() < 0.3 else [record])
            want.append(
                {**m, "generation": True, "generated_by": call_id, **kept_from_wire(wire_format, m, record["response"])}
            )
            previous = (i, call_id)
        expected.append(want)
    for seq, record in enumerate(records):
        record["seq"], record["started_at"], record["ended_at"] = seq, 1000.0 + seq, 1000.5 + seq
    rng.shuffle(records)
    return records, expected


def kept_from_wire(wire_format, m, response):
    """What the merge keeps of a response beyond the unified fields: Anthropic's thinking with
    its signature, and OpenAI chat's null content."""
    if wire_format == "anthropic_messages" and m["reasoning_content"] is not None:
        return {"thinking_blocks": [thinking_block("thinking", m["reasoning_content"], "sig")]}
    if wire_format == "openai_chat" and response["choices"][0]["message"]["content"] is None:
        return {"content": None}
    return {}


def canonical(conversations_messages):
    return sorted(json.dumps(m, sort_keys=True) for m in conversations_messages)


@settings(max_examples=300, deadline=None)
@given(runs())
def test_merge_returns_the_original_conversations(run):
    records, expected = run
    merged = merge_calls(records, model="m", instance="i", attempt=0)
    assert canonical([c["messages"] for c in merged]) == canonical(expected)
    for conversation in merged:
        ids = conversation["meta"]["call_ids"]
        assert len(ids) == len(set(ids))  # a call logged twice counts once
        assert not any(i.endswith("-count") for i in ids)


@settings(max_examples=100, deadline=None)
@given(runs(), st.randoms(use_true_random=False))
def test_merge_does_not_depend_on_record_order(run, rng):
    records, _ = run
    shuffled = list(records)
    rng.shuffle(shuffled)
    assert merge_calls(shuffled, model="m", instance="i", attempt=0) == merge_calls(
        records, model="m", instance="i", attempt=0
    )


@settings(max_examples=100, deadline=None)
@given(runs())
def test_table_round_trip(run):
    records, _ = run
    merged = merge_calls(records, model="m", instance="i", attempt=0)
    assert table_to_conversations(conversations_to_table(merged), model="m", instance="i") == merged


@st.composite
def runs_with_dropped_replies(draw):
    """One conversation whose client dropped some replies from its history (mini-swe-agent drops
    text-only ones and sends a user message instead): each dropped reply's call has the prompt
    up to a later user message. Returns (records, the conversation, the dropped positions)."""
    wire_format = draw(st.sampled_from(FORMATS))
    messages = draw(conversations(0, wire_format))
    users = [i for i, m in enumerate(messages) if m["role"] == "user" and i > 1]
    dropped = sorted(draw(st.sets(st.sampled_from(users), max_size=len(users))) if users else [])
    echo = Echo(random.Random(draw(st.integers(0, 2**32))), drop_reasoning=draw(st.booleans()), reserialise=False)
    records, want = [], []
    for i, m in enumerate(messages):
        if i in dropped:
            reply = message("assistant", f"dropped reply {i}")
            records.append(
                {
                    "call_id": f"drop-{i}",
                    "request": request_for(wire_format, messages[:i], echo),
                    "response": response_for(wire_format, reply, f"drop-{i}"),
                }
            )
        if m["role"] == "assistant":
            records.append(
                {
                    "call_id": f"c-{i}",
                    "request": request_for(wire_format, messages[:i], echo),
                    "response": response_for(wire_format, m, f"c-{i}"),
                }
            )
            want.append(
                {
                    **m,
                    "generation": True,
                    "generated_by": f"c-{i}",
                    **kept_from_wire(wire_format, m, records[-1]["response"]),
                }
            )
        else:
            want.append(dict(m))
    for seq, record in enumerate(records):
        record |= {
            "run_id": "run-1",
            "wire_format": wire_format,
            "call_kind": "agent",
            "status": "ok",
            "error": None,
            "seq": seq,
            "started_at": 1000.0 + seq,
            "ended_at": 1000.5 + seq,
        }
    return records, want, dropped


@settings(max_examples=200, deadline=None)
@given(runs_with_dropped_replies())
def test_main_is_the_whole_trajectory_and_dropped_replies_are_its_edits(run):
    records, want, dropped = run
    merged = merge_calls(records, model="m", instance="i", attempt=0)
    [main] = [c for c in merged if c["meta"]["kind"] == "main"]
    assert main["messages"] == want
    edits = sorted((c for c in merged if c is not main), key=lambda c: c["meta"]["branch_index"])
    assert [c["meta"]["branch_index"] for c in edits] == dropped
    for edit in edits:
        meta = edit["meta"]
        assert (meta["kind"], meta["parent_conversation_id"]) == ("edit", main["meta"]["conversation_id"])
        assert edit["messages"][-1]["content"] == f"dropped reply {edit['meta']['branch_index']}"


# -- translated calls -----------------------------------------------------------------------
@st.composite
def translated_runs(draw):
    """Runs whose OpenAI clients' calls went to an Anthropic route: a call's upstream_request
    says its prompt in Anthropic form, or is null (sent as is, or failed before it was sent)."""
    records, expected = draw(runs())
    rng = random.Random(draw(st.integers(0, 2**32)))
    echo = Echo(rng, drop_reasoning=draw(st.booleans()), reserialise=False)
    translated = {}  # by call: both copies of a call logged twice are the same call
    for i, record in enumerate(records):
        # A call chained by previous_response_id only names its history: kept as sent.
        if (
            record["wire_format"] != "anthropic_messages"
            and "previous_response_id" not in record["request"]
            and record["call_kind"] != "count_tokens"
            and translated.setdefault(record["call_id"], rng.random() < 0.7)
        ):
            records[i] = {
                **record,
                "litellm_model": "anthropic/m",
                "upstream_request": anthropic_request(read_call(record).prompt, echo),
            }
    return records, expected


@settings(max_examples=200, deadline=None)
@given(translated_runs())
def test_calls_read_from_either_body_merge_into_the_same_conversations(run):
    records, expected = run
    merged = merge_calls(records, model="m", instance="i", attempt=0)

    def keyed(messages):
        return json.dumps([(message_key(m), m["generation"], m["generated_by"]) for m in messages])

    assert sorted(keyed(c["messages"]) for c in merged) == sorted(keyed(messages) for messages in expected)
    for conversation in merged:
        ids = set(conversation["meta"]["call_ids"])
        sources = {
            "upstream_request" if r.get("upstream_request") else "request" for r in records if r["call_id"] in ids
        }
        assert conversation["meta"]["prompt_from"] == (sources.pop() if len(sources) == 1 else "mixed")
