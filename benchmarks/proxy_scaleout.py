"""Throughput of the recording proxy scaled out: 1, 2 and 4 uvicorn workers, 2 replicas behind
one round-robin front (trajhub_assets/recording/front.py), and straight to the upstream, with the
same 50 clients, in one run; each layout's recordings checked call by call.

    .venv/bin/python benchmarks/proxy_scaleout.py [--clients 50] [--calls 4] [--rounds 3] [--layouts direct,1w,2w,4w,2r]

Each client is one run: `--calls` sequential calls, each the mid-size agent request of
proxy_overhead.py (system prompt, tools, a 20-message conversation; Anthropic messages or
OpenAI chat, plain or stream) with the client's token for that call in its first message. The
scripted upstream answers with the token. Every layout is started at once; after a warm-up,
`--rounds` rounds each run the load once on every layout in turn, so load from other jobs on
the machine hits them alike. A layout's req/s is its calls / its wall time; its proxy CPU per
call sums every process of the layout (workers, replicas, front).
Then each run's recording must hold every call once, under its run, numbered in the client's
order, answered with its own token: the line reports lost / duplicated / misattributed /
misordered counts (all 0, or the script exits 1).

The last line reads `workers_2_vs_1=A workers_4_vs_1=B replicas_2_vs_1=C proxy_1_vs_direct=D`
(req/s ratios). The upstream runs in a process of its own, the clients in this one; on a 2-core
machine the proxy's workers compete with both and with each other, so expect overhead more than
speedup. Each call opens a new connection unless `--keepalive`: uvicorn's workers share one
listening socket, and kept-alive connections stay where they were accepted, often all on one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from proxy_overhead import reply as overhead_reply
from proxy_overhead import request as overhead_request

from trajhub_assets.recording.proxy_process import ProxyProcess, ProxyReplicas, free_port, scripted_upstream_env
from trajhub_assets.recording.raw_calls import read_run
from trajhub_assets.recording.run_id import make_run_id, run_headers
from trajhub_assets.recording.scripted_upstream import Reply, ScriptedUpstream, text_block

LAYOUTS = {"direct": "straight to the upstream", "1w": "1 worker", "2w": "2 workers", "4w": "4 workers"}
LAYOUTS["2r"] = "2 replicas (1 worker each) behind the front"


def _first_user_text(body: dict) -> str:
    return next(m["content"] for m in body["messages"] if m["role"] == "user" and isinstance(m["content"], str))


def reply(scripted) -> Reply:
    """proxy_overhead's answer, with the call's token in its text: checkable per call."""
    blocks = list(overhead_reply(scripted).blocks)
    blocks[1] = text_block(f"echo {_first_user_text(scripted.body).split(':')[0]}")
    return Reply(blocks)


def call_request(client: int, call: int, calls: int) -> tuple[str, dict]:
    path, body = overhead_request(client * calls + call)
    messages = [dict(m) for m in body["messages"]]
    first = next(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[first]["content"] = f"client{client}-call{call}: {messages[first]['content']}"
    return path, dict(body, messages=messages)


async def conversation(http, url: str, key: str, run_id: str, client: int, calls: int) -> list[float]:
    headers = {"authorization": f"Bearer {key}", **run_headers(run_id)}
    latencies = []
    for call in range(calls):  # one after the other, as an agent does
        path, body = call_request(client, call, calls)
        started = time.perf_counter()
        async with http.stream("POST", f"{url}{path}", json=body, headers=headers) as response:
            await response.aread()
            if response.status_code != 200:
                raise RuntimeError(f"{path}: HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        latencies.append(time.perf_counter() - started)
    return latencies


async def load(url: str, key: str, run_ids: list[str], calls: int, keepalive: bool) -> tuple[float, list[float]]:
    """(wall seconds, every call's latency) for one conversation per run id, all at once."""
    # Kept-alive connections stay on the worker that accepted them, and one worker may accept
    # them all; a new connection per call goes to whichever worker is free.
    limits = httpx.Limits(max_connections=len(run_ids), max_keepalive_connections=len(run_ids) if keepalive else 0)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        started = time.perf_counter()
        per_client = await asyncio.gather(
            *(conversation(http, url, key, run_id, c, calls) for c, run_id in enumerate(run_ids))
        )
    return time.perf_counter() - started, [latency for client in per_client for latency in client]


@dataclass
class Check:
    lost: int = 0
    duplicated: int = 0
    misattributed: int = 0
    misordered: int = 0
    runs_served_by_several: int = 0


def check(recordings: Path, run_ids: list[str], calls: int) -> Check:
    found = Check()
    for client, run_id in enumerate(run_ids):
        path = recordings / f"{run_id}.jsonl"
        run = read_run(path) if path.exists() else None
        records = run.records if run else []
        tokens = [_first_user_text(r["request"]).split(":")[0] for r in records]
        expected = [f"client{client}-call{call}" for call in range(calls)]
        found.lost += len(set(expected) - set(tokens)) + (len(run.bad_lines) if run else 0)
        found.duplicated += len(tokens) - len(set(tokens)) + (run.duplicates if run else 0)
        found.misattributed += sum(
            r["run_id"] != run_id or token not in expected or f"echo {token}" not in json.dumps(r["response"])
            for r, token in zip(records, tokens, strict=True)
        )
        found.misordered += tokens != expected and sorted(tokens) == sorted(expected)
        found.runs_served_by_several += len({r["recorded_by"] for r in records}) > 1
    found.misattributed += (recordings / "_unattributed.jsonl").exists()
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of every process in these process groups, children included (Linux)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) in pids or int(entry) in pids:  # fields[2]: the process group
            total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def start_layout(layout: str, home: Path, env: dict) -> ProxyProcess | ProxyReplicas:
    if layout == "2r":
        return ProxyReplicas(home / "recordings", 2, env=env, log_dir=home / "logs").start()
    workers = int(layout.rstrip("w"))
    return ProxyProcess(home / "recordings", env=env, workers=workers, log_path=home / "logs" / "proxy.log").start()


def pids_of(proxy) -> list[int]:
    if isinstance(proxy, ProxyReplicas):
        return [r.process.pid for r in proxy.replicas] + [proxy.front.pid]
    return [proxy.process.pid]


def _serve_upstream(port: int, stop) -> None:
    """In a process of its own: the upstream's CPU is not the clients'."""
    upstream = ScriptedUpstream(reply, port=port).start()
    stop.wait()
    upstream.stop()


def start_upstream() -> tuple[str, multiprocessing.Process, object]:
    port, context = free_port(), multiprocessing.get_context("fork")
    stop = context.Event()
    process = context.Process(target=_serve_upstream, args=(port, stop), daemon=True)
    process.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return url, process, stop
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("the scripted upstream did not start")


@dataclass
class Measured:
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0
    found: Check = field(default_factory=Check)


def measure(proxy, url: str, key: str, home: Path, clients: int, calls: int, keepalive: bool, into: Measured):
    """One round of the load on one layout, its recordings checked."""
    run_ids = [make_run_id("bench", f"client-{c}", 0) for c in range(clients)]
    cpu = cpu_seconds(pids_of(proxy)) if proxy else 0.0
    wall, latencies = asyncio.run(load(url, key, run_ids, calls, keepalive))
    into.wall += wall
    into.latencies += latencies
    if proxy is not None:
        into.cpu += cpu_seconds(pids_of(proxy)) - cpu
        found = check(home / "recordings", run_ids, calls)
        for name in vars(found):
            setattr(into.found, name, getattr(into.found, name) + getattr(found, name))


def main(clients: int, calls: int, layouts: list[str], rounds: int, keepalive: bool) -> int:
    print(
        f"{clients} clients x {calls} sequential calls x {rounds} rounds, "
        f"{'kept-alive' if keepalive else 'a new'} connection per call; "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    )
    measured = {layout: Measured() for layout in layouts}
    with tempfile.TemporaryDirectory() as tmp:
        upstream_url, upstream, stop_upstream = start_upstream()
        env = scripted_upstream_env(upstream_url, "sk-bench-upstream-key-0000000000")
        homes = {layout: Path(tmp) / layout for layout in layouts}
        proxies: dict[str, ProxyProcess | ProxyReplicas | None] = {"direct": None}
        try:
            # All at once, then rounds that take turns: load from other jobs on the machine
            # drifts, and hits every layout alike.
            with ThreadPoolExecutor(len(layouts)) as pool:
                started = {
                    name: pool.submit(start_layout, name, homes[name], env) for name in layouts if name != "direct"
                }
                for layout, future in started.items():  # every one that started is stopped below
                    proxies[layout] = future.result() if future.exception() is None else None
                for future in started.values():
                    future.result()  # a layout that did not start: its error
            targets = {
                layout: (upstream_url, "unused") if proxy is None else (proxy.url, proxy.master_key)
                for layout, proxy in proxies.items()
            }
            warm = [make_run_id("bench", f"warm-{c}", 0) for c in range(clients)]
            for layout in layouts:  # litellm's first calls are slow
                asyncio.run(load(*targets[layout], warm, 1, keepalive))
            for round_ in range(rounds):
                for layout in layouts[round_ % len(layouts) :] + layouts[: round_ % len(layouts)]:
                    proxy, into = proxies[layout], measured[layout]
                    measure(proxy, *targets[layout], homes[layout], clients, calls, keepalive, into)
        finally:
            for proxy in proxies.values():
                if proxy is not None:
                    proxy.stop()
            stop_upstream.set()
            upstream.join(15)

    rates, failed = {}, False
    for layout, m in measured.items():
        rates[layout] = len(m.latencies) / m.wall
        ordered = sorted(m.latencies)
        line = (
            f"{LAYOUTS[layout]:<44} {rates[layout]:6.1f} req/s  p50 {statistics.median(ordered) * 1e3:6.0f} ms"
            f"  p95 {ordered[int(0.95 * (len(ordered) - 1))] * 1e3:6.0f} ms"
        )
        if layout != "direct":
            found = m.found
            failed |= any((found.lost, found.duplicated, found.misattributed, found.misordered))
            line += (
                f"  proxy CPU {m.cpu / len(m.latencies) * 1e3:5.1f} ms/call ({m.cpu / m.wall:.2f} cores)"
                f"  lost {found.lost} duplicated {found.duplicated} misattributed {found.misattributed} "
                f"misordered {found.misordered} (runs served by >1 process: {found.runs_served_by_several}"
                f"/{clients * rounds})"
            )
        print(line)

    def ratio(a: str, b: str) -> str:
        return f"{rates[a] / rates[b]:.2f}" if a in rates and b in rates else "-"

    print(
        f"workers_2_vs_1={ratio('2w', '1w')} workers_4_vs_1={ratio('4w', '1w')} "
        f"replicas_2_vs_1={ratio('2r', '1w')} proxy_1_vs_direct={ratio('1w', 'direct')}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--calls", type=int, default=4, help="sequential calls per client (one run each) per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the layouts taking turns in each")
    parser.add_argument("--layouts", default="direct,1w,2w,4w,2r", help=f"comma-separated, of {','.join(LAYOUTS)}")
    parser.add_argument("--keepalive", action="store_true", help="reuse connections (default: one per call)")
    args = parser.parse_args()
    sys.exit(main(args.clients, args.calls, args.layouts.split(","), args.rounds, args.keepalive))
