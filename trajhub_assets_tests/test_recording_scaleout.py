"""The proxy scaled out: 2 uvicorn workers, and 2 replicas behind one round-robin address, each
recording into one directory with no shared counter. 50 concurrent clients, each one run
holding a conversation of sequential calls, must find every call recorded exactly once, under
its run, numbered in the order the client made them, with its own answer."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from trajhub_assets.recording.proxy_process import ProxyProcess, ProxyReplicas, scripted_upstream_env
from trajhub_assets.recording.raw_calls import read_run
from trajhub_assets.recording.run_id import make_run_id, run_headers
from trajhub_assets.recording.scripted_upstream import Reply, text_block

CLIENTS = 50
CALLS = 4  # per client, one after the other


def _echo(request) -> Reply:
    return Reply([text_block(f"echo {request.body['messages'][-1]['content']}")], chunk_delay=0.001)


def _body(client: int, messages: list[dict], stream: bool) -> tuple[str, dict]:
    if client % 2 == 0:
        body = {"model": "scripted-anthropic", "max_tokens": 256, "stream": stream, "messages": messages}
        return "/v1/messages", body
    system = [{"role": "system", "content": "You are a coding agent."}]
    return "/v1/chat/completions", {"model": "scripted-openai", "stream": stream, "messages": system + messages}


async def _conversation(http: httpx.AsyncClient, key: str, client: int, run_id: str) -> None:
    """One agent: each call resends the conversation so far plus its next message."""
    headers = {"authorization": f"Bearer {key}", **run_headers(run_id)}
    messages: list[dict] = []
    for call in range(CALLS):
        messages.append({"role": "user", "content": f"client{client}-call{call}"})
        path, body = _body(client, messages, stream=(client + call) % 2 == 1)
        async with http.stream("POST", path, json=body, headers=headers) as response:
            await response.aread()
            assert response.status_code == 200, response.text
        messages.append({"role": "assistant", "content": f"echo client{client}-call{call}"})


def _load(url: str, key: str, run_ids: list[str]) -> None:
    async def main():
        # No keep-alive: each call is a new connection, accepted by whichever process takes it,
        # so which process serves a run's next call does not depend on the pool's reuse.
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, timeout=180, limits=limits) as http:
            await asyncio.gather(*(_conversation(http, key, c, run_id) for c, run_id in enumerate(run_ids)))

    asyncio.run(main())


def _assert_recorded_in_order(recordings, run_ids: list[str], calls_served: int) -> tuple[Counter, int]:
    """Every call once, under its run, in its client's order. Returns the calls each recorder
    process wrote, and how many runs had calls written by more than one."""
    assert calls_served == CLIENTS * CALLS
    files = sorted(recordings.glob("*.jsonl"))
    assert len(files) == CLIENTS, [f.name for f in files]  # nothing unattributed, no stray run
    recorded_by: Counter = Counter()
    call_ids = set()
    mixed = 0
    for client, run_id in enumerate(run_ids):
        run = read_run(recordings / f"{run_id}.jsonl")
        assert not run.bad_lines and run.duplicates == 0
        assert [r["seq"] for r in run.records] == list(range(CALLS))
        assert [r["run_id"] for r in run.records] == [run_id] * CALLS
        sent = [r["request"]["messages"][-1]["content"] for r in run.records]
        assert sent == [f"client{client}-call{call}" for call in range(CALLS)]  # the client's order
        for record in run.records:
            assert record["status"] == "ok"
            assert f"echo {record['request']['messages'][-1]['content']}" in str(record["response"])
            recorded_by[record["recorded_by"]] += 1
            call_ids.add(record["call_id"])
        mixed += len({r["recorded_by"] for r in run.records}) > 1
    assert len(call_ids) == CLIENTS * CALLS
    return recorded_by, mixed


@pytest.mark.parametrize("layout", ["2 workers", "2 replicas"])
def test_fifty_clients_through_a_scaled_out_proxy_are_recorded_once_each_in_order(scripted_upstream, tmp_path, layout):
    scripted_upstream.set_script(_echo)
    served_before = scripted_upstream.calls
    env = scripted_upstream_env(scripted_upstream.url, "sk-upstream-scaleout-0000000000")
    recordings = tmp_path / "recordings"
    proxy = (
        ProxyProcess(recordings, env=env, workers=2, log_path=tmp_path / "logs" / "proxy.log")
        if layout == "2 workers"
        else ProxyReplicas(recordings, 2, env=env, log_dir=tmp_path / "logs")
    )
    run_ids = [make_run_id("scripted-model", f"scaleout-{client}", 0) for client in range(CLIENTS)]
    with proxy:
        _load(proxy.url, proxy.master_key, run_ids)
    recorded_by, mixed = _assert_recorded_in_order(recordings, run_ids, scripted_upstream.calls - served_before)
    # Both processes served calls, and many runs had calls served by each (measured: 42 to 47
    # of 50 runs): their order came from no one process.
    assert len(recorded_by) == 2 and min(recorded_by.values()) >= CLIENTS * CALLS // 10, recorded_by
    assert mixed >= CLIENTS // 5, (mixed, recorded_by)
