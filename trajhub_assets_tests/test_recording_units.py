"""The recorder's plain parts, without a proxy process: run ids, stream assembly, credentials,
call kinds, hook de-duplication, and the JSONL <-> store round trip."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import itertools
import json
import os
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trajhub_assets.errors import RecordError
from trajhub_assets.recording.proxy_process import PROXY_DIR
from trajhub_assets.recording.raw_calls import build_tables, load_runs, number_calls, read_run, rebuild_records
from trajhub_assets.recording.run_id import claude_code_env, make_run_id, parse_run_id
from trajhub_assets.recording.schema import MESSAGE_BLOBS, RAW_CALLS
from trajhub_assets.recording.scripted_upstream import (
    Reply,
    anthropic_events,
    anthropic_message,
    openai_chunks,
    openai_completion,
    text_block,
    thinking_block,
    tool_use_block,
)


def _load_logger_module():
    # The logger imports litellm, which would otherwise try to fetch its cost map online.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    spec = importlib.util.spec_from_file_location("trajectory_logger_under_test", PROXY_DIR / "trajectory_logger.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tl = _load_logger_module()

REPLY = Reply(
    [
        thinking_block("first, think", "c2lnbmF0dXJlKy89PQ=="),
        {"type": "redacted_thinking", "data": "ZW5jcnlwdGVk"},
        text_block("Reading the file. ünïcödé ✓"),
        tool_use_block("toolu_1", "bash", {"cmd": "cat a.py", "nested": {"x": [1, 2.5, None]}}),
        tool_use_block("toolu_2", "read", {}),
    ]
)


# -- run ids ----------------------------------------------------------------------------------
def test_run_id_round_trips_and_rejects_bad_parts():
    run_id = make_run_id("anthropic__claude-sonnet-4-5", "demo-lru-eviction", 2)
    parsed = parse_run_id(run_id)
    assert (parsed.model_key, parsed.instance) == ("anthropic__claude-sonnet-4-5", "demo-lru-eviction")
    assert parsed.attempt == 2
    assert len(parsed.nonce) == 8 and str(parsed) == run_id
    assert make_run_id("m", "i", 0) != make_run_id("m", "i", 0)  # the nonce tells runs apart
    assert claude_code_env(run_id) == {"ANTHROPIC_CUSTOM_HEADERS": f"x-trajhub-run: {run_id}"}
    for bad in (("m~x", "i", 0), ("m", "a/b", 0), ("m", "i", -1)):
        with pytest.raises(RecordError):
            make_run_id(*bad)
    for bad in ("m~i~0", "m~i~x~00000000", "m~i~0~XYZ", "m~i/j~0~0123abcd"):
        with pytest.raises(RecordError, match="expected"):
            parse_run_id(bad)


def test_run_id_is_found_in_header_then_tag_then_metadata():
    header, tag, meta = "m~a~0~00000001", "m~b~0~00000002", "m~c~0~00000003"
    assert tl.find_run_id({"x-trajhub-run": header, "x-litellm-tags": f"trajhub_run={tag}"}, {}) == header
    assert tl.find_run_id({"x-litellm-tags": f"x, trajhub_run={tag}"}, {"metadata": {"trajhub_run": meta}}) == tag
    assert tl.find_run_id({}, {"metadata": {"trajhub_run": meta}}) == meta
    assert tl.find_run_id({}, {"tags": [f"trajhub_run={tag}"]}) == tag
    assert tl.find_run_id({"x-trajhub-run": "../../etc/passwd"}, {}) is None  # becomes a file name
    assert tl.find_run_id({}, {}) is None


# -- stream assembly --------------------------------------------------------------------------
def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0), max_size=40))
def test_anthropic_stream_reassembles_to_the_message_however_it_is_chunked(cuts):
    message = anthropic_message(REPLY, "m", "msg_1")
    data = "".join(anthropic_events(message)).encode()
    parser, assembler = tl.SseParser(), tl.AnthropicAssembler()
    for chunk in _split(data, cuts):
        for event in parser.feed(chunk):
            assembler.add(event)
    assert assembler.result() == message


def test_chat_stream_reassembles_to_the_completion():
    completion = openai_completion(REPLY, "m", "chatcmpl-1")
    parser, assembler = tl.SseParser(), tl.ChatAssembler()
    for chunk in _split("".join(openai_chunks(completion)).encode(), [5, 99, 300, 301, 1000]):
        for event in parser.feed(chunk):
            assembler.add(event)
    got = assembler.result()
    assert got["choices"][0]["message"] == completion["choices"][0]["message"]
    assert got["choices"][0]["finish_reason"] == "tool_calls" and got["usage"] == completion["usage"]


def test_chat_thinking_block_deltas_merge_until_a_signature():
    assembler = tl.ChatAssembler()
    for delta in (
        {"thinking_blocks": [{"type": "thinking", "thinking": "a"}]},
        {"thinking_blocks": [{"type": "thinking", "thinking": "b"}]},
        {"thinking_blocks": [{"type": "thinking", "thinking": "", "signature": "s1"}]},
        {"thinking_blocks": [{"type": "thinking", "thinking": "c", "signature": "s2"}]},
        {"content": "done"},
    ):
        assembler.add({"id": "x", "choices": [{"index": 0, "delta": delta}]})
    message = assembler.result()["choices"][0]["message"]
    assert message["thinking_blocks"] == [
        {"type": "thinking", "thinking": "ab", "signature": "s1"},
        {"type": "thinking", "thinking": "c", "signature": "s2"},
    ]
    assert message["content"] == "done"


def test_usage_is_normalized_across_wire_formats():
    anthropic = {
        "usage": {
            "input_tokens": 10,
            "output_tokens": 3,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 5,
        }
    }
    chat = {"usage": {"prompt_tokens": 115, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 100}}}
    responses = {"usage": {"input_tokens": 115, "output_tokens": 3, "input_tokens_details": {"cached_tokens": 100}}}
    assert tl.usage_of("anthropic_messages", anthropic) == {
        "input_tokens": 115,
        "output_tokens": 3,
        "cache_read_tokens": 100,
        "cache_creation_tokens": 5,
    }
    assert tl.usage_of("openai_chat", chat)["input_tokens"] == 115
    assert tl.usage_of("openai_responses", responses)["input_tokens"] == 115
    assert tl.usage_of("openai_chat", None)["input_tokens"] == 0


def test_cost_comes_from_the_offline_cost_map():
    usage = {"input_tokens": 1000, "output_tokens": 100, "cache_read_tokens": 0, "cache_creation_tokens": 0}
    assert tl.cost_usd("anthropic/claude-sonnet-4-5", usage) > 0
    assert tl.cost_usd("openai/not-a-real-model-xyz", usage) is None


# -- credentials and call kinds ---------------------------------------------------------------
def test_redact_replaces_credential_fields_without_touching_the_original():
    body = {
        "model": "m",
        "api_key": "k1",
        "metadata": {"Authorization": "Bearer x", "user_id": "u"},
        "messages": [{"role": "user", "content": "hi", "x-api-key": "k2"}],
        "max_tokens": 5,
    }
    redacted = tl.redact(body)
    assert redacted["api_key"] == redacted["metadata"]["Authorization"] == "[REDACTED]"
    assert redacted["messages"][0]["x-api-key"] == "[REDACTED]"
    assert redacted["metadata"]["user_id"] == "u" and redacted["max_tokens"] == 5
    assert body["api_key"] == "k1" and body["messages"][0]["x-api-key"] == "k2"
    untouched = {"messages": [{"role": "user", "content": "hi"}]}
    assert tl.redact(untouched) is untouched  # nothing to do, nothing copied


def test_scrub_removes_known_secrets_and_key_shaped_strings_but_not_signatures():
    secrets = tl.known_secrets(
        {"LITELLM_MASTER_KEY": "master-key-123456", "HOME": "/root", "ANTHROPIC_API_KEY": "ant-secret-abcdef"}
    )
    assert set(secrets) == {b"master-key-123456", b"ant-secret-abcdef"}
    line = json.dumps(
        {
            "a": "env: master-key-123456 ant-secret-abcdef",
            "b": "sk-proj-" + "x" * 30,
            "c": "Bearer " + "y" * 30,
            "signature": "EqQBCkYIBRgCKkDsk-abc+/0123456789abcdefghij==",
        }
    ).encode()
    scrubbed = json.loads(tl.scrub(line, secrets))
    assert scrubbed["a"] == "env: [REDACTED] [REDACTED]"
    assert scrubbed["b"] == scrubbed["c"] == "[REDACTED]"
    assert scrubbed["signature"] == "EqQBCkYIBRgCKkDsk-abc+/0123456789abcdefghij=="


@pytest.mark.parametrize(
    ("path", "request_body", "headers", "kind"),
    [
        ("/v1/messages/count_tokens", {"messages": []}, {}, "count_tokens"),
        (
            "/v1/messages",
            {"system": "Analyze if this message indicates a new conversation topic.", "messages": []},
            {},
            "title",
        ),
        (
            "/v1/messages",
            {"system": "Generate a concise, sentence-case title (3-7 words).", "messages": []},
            {},
            "title",
        ),
        ("/v1/messages", {"system": "Fix the bug; the page title is wrong.", "messages": []}, {}, "agent"),
        ("/v1/messages", {"max_tokens": 1, "messages": [{"role": "user", "content": "quota"}]}, {}, "background"),
        ("/v1/messages", {"tools": [{"name": "bash"}], "system": "title", "messages": []}, {}, "agent"),
        ("/v1/chat/completions", {"messages": [{"role": "system", "content": "You solve tasks."}]}, {}, "agent"),
        ("/v1/messages", {"messages": []}, {"x-trajhub-call-kind": "title"}, "title"),
    ],
)
def test_call_kind(path, request_body, headers, kind):
    assert tl.call_kind(path, request_body, headers) == kind


# -- the hooks, driven directly -----------------------------------------------------------------
def _data(call_id: str, body: dict, run_id: str = "m~i~0~0000abcd") -> dict:
    return {
        "litellm_call_id": call_id,
        **body,
        "proxy_server_request": {
            "url": "http://127.0.0.1/v1/messages",
            "body": body,
            "headers": {"x-trajhub-run": run_id},
        },
    }


def _lines(directory) -> list[dict]:
    return [json.loads(line) for line in (directory / "m~i~0~0000abcd.jsonl").read_text().splitlines()]


def test_a_hook_that_fires_twice_writes_one_record(tmp_path):
    logger = tl.TrajectoryLogger(tmp_path)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    message = anthropic_message(REPLY, "m", "msg_1")

    async def scenario():
        data = _data("call-1", body)
        await logger.async_pre_call_hook(None, None, data, "anthropic_messages")
        await logger.async_pre_call_hook(None, None, data, "anthropic_messages")
        await logger.async_post_call_success_hook(data, None, message)
        await logger.async_post_call_success_hook(data, None, message)
        await logger.async_post_call_failure_hook(data, RuntimeError("late"), None)

        stream = _data("call-2", dict(body, stream=True))
        await logger.async_pre_call_hook(None, None, stream, "anthropic_messages")

        async def upstream():
            for frame in anthropic_events(message):
                yield frame.encode()

        async for _ in logger.async_post_call_streaming_iterator_hook(None, upstream(), stream):
            pass
        await logger.async_post_call_failure_hook(stream, RuntimeError("after the stream"), None)

        early = _data("call-3", body)  # failed before the pre-call hook ever ran
        await logger.async_post_call_failure_hook(early, RuntimeError("no such model"), None)
        await logger.async_post_call_failure_hook(early, RuntimeError("no such model"), None)

    asyncio.run(scenario())
    records = _lines(tmp_path)
    assert [(r["call_id"], r["status"]) for r in records] == [("call-1", "ok"), ("call-2", "ok"), ("call-3", "error")]
    assert [r["seq"] for r in records] == [None] * 3  # no counter in the proxy: read_run numbers them
    assert [r["seq"] for r in read_run(tmp_path / "m~i~0~0000abcd.jsonl").records] == [0, 1, 2]
    assert records[0]["response"] == message and records[1]["response"] == message
    assert records[0]["request_exact"] is False  # no middleware here: litellm's copy of the body


def test_a_restarted_proxy_ends_a_half_line_and_its_calls_follow_the_numbered_ones(tmp_path):
    # An older proxy numbered calls 0, 1, 5 (2-4 were in flight) and was killed mid-write of 6.
    run_id = "m~i~0~0000abcd"
    path = tmp_path / f"{run_id}.jsonl"
    numbered = [json.dumps(_record(run_id, seq, [])) for seq in (0, 1, 5)]
    path.write_text("\n".join(numbered) + f'\n{{"run_id":"{run_id}","seq":6,"requ')
    logger = tl.TrajectoryLogger(tmp_path)
    for call_id in ("late", "early"):  # written out of start order, as two workers might
        headers = {"x-trajhub-run": run_id}
        record = logger._new_record(None, {"model": "m"}, "anthropic_messages", time.time(), call_id, headers)
        record["started_ns"] -= 0 if call_id == "late" else 10**9
        asyncio.run(logger._close(tl._Call(record), {}, None, 200, None))
    lines = path.read_text().splitlines()
    assert lines[3] == f'{{"run_id":"{run_id}","seq":6,"requ'  # the half line stays one bad line
    assert [json.loads(line)["seq"] for line in lines[4:]] == [None, None]
    run = read_run(path)
    assert [(r["seq"], r["call_id"]) for r in run.records][3:] == [(6, "early"), (7, "late")]
    assert [e.line for e in run.bad_lines] == [4]


def test_a_record_appended_after_another_writers_half_line_is_kept(tmp_path):
    # Two processes append to one run's file; one is killed mid-write, the other, whose file was
    # open already, appends its next line right after the half line.
    run_id = "m~i~0~0000abcd"
    survivor = tl.TrajectoryLogger(tmp_path)

    def write(call_id: str) -> None:
        record = survivor._new_record(None, {"model": "m"}, "anthropic_messages", time.time(), call_id, headers)
        asyncio.run(survivor._close(tl._Call(record), {}, None, 200, None))

    headers = {"x-trajhub-run": run_id}
    write("before")
    with open(tmp_path / f"{run_id}.jsonl", "ab") as killed:
        killed.write(b'{"record_version":1,"run_id":"' + run_id.encode() + b'","call_id":"killed","request":{"a')
    write("after")
    run = read_run(tmp_path / f"{run_id}.jsonl")
    assert [r["call_id"] for r in run.records] == ["before", "after"]
    assert [r["seq"] for r in run.records] == [0, 1]
    [half] = run.bad_lines
    assert half.line == 2 and "half a line" in str(half)


def test_calls_are_numbered_in_start_order_by_the_hosts_monotonic_clock_else_the_wall_clock():
    def call(call_id, started_at, started_ns, clock="boot-a"):
        return dict(
            _record("m~i~0~0000abcd", 0, []),
            call_id=call_id,
            seq=None,
            started_at=started_at,
            started_ns=started_ns,
            clock=clock,
        )

    # The wall clock stepped back between b and c; the monotonic clock did not.
    one_host = [call("c", 100.0, 3), call("a", 105.0, 1), call("b", 106.0, 2), call("d", 101.0, 3)]
    number_calls(one_host)
    assert sorted((r["seq"], r["call_id"]) for r in one_host) == [(0, "a"), (1, "b"), (2, "c"), (3, "d")]
    # Two hosts' monotonic clocks do not compare: the wall clock does.
    two_hosts = [call("x", 2.0, 1, "boot-a"), call("y", 1.0, 9, "boot-b")]
    number_calls(two_hosts)
    assert [(r["call_id"], r["seq"]) for r in two_hosts] == [("x", 1), ("y", 0)]


# -- JSONL -> store -> records ------------------------------------------------------------------
def _record(run_id: str, seq: int, messages: list, response: dict | None = None, **extra) -> dict:
    return {
        "run_id": run_id,
        "call_id": f"{run_id}-{seq}",
        "seq": seq,
        "started_at": 1.5 + seq,
        "ended_at": 2.0 + seq,
        "first_token_at": None,
        "endpoint": "/v1/messages",
        "wire_format": "anthropic_messages",
        "call_kind": "agent",
        "stream": False,
        "request": {
            "model": "m",
            "system": "sys " * 500,
            "tools": [{"name": "bash"}] * 20,
            "messages": messages,
            "max_tokens": 100,
        },
        "response": response,
        "usage": {"input_tokens": 1, "output_tokens": 2, "cache_read_tokens": 0, "cache_creation_tokens": 0},
        "status": "ok",
        "http_status": 200,
        "error": None,
        "litellm_model": "anthropic/m",
        "cost_usd": 0.001,
        **extra,
    }


def _session(run_id: str, calls: int) -> list[dict]:
    """A conversation that grows by a tool call and its (1-3 kB) result on every call."""
    rng = random.Random(0)
    messages = [{"role": "user", "content": "Fix the bug in the pager."}]
    records = []
    for seq in range(calls):
        reply = Reply([text_block(f"step {seq}"), tool_use_block(f"t{seq}", "bash", {"cmd": f"ls {seq}"})])
        response = anthropic_message(reply, "m", f"msg_{seq}")
        records.append(_record(run_id, seq, list(messages), response))
        result = "".join(rng.choice("abcdefgh \n") for _ in range(rng.randint(1000, 3000)))
        messages += [
            {"role": "assistant", "content": response["content"]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{seq}", "content": result}]},
        ]
    return records


def _write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_odd_shapes_rebuild_exactly():
    run_id = "m~i~0~0000abcd"
    odd = [
        _record(
            run_id,
            0,
            [{"role": "user", "content": "hi"}],
            None,
            status="error",
            error={"type": "RateLimitError", "message": "slow"},
            http_status=429,
        ),
        dict(
            _record(run_id, 1, []),
            wire_format="openai_responses",
            request={"input": [{"role": "user", "content": "x"}], "instructions": "be brief", "model": "m"},
        ),
        dict(_record(run_id, 2, []), request={"model": "m", "messages": "not a list", "system": None}),
        dict(_record(run_id, 3, []), request={"instructions": "a", "system": "b", "input": "text"}, extra_field=[1]),
    ]
    calls, blobs = build_tables(odd, "m", "i")
    assert [json.dumps(r) for r in rebuild_records(calls, blobs)] == [json.dumps(r) for r in odd]


def test_bad_lines_fail_clearly_and_every_good_record_is_stored(tmp_path, store):
    run_id = make_run_id("m", "i", 0)
    good = _session(run_id, 4)
    path = tmp_path / f"{run_id}.jsonl"
    lines = [json.dumps(r) for r in good]
    broken = json.dumps(dict(good[0], call_id="no-seq", seq="three"))
    path.write_text("\n".join([lines[0], "{not json", lines[1], broken, lines[2], lines[2], lines[3][:-40]]))

    run = read_run(path)
    assert [r["seq"] for r in run.records] == [0, 1, 2] and run.duplicates == 1
    assert [e.line for e in run.bad_lines] == [2, 4, 7]
    assert "truncated" in str(run.bad_lines[-1]) and f"{path}:7" in str(run.bad_lines[-1])
    assert "field 'seq'" in str(run.bad_lines[1])

    with pytest.raises(RecordError, match=rf"{run_id}\.jsonl:2: .*3 bad line\(s\).*3 good record"):
        load_runs(store, [path], "m", "i")
    stored = store.read(RAW_CALLS, {"model": "m", "instance": "i"})
    assert stored.column("seq").to_pylist() == [0, 1, 2]


def test_a_record_of_another_partition_is_refused():
    with pytest.raises(RecordError, match="belongs to"):
        build_tables(_session(make_run_id("m", "other", 0), 1), "m", "i")


def test_sixty_call_session_is_stored_in_a_fraction_of_its_jsonl(tmp_path, store):
    run_id = make_run_id("m", "i", 0)
    records = _session(run_id, 60)
    path = tmp_path / f"{run_id}.jsonl"
    _write_jsonl(path, records)
    result = load_runs(store, [path], "m", "i")
    assert result.calls == 60
    assert result.stored_bytes < 0.15 * result.raw_bytes
    partition = {"model": "m", "instance": "i"}
    rebuilt = rebuild_records(store.read(RAW_CALLS, partition), store.read(MESSAGE_BLOBS, partition))
    assert [json.dumps(r) for r in rebuilt] == [json.dumps(r) for r in records]


def test_a_translated_session_stores_what_went_upstream_by_reference_too(tmp_path, store):
    run_id = make_run_id("m", "i", 0)
    records = _session(run_id, 40)
    for record in records:  # as a translating route sends it: other keys, the same messages
        request = record["request"]
        record["upstream_request"] = {
            "model": "upstream-m",
            "messages": request["messages"],
            "tools": [{"name": "dummy_tool"}],
            "max_tokens": 4096,
        }
    path = tmp_path / f"{run_id}.jsonl"
    _write_jsonl(path, records)
    load_runs(store, [path], "m", "i")
    partition = {"model": "m", "instance": "i"}
    calls, blobs = store.read(RAW_CALLS, partition), store.read(MESSAGE_BLOBS, partition)
    # Each message once, shared with the client's request; no call carries a copy of its own.
    assert blobs.column("kind").to_pylist().count("message") == 2 * 40 - 1
    assert max(len(envelope) for envelope in calls.column("envelope").to_pylist()) < 10_000  # refs, not text
    rebuilt = rebuild_records(calls, blobs)
    assert [json.dumps(r) for r in rebuilt] == [json.dumps(r) for r in records]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"[1,2,3]", {"_unparsed": "[1,2,3]"}),
        (b"", {"_unparsed": ""}),
        (b"\xff\xfe\x00binary", {"_unparsed_base64": "//4AYmluYXJ5"}),
        ("é".encode() * tl.RAW_BODY_CAP, {"_unparsed": "é" * tl.RAW_BODY_CAP}),  # 2 bytes each, none cut
        (
            "é".encode() * (tl.RAW_BODY_CAP + 1),
            {
                "_unparsed": "é" * tl.RAW_BODY_CAP,
                "_truncated": f"kept the first {tl.RAW_BODY_CAP} of {tl.RAW_BODY_CAP + 1} characters",
            },
        ),
        (
            b"\xff" * (tl.RAW_BODY_CAP + 2),
            {
                "_unparsed_base64": base64.b64encode(b"\xff" * tl.RAW_BODY_CAP).decode(),
                "_truncated": f"kept the first {tl.RAW_BODY_CAP} of {tl.RAW_BODY_CAP + 2} bytes",
            },
        ),
    ],
)
def test_a_body_that_is_not_json_is_kept_as_text_or_base64_and_capped(raw, expected):
    assert tl.unparsed_body(raw) == expected


@pytest.mark.parametrize("run_id", ["../../etc", "..", ".hidden", "a/b", "a" * 201, "run\x00id", "run\nid", ""])
def test_an_unsafe_run_id_is_not_a_file_name(run_id):
    assert tl.find_run_id({tl.RUN_HEADER: run_id}, {}) is None
    assert tl.find_run_id({}, {"metadata": {"trajhub_run": run_id}}) is None


def _exchange(logger, body: bytes, headers: dict, app) -> list[dict]:
    """One POST /v1/messages through the recorder's middleware; the messages sent back."""
    sent, received = (
        [],
        [
            {"type": "http.request", "body": body[:3], "more_body": True},
            {"type": "http.request", "body": body[3:], "more_body": False},
        ],
    )

    async def receive():
        return received.pop(0) if received else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    headers = dict(headers, **{tl.RUN_HEADER: "m~i~0~0000abcd"})
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/messages",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    asyncio.run(logger.handle_http(app, scope, receive, send))
    return sent


def test_the_middleware_refuses_or_records_what_litellm_would_fumble(tmp_path, monkeypatch):
    logger = tl.TrajectoryLogger(tmp_path)
    seen = []

    async def app(scope, receive, send):  # litellm, reading the body it was replayed
        seen.append((await receive())["body"])
        raise RuntimeError("an error handler that raises")

    server = type("ProxyServer", (), {"master_key": "sk-master-" + "0" * 20})
    monkeypatch.setitem(__import__("sys").modules, "litellm.proxy.proxy_server", server)
    body = json.dumps({"model": "m", "messages": []}).encode()
    statuses = [
        _exchange(logger, b, h, app)[0]["status"]
        for b, h in (
            (body, {}),  # no key
            (b"[1,2,3]", {"x-api-key": "k"}),
            (body, {"x-api-key": "k"}),
        )
    ]  # reaches the app, which raises
    assert statuses == [401, 400, 500] and seen == [body]
    monkeypatch.setattr(server, "master_key", None)  # litellm without a master key lets anyone in
    assert _exchange(logger, body, {}, app)[0]["status"] == 500 and seen == [body, body]

    records = _lines(tmp_path)
    assert [(r["http_status"], r["status"]) for r in records] == [
        (401, "error"),
        (400, "error"),
        (500, "error"),
        (500, "error"),
    ]
    assert records[1]["request"] == {"_unparsed": "[1,2,3]"} and records[2]["request"] == json.loads(body)
    assert "an error handler that raises" in records[2]["error"]["message"]
