"""The trajectory recorder end to end: scripted upstream -> real LiteLLM proxy -> JSONL -> store.

Every test talks HTTP to the real proxy process (fixtures_proxy.py); none needs the
internet or an API key.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import httpx
import pyarrow.parquet as pq
import pytest
from dagster import asset, materialize

from trajhub_assets.recording.proxy_process import ProxyError, ProxyProcess
from trajhub_assets.recording.raw_calls import load_runs, read_run, rebuild_records
from trajhub_assets.recording.resources import ProxyResource
from trajhub_assets.recording.run_id import make_run_id, parse_run_id, run_headers
from trajhub_assets.recording.schema import MESSAGE_BLOBS, RAW_CALLS
from trajhub_assets.recording.scripted_upstream import (
    Fail,
    Reply,
    say,
    text_block,
    thinking_block,
    tool_use_block,
)
from trajhub_assets.resources import ProjectResource
from trajhub_assets.store import Store

BASH_TOOL = {
    "name": "bash",
    "description": "Run a shell command.",
    "input_schema": {"type": "object", "properties": {"cmd": {"type": "string"}}},
}
CHAT_BASH_TOOL = {
    "type": "function",
    "function": {"name": "bash", "description": "Run a shell command.", "parameters": BASH_TOOL["input_schema"]},
}
AGENT_REPLY = Reply(
    [
        thinking_block("The tests fail on an empty page; look at paginate() first.", "EqQBCkYIBRgCKkDsig+/=="),
        text_block("I'll read the pager module."),
        tool_use_block("toolu_01A", "bash", {"cmd": "cat pager/paginate.py", "timeout": 30}),
    ],
    input_tokens=1200,
    output_tokens=80,
    cache_read_tokens=1000,
    cache_creation_tokens=50,
)


def anthropic_body(text: str, stream: bool = False, **extra) -> dict:
    return {
        "model": "scripted-anthropic",
        "max_tokens": 2048,
        "stream": stream,
        "system": [{"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}}],
        "tools": [BASH_TOOL],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def chat_body(text: str, stream: bool = False, **extra) -> dict:
    return {
        "model": "scripted-openai",
        "stream": stream,
        "tools": [CHAT_BASH_TOOL],
        "messages": [{"role": "system", "content": "You are a coding agent."}, {"role": "user", "content": text}],
        **extra,
    }


def post(proxy, path: str, body: dict, run_id: str | None = None, **headers) -> httpx.Response:
    headers = {"authorization": f"Bearer {proxy.master_key}", **(run_headers(run_id) if run_id else {}), **headers}
    with (
        httpx.Client(base_url=proxy.url, timeout=60) as client,
        client.stream("POST", path, json=body, headers=headers) as response,
    ):
        response.read()  # a stream is complete only once fully read
        return response


def records(proxy, run_id: str) -> list[dict]:
    run = read_run(proxy.recording(run_id))
    assert not run.bad_lines
    return run.records


def stored_roundtrip(proxy, run_id: str, tmp_path) -> list[dict]:
    """Load the run into a store and rebuild its records from the tables."""
    run = parse_run_id(run_id)
    store = Store(tmp_path / "store")
    load_runs(store, [proxy.recording(run_id)], run.model_key, run.instance)
    partition = {"model": run.model_key, "instance": run.instance}
    return rebuild_records(store.read(RAW_CALLS, partition), store.read(MESSAGE_BLOBS, partition))


# -- round trips ------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("wire_format", ["anthropic_messages", "openai_chat"])
def test_call_roundtrips_into_the_store_as_upstream_sent_it(proxy, upstream, tmp_path, wire_format, stream):
    upstream.set_script([AGENT_REPLY])
    run_id = make_run_id("scripted-model", "demo-pagination-offset", 0)
    path, body = (
        ("/v1/messages", anthropic_body("Fix the pagination bug.", stream))
        if wire_format == "anthropic_messages"
        else ("/v1/chat/completions", chat_body("Fix the pagination bug.", stream))
    )
    assert post(proxy, path, body, run_id).status_code == 200

    [record] = records(proxy, run_id)
    [served] = upstream.served
    assert (record["run_id"], record["seq"], record["wire_format"]) == (run_id, 0, wire_format)
    assert record["stream"] is stream
    assert (record["status"], record["http_status"], record["error"], record["call_kind"]) == ("ok", 200, None, "agent")
    assert record["request"] == body  # the client's request exactly as sent
    assert record["started_at"] <= record["first_token_at"] <= record["ended_at"]
    if wire_format == "anthropic_messages":
        # thinking (with signature), text and tool_use, in the order the upstream sent them
        assert record["response"]["content"] == served.body["content"]
        assert record["response"]["stop_reason"] == "tool_use"
        assert record["response"]["usage"] == served.body["usage"]
    else:
        sent, got = served.body["choices"][0], record["response"]["choices"][0]
        for key in ("content", "reasoning_content", "tool_calls"):
            assert got["message"][key] == sent["message"][key]
        assert got["finish_reason"] == "tool_calls"
    assert record["usage"] == {
        "input_tokens": 1200 + 1000 + (50 if wire_format == "anthropic_messages" else 0),
        "output_tokens": 80,
        "cache_read_tokens": 1000,
        "cache_creation_tokens": 50 if wire_format == "anthropic_messages" else 0,
    }
    assert record["litellm_model"] in ("anthropic/scripted-claude", "openai/scripted-gpt")

    [rebuilt] = stored_roundtrip(proxy, run_id, tmp_path)
    assert json.dumps(rebuilt) == json.dumps(record)  # byte for byte, key order included


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_responses_api_calls_are_recorded(proxy, upstream, stream):
    upstream.set_script([AGENT_REPLY])
    run_id = make_run_id("scripted-model", "responses", 0)
    body = {
        "model": "scripted-anthropic",
        "input": "Fix the pagination bug.",
        "stream": stream,
        "tools": [{"type": "function", "name": "bash", "parameters": BASH_TOOL["input_schema"]}],
    }
    assert post(proxy, "/v1/responses", body, run_id).status_code == 200

    [record] = records(proxy, run_id)
    assert (record["wire_format"], record["status"], record["request"]) == ("openai_responses", "ok", body)
    output = record["response"]["output"]
    calls = [item for item in output if item["type"] == "function_call"]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("bash", AGENT_REPLY.blocks[2]["input"])]
    assert "I'll read the pager module." in json.dumps(output)


# -- failures and side calls ------------------------------------------------------------------
def test_failed_calls_are_recorded_with_their_error(proxy, upstream):
    upstream.set_script(
        [Fail(429, "rate limited, slow down"), Fail(500, "upstream exploded"), Reply(AGENT_REPLY.blocks, break_after=4)]
    )
    run_id = make_run_id("scripted-model", "failures", 0)
    assert post(proxy, "/v1/messages", anthropic_body("a"), run_id).status_code == 429
    assert post(proxy, "/v1/chat/completions", chat_body("b"), run_id).status_code == 500
    with pytest.raises(httpx.RemoteProtocolError):  # forwarded as is: the client sees the upstream drop
        post(proxy, "/v1/messages", anthropic_body("c", stream=True), run_id)  # breaks after 4 events
    assert post(proxy, "/v1/messages", dict(anthropic_body("d"), model="no-such-model"), run_id).status_code >= 400

    rate_limited, exploded, broken, unknown = records(proxy, run_id)
    assert (rate_limited["status"], rate_limited["http_status"]) == ("error", 429)
    assert "rate limited, slow down" in rate_limited["error"]["message"]
    assert (exploded["status"], exploded["http_status"]) == ("error", 500)
    assert "upstream exploded" in exploded["error"]["message"]
    # The stream broke inside the thinking block: what arrived before is kept.
    assert broken["status"] == "error" and broken["stream"]
    assert broken["response"]["content"][0]["type"] == "thinking"
    assert AGENT_REPLY.blocks[0]["thinking"].startswith(broken["response"]["content"][0]["thinking"])
    assert unknown["status"] == "error" and unknown["request"]["model"] == "no-such-model"
    assert [r["seq"] for r in (rate_limited, exploded, broken, unknown)] == [0, 1, 2, 3]


def _wait_for_records(proxy, run_id: str, count: int, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proxy.recording(run_id).exists() and len(got := read_run(proxy.recording(run_id)).records) >= count:
            return got
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} record(s) for {run_id} after {timeout}s")


def test_a_client_that_leaves_early_still_leaves_a_record(proxy, upstream):
    upstream.set_script([Reply(AGENT_REPLY.blocks, chunk_delay=0.2), Reply(AGENT_REPLY.blocks, delay=2)])
    run_id = make_run_id("scripted-model", "client-left", 0)
    headers = {"authorization": f"Bearer {proxy.master_key}", **run_headers(run_id)}
    with (
        httpx.Client(base_url=proxy.url, timeout=30) as client,
        client.stream("POST", "/v1/messages", json=anthropic_body("stream", stream=True), headers=headers) as r,
    ):
        next(r.iter_bytes())  # the first event, then hang up
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=proxy.url, timeout=0.5) as client:
        client.post("/v1/messages", json=anthropic_body("plain"), headers=headers)

    left_stream, left_plain = _wait_for_records(proxy, run_id, 2)
    assert (left_stream["stream"], left_stream["status"]) == (True, "error")
    assert left_stream["error"]["type"] == "client_disconnected"
    assert left_plain["request"]["messages"][-1]["content"] == "plain"  # its outcome, whatever it was
    time.sleep(2.5)  # the upstream answers the abandoned call now: still one record each
    assert len(read_run(proxy.recording(run_id)).records) == 2


def test_count_tokens_title_and_background_calls_are_marked(proxy, upstream):
    upstream.set_script([Reply([], input_tokens=321), say("Pagination fix"), say("ok"), say("sure")])
    run_id = make_run_id("scripted-model", "side-calls", 0)
    count = post(
        proxy,
        "/v1/messages/count_tokens",
        {"model": "scripted-anthropic", "messages": [{"role": "user", "content": "hi"}]},
        run_id,
    )
    assert count.json()["input_tokens"] == 321
    title = {
        "model": "scripted-anthropic",
        "max_tokens": 64,
        "system": "Generate a concise, sentence-case title (3-7 words) for this coding session.",
        "messages": [{"role": "user", "content": "Fix the pagination bug."}],
    }
    post(proxy, "/v1/messages", title, run_id)
    post(
        proxy,
        "/v1/messages",
        {"model": "scripted-anthropic", "max_tokens": 1, "messages": [{"role": "user", "content": "quota"}]},
        run_id,
    )
    post(proxy, "/v1/messages", anthropic_body("x"), run_id, **{"x-trajhub-call-kind": "background"})

    kinds = [(r["call_kind"], r["status"]) for r in records(proxy, run_id)]
    assert kinds == [("count_tokens", "ok"), ("title", "ok"), ("background", "ok"), ("background", "ok")]
    assert records(proxy, run_id)[0]["usage"]["input_tokens"] == 321


def test_run_id_travels_in_header_tag_or_body_metadata(proxy, upstream):
    upstream.set_script(lambda request: say("ok"))
    by_header, by_tag, by_metadata = (make_run_id("scripted-model", f"carrier-{i}", 0) for i in range(3))
    post(proxy, "/v1/messages", anthropic_body("header"), by_header)
    post(proxy, "/v1/chat/completions", chat_body("tag"), **{"x-litellm-tags": f"team-a,trajhub_run={by_tag}"})
    post(proxy, "/v1/chat/completions", chat_body("metadata", metadata={"trajhub_run": by_metadata}))
    unattributed = proxy.recording("_unattributed")
    before = unattributed.read_text().count("\n") if unattributed.exists() else 0
    post(proxy, "/v1/messages", anthropic_body("nobody"))

    for run_id, text in ((by_header, "header"), (by_tag, "tag"), (by_metadata, "metadata")):
        [record] = records(proxy, run_id)
        assert record["request"]["messages"][-1]["content"] == text
    last = json.loads(unattributed.read_text().splitlines()[-1])  # recorded, not dropped
    assert unattributed.read_text().count("\n") == before + 1
    assert (last["run_id"], last["request"]["messages"][-1]["content"]) == (None, "nobody")


# -- what reaches the upstream ----------------------------------------------------------------
def claude_code_body(stream: bool) -> dict:
    """Shaped like Claude Code 2.1's agent calls: system turns inside messages, adaptive
    thinking with an effort, cache breakpoints, a user id in metadata."""
    return {
        "model": "scripted-anthropic",
        "max_tokens": 32000,
        "stream": stream,
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "system", "content": "A system turn first."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Fix the pagination bug.", "cache_control": {"type": "ephemeral"}}
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Look at the pager.", "signature": "c2lnbmF0dXJl"},
                    {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"cmd": "ls"}},
                ],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "pager/"}]},
            {"role": "system", "content": "<system-reminder>Stay on the task.</system-reminder>"},
        ],
        "tools": [dict(BASH_TOOL, cache_control={"type": "ephemeral"})],
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "metadata": {"user_id": "user_0f1e_account_session_7"},
    }


def openai_agent_body(stream: bool) -> dict:
    """An OpenAI chat agent mid-loop: an assistant turn with tool calls and no content."""
    return {
        "model": "scripted-openai",
        "stream": stream,
        "tools": [CHAT_BASH_TOOL],
        "messages": [
            {"role": "system", "content": "You are a coding agent."},
            {"role": "user", "content": "Fix the pagination bug."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "bash", "arguments": '{"cmd": "ls"}'}}
                ],
                "provider_specific_fields": {"reasoning_details": [{"type": "reasoning.text", "text": "ls"}]},
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "pager/"},
        ],
        "parallel_tool_calls": False,
        "user": "agent-7",
    }


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(
    ("path", "make_body", "route_model", "key_header"),
    [
        ("/v1/messages", claude_code_body, "anthropic/scripted-claude", "x-api-key"),
        ("/v1/chat/completions", openai_agent_body, "openai/scripted-gpt", "authorization"),
    ],
    ids=["anthropic", "openai"],
)
def test_same_format_calls_reach_the_upstream_as_the_client_sent_them(
    proxy, upstream, path, make_body, route_model, key_header, stream
):
    upstream.set_script([AGENT_REPLY])
    run_id = make_run_id("scripted-model", "as-sent", 0)
    body = make_body(stream)
    beta = "interleaved-thinking-2025-05-14,context-management-2025-06-27"
    response = post(proxy, path, body, run_id, **{"x-api-key": proxy.master_key, "anthropic-beta": beta})
    assert response.status_code == 200, response.text

    [served] = upstream.served
    sent = dict(body, model=route_model.split("/", 1)[1])  # the route's model, nothing else changed
    assert json.dumps(served.request.body) == json.dumps(sent)  # key order included
    headers = served.request.headers
    assert headers[key_header] in (proxy.upstream_key, f"Bearer {proxy.upstream_key}")
    assert proxy.master_key not in json.dumps(headers)
    if key_header == "x-api-key":
        assert headers["anthropic-beta"] == beta

    [record] = records(proxy, run_id)
    assert record["request"] == body and record["upstream_request"] is None
    assert (record["status"], record["litellm_model"], record["stream"]) == ("ok", route_model, stream)


def test_each_route_is_forwarded_with_its_own_base_key_and_model(upstream, tmp_path):
    """Routes of the form the project config generates, one per model: each call goes to its
    route's api_base with its route's key, under its route's model name."""
    upstream.set_script(lambda request: say("ok"))
    config = tmp_path / "routes.yaml"
    config.write_text(
        "model_list:\n"
        "  - {model_name: team/claude-a, litellm_params: {model: anthropic/upstream-claude-a,\n"
        "      api_base: os.environ/ROUTE_A_BASE, api_key: os.environ/ROUTE_A_KEY}}\n"
        "  - {model_name: team/gpt-b, litellm_params: {model: openai/upstream-gpt-b,\n"
        "      api_base: os.environ/ROUTE_B_BASE, api_key: os.environ/ROUTE_B_KEY}}\n"
        "litellm_settings: {callbacks: trajectory_logger.instance, num_retries: 0}\n"
    )
    keys = {"ROUTE_A_KEY": f"sk-route-a-{secrets.token_hex(12)}", "ROUTE_B_KEY": f"sk-route-b-{secrets.token_hex(12)}"}
    env = dict(keys, ROUTE_A_BASE=upstream.url, ROUTE_B_BASE=f"{upstream.url}/v1")
    run_id = make_run_id("team__claude-a", "routes", 0)
    with ProxyProcess(tmp_path / "recordings", config=config, env=env, log_path=tmp_path / "proxy.log") as running:
        for path, body in (
            ("/v1/messages", dict(claude_code_body(True), model="team/claude-a")),
            ("/v1/chat/completions", dict(openai_agent_body(False), model="team/gpt-b")),
        ):
            assert post(running, path, body, run_id).status_code == 200

    claude, gpt = (served.request for served in upstream.served)
    assert (claude.path, claude.body["model"], claude.headers["x-api-key"]) == (
        "/v1/messages",
        "upstream-claude-a",
        keys["ROUTE_A_KEY"],
    )
    assert (gpt.path, gpt.body["model"], gpt.headers["authorization"]) == (
        "/v1/chat/completions",
        "upstream-gpt-b",
        f"Bearer {keys['ROUTE_B_KEY']}",
    )
    assert claude.body["thinking"] == {"type": "adaptive"} and gpt.body["messages"][2]["content"] is None
    recorded = read_run(tmp_path / "recordings" / f"{run_id}.jsonl").records
    assert [r["litellm_model"] for r in recorded] == ["anthropic/upstream-claude-a", "openai/upstream-gpt-b"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_translated_call_records_what_went_upstream(proxy, upstream, tmp_path, stream):
    upstream.set_script([AGENT_REPLY])
    run_id = make_run_id("scripted-model", "translated", 0)
    body = dict(openai_agent_body(stream), model="scripted-anthropic")  # chat client, Anthropic route
    assert post(proxy, "/v1/chat/completions", body, run_id).status_code == 200

    [served] = upstream.served
    [record] = records(proxy, run_id)
    assert record["request"] == body
    assert record["upstream_request"] == served.request.body  # what the model saw
    assert served.request.body["messages"] != body["messages"]
    [rebuilt] = stored_roundtrip(proxy, run_id, tmp_path)
    assert json.dumps(rebuilt) == json.dumps(record)


def test_every_request_to_an_llm_route_is_recorded_whatever_it_is(start_proxy, upstream):
    running = start_proxy()
    upstream.set_script(lambda request: say("ok"))
    run_id = make_run_id("scripted-model", "bad-requests", 0)
    wrong_key = f"wrong-{secrets.token_hex(16)}"
    key, run = {"authorization": f"Bearer {running.master_key}"}, run_headers(run_id)
    good = json.dumps(anthropic_body("hi")).encode()

    def claiming(claimed: str) -> bytes:
        return json.dumps(anthropic_body("hi", metadata={"trajhub_run": claimed})).encode()

    cases = [  # body, headers, status, the file its record belongs in
        (b"not json {", key | run, 400, run_id),
        (b"[1,2,3]", key | run, 400, run_id),
        (b"", key | run, 400, run_id),
        (b"\xff" + b"x" * (10 << 20), key | run, 400, run_id),  # 10 MB, not even UTF-8
        # litellm without a database: "No connected db." (400) for a key that is not the master key
        (good, {"authorization": f"Bearer {wrong_key}"} | run, 400, run_id),
        (good, run, 401, run_id),
        (good, key | {"x-trajhub-run": "../../etc"}, 200, "_unattributed"),
        (good, key | {"x-trajhub-run": "r" * 5000}, 200, "_unattributed"),
        (claiming("../../etc/passwd"), key, 200, "_unattributed"),
        (claiming("run\x00\x1b[31m\n"), key, 200, "_unattributed"),
    ]
    for body, headers, status, name in cases:
        path = running.recording(name)
        before = path.read_bytes().count(b"\n") if path.exists() else 0
        response = httpx.post(
            f"{running.url}/v1/messages",
            content=body,
            timeout=60,
            headers={"content-type": "application/json", **headers},
        )
        assert response.status_code == status, (body[:30], response.text[:300])
        if status >= 400:
            assert response.json()["error"]["message"]
        assert path.read_bytes().count(b"\n") == before + 1, (body[:30], name)
        record = json.loads(path.read_bytes().splitlines()[-1])
        assert (record["http_status"], record["status"]) == (status, "ok" if status == 200 else "error")

    recorded = {p.relative_to(running.home).as_posix() for p in running.home.rglob("*") if p.is_file()}
    assert recorded == {f"recordings/{run_id}.jsonl", "recordings/_unattributed.jsonl", "logs/proxy.log"}
    bad = records(running, run_id)
    assert [r["request"] for r in bad[:3]] == [{"_unparsed": "not json {"}, {"_unparsed": "[1,2,3]"}, {"_unparsed": ""}]
    assert "of 10485761 bytes" in bad[3]["request"]["_truncated"] and "_unparsed_base64" in bad[3]["request"]
    assert len(json.dumps(bad[3])) < 200_000
    assert httpx.get(f"{running.url}/health/liveliness").status_code == 200  # still healthy
    assert post(running, "/v1/messages", anthropic_body("after"), run_id).status_code == 200
    for path in running.recordings.iterdir():
        text = path.read_text()
        for secret in (running.master_key, running.upstream_key, wrong_key):
            assert secret not in text, f"{secret[:10]}... in {path}"


# -- concurrency and durability ---------------------------------------------------------------
def _echo(request) -> Reply:
    """Answer with the token the client put in its last message, so answers are checkable."""
    message = request.body["messages"][-1]["content"]
    return Reply([text_block(f"echo {message}")], chunk_delay=0.002)


async def _client(proxy, run_id: str, token: str, wire_format: str, stream: bool, http: httpx.AsyncClient) -> str:
    path, body = (
        ("/v1/messages", anthropic_body(token, stream))
        if wire_format == "anthropic_messages"
        else ("/v1/chat/completions", chat_body(token, stream))
    )
    headers = {"authorization": f"Bearer {proxy.master_key}", **run_headers(run_id)}
    async with http.stream("POST", path, json=body, headers=headers) as response:
        await response.aread()
        assert response.status_code == 200, response.text
    return token


def test_fifty_concurrent_clients_are_each_recorded_once_under_their_run(proxy, upstream):
    upstream.set_script(_echo)
    run_ids = [make_run_id("scripted-model", f"concurrent-{i}", 0) for i in range(10)]
    jobs = [
        (run_ids[c % 10], f"client{c}-call{k}", ("anthropic_messages", "openai_chat")[c % 2], k == 1)
        for c in range(50)
        for k in range(2)
    ]

    async def main():
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=proxy.url, timeout=120, limits=limits) as http:

            async def client(c):  # one client: its two calls in turn
                return [await _client(proxy, *job, http) for job in jobs[2 * c : 2 * c + 2]]

            return await asyncio.gather(*(client(c) for c in range(50)))

    asyncio.run(main())
    assert upstream.calls == 100
    for run_id in run_ids:
        got = records(proxy, run_id)
        expected = {token for rid, token, _, _ in jobs if rid == run_id}
        assert sorted(r["request"]["messages"][-1]["content"] for r in got) == sorted(expected)
        assert sorted(r["seq"] for r in got) == list(range(10))
        assert len({r["call_id"] for r in got}) == 10
        for r in got:
            text = json.dumps(r["response"])
            assert f"echo {r['request']['messages'][-1]['content']}" in text


def test_killing_the_proxy_loses_no_completed_call(start_proxy, upstream):
    running = start_proxy()
    upstream.set_script(_echo)
    run_id = make_run_id("scripted-model", "killed", 0)
    completed: list[str] = []

    async def main():
        async with httpx.AsyncClient(base_url=running.url, timeout=30, limits=httpx.Limits(max_connections=20)) as http:

            async def worker(w):
                for k in range(1000):
                    job = (run_id, f"w{w}-{k}", ("anthropic_messages", "openai_chat")[k % 2], w % 2 == 0)
                    try:
                        completed.append(await _client(running, *job, http))
                    except (httpx.HTTPError, AssertionError):
                        return

            async def killer():
                while len(completed) < 60:
                    await asyncio.sleep(0.01)
                await asyncio.to_thread(running.process.kill)  # SIGKILL with calls in flight

            await asyncio.gather(killer(), *(worker(w) for w in range(20)))

    asyncio.run(main())
    run = read_run(running.recording(run_id))
    recorded = {r["request"]["messages"][-1]["content"] for r in run.records}
    assert len(completed) >= 60
    assert set(completed) <= recorded
    # A write cut short by the kill can only be the call in flight, on the last line.
    assert all(e.line == len(run.records) + 1 and "truncated" in str(e) for e in run.bad_lines)


# -- the resource -----------------------------------------------------------------------------
def test_proxy_resource_uses_an_external_proxy(proxy, upstream):
    upstream.set_script([say("hi")])
    resource = ProxyResource(url=proxy.url + "/", master_key=proxy.master_key, recordings_dir=str(proxy.recordings))
    assert (resource.base_url, resource.openai_base_url) == (proxy.url, proxy.url + "/v1")
    run_id = make_run_id("scripted-model", "resource", 0)
    response = httpx.post(
        f"{resource.openai_base_url}/chat/completions",
        json=chat_body("hi"),
        headers={"authorization": f"Bearer {resource.key}", **run_headers(run_id)},
    )
    assert response.status_code == 200
    assert (resource.recordings() / f"{run_id}.jsonl").exists()
    with pytest.raises(ProxyError, match="master_key"):
        _ = ProxyResource(url=proxy.url).key


def test_proxy_resource_takes_an_external_proxy_from_the_project(proxy, tmp_path, monkeypatch):
    config = tmp_path / "project.yaml"
    config.write_text(
        f"tasks: [{{path: tasks.jsonl}}]\nproxy: {{url: '{proxy.url}', master_key_env: TEST_PROXY_KEY}}\n"
    )
    monkeypatch.setenv("TEST_PROXY_KEY", proxy.master_key)
    resource = ProxyResource(project=ProjectResource(path=str(config)))
    assert (resource.base_url, resource.key, resource.port) == (proxy.url, proxy.master_key, proxy.process.port)


def test_a_worker_elsewhere_fetches_a_runs_recordings_with_the_recordings_key_only(
    proxy, upstream, tmp_path, monkeypatch
):
    upstream.set_script([say("hi")])
    run_id, never = make_run_id("scripted-model", "fetched", 0), make_run_id("scripted-model", "never", 0)
    assert post(proxy, "/v1/chat/completions", chat_body("hi"), run_id).status_code == 200
    route = f"{proxy.url}/trajhub/recordings"
    for key in (None, proxy.master_key, "wrong"):  # the agents in the sandboxes hold the master key
        assert (
            httpx.get(f"{route}/{run_id}", headers={"authorization": f"Bearer {key}"} if key else {}).status_code == 401
        )
    key = {"authorization": f"Bearer {proxy.recordings_key}"}
    assert httpx.get(f"{route}/{run_id}", headers=key).content == proxy.recording(run_id).read_bytes()
    assert httpx.get(f"{route}/{never}", headers=key).status_code == 404
    for outside in (".hidden", "..%2F..%2Fetc%2Fpasswd", "run%00id"):
        assert httpx.get(f"{route}/{outside}", headers=key).status_code in (400, 404), outside
    # A worker's resource: the file fetched into its own recordings directory, whole.
    config = tmp_path / "project.yaml"
    config.write_text(
        f"tasks: [{{path: tasks.jsonl}}]\nproxy: {{url: '{proxy.url}', master_key_env: TEST_PROXY_KEY, "
        "recordings_key_env: TEST_RECORDINGS_KEY}\n"
    )
    monkeypatch.setenv("TEST_PROXY_KEY", proxy.master_key)
    monkeypatch.setenv("TEST_RECORDINGS_KEY", proxy.recordings_key)
    worker = ProxyResource(project=ProjectResource(path=str(config)), recordings_dir=str(tmp_path / "worker"))
    fetched = worker.recording(run_id)
    assert fetched == tmp_path / "worker" / f"{run_id}.jsonl"
    assert fetched.read_bytes() == proxy.recording(run_id).read_bytes()
    assert read_run(fetched).records[0]["run_id"] == run_id
    assert not worker.recording(never).exists()  # a run that made no call
    monkeypatch.setenv("TEST_RECORDINGS_KEY", proxy.master_key)
    with pytest.raises(ProxyError, match="HTTP 401: the recordings key is required"):
        worker.recording(run_id)
    monkeypatch.delenv("TEST_RECORDINGS_KEY")
    with pytest.raises(ProxyError, match="recordings_key_env: the recordings key of .* is not set"):
        worker.recording(run_id)
    assert sorted(p.name for p in (tmp_path / "worker").iterdir()) == [f"{run_id}.jsonl"]  # no partial file left


def test_baseline_routes_reach_the_scripted_upstream(proxy, upstream):
    upstream.set_script(lambda request: say(request.body["model"]))
    run_id = make_run_id("baseline__careful", "routes", 0)
    for model in ("trajhub-baseline/careful", "baseline/judge"):
        assert post(proxy, "/v1/chat/completions", dict(chat_body("hi"), model=model), run_id).status_code == 200
    assert [s.request.body["model"] for s in upstream.served] == ["trajhub-baseline/careful", "trajhub-baseline/judge"]


def test_proxy_resource_starts_a_proxy_on_demand_and_stops_it(upstream, tmp_path):
    upstream.set_script([say("hi")])
    run_id = make_run_id("scripted-model", "on-demand", 0)
    seen = {}

    @asset
    def calls_the_model(proxy: ProxyResource) -> None:
        proxy.listen_on("127.0.0.2")  # as for Docker's bridge gateway: any local address
        seen["url"] = proxy.base_url
        response = httpx.post(
            f"{proxy.openai_base_url}/chat/completions",
            json=chat_body("hi"),
            timeout=30,
            headers={"authorization": f"Bearer {proxy.key}", **run_headers(run_id)},
        )
        seen["status"] = response.status_code

    resource = ProxyResource(recordings_dir=str(tmp_path / "recordings"), scripted_upstream_url=upstream.url)
    assert materialize([calls_the_model], resources={"proxy": resource}).success
    assert seen["status"] == 200 and seen["url"].startswith("http://127.0.0.2:")
    [record] = read_run(tmp_path / "recordings" / f"{run_id}.jsonl").records
    assert record["response"]["choices"][0]["message"]["content"] == "hi"
    with pytest.raises(httpx.ConnectError):  # stopped with the run
        httpx.get(f"{seen['url']}/health/liveliness")


# -- credentials: keep this test last, it checks what every test above left behind --------------
def test_no_credential_anywhere_under_trajhub_home(proxy, upstream, tmp_path):
    upstream.set_script([say("done"), say("done")])
    body_secret = "sk-body-" + "7" * 32
    run_id = make_run_id("scripted-model", "secrets", 0)
    leaky = anthropic_body(
        f"my env says ANTHROPIC_API_KEY={proxy.master_key}", metadata={"user_id": "u1", "api_key": body_secret}
    )
    assert post(proxy, "/v1/messages", leaky, run_id, **{"x-api-key": proxy.master_key}).status_code == 200
    assert post(proxy, "/v1/chat/completions", chat_body("hi"), run_id, **{"api-key": body_secret}).status_code == 200
    for served in upstream.served:  # upstream gets its own key, never the client's
        sent = served.request.headers.get("x-api-key") or served.request.headers.get("authorization", "")
        assert proxy.upstream_key in sent and proxy.master_key not in sent
    [first, _] = records(proxy, run_id)
    assert first["request"]["metadata"] == {"user_id": "u1", "api_key": "[REDACTED]"}
    assert "ANTHROPIC_API_KEY=[REDACTED]" in first["request"]["messages"][0]["content"]

    run = parse_run_id(run_id)
    load_runs(Store(proxy.home), [proxy.recording(run_id)], run.model_key, run.instance)
    secrets = [proxy.master_key, proxy.upstream_key, proxy.recordings_key, body_secret]
    checked = 0
    for path in proxy.home.rglob("*"):
        if not path.is_file():
            continue
        text = (
            pq.read_table(path).to_pandas().to_json() if path.suffix == ".parquet" else path.read_text(errors="replace")
        )
        for secret in secrets:
            assert secret not in text, f"{secret[:12]}... found in {path}"
        checked += 1
    assert checked >= 3  # recordings, proxy log, store tables
