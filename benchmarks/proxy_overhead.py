"""What the trajhub logger costs: proxy latency with it vs the same proxy with no callback,
and the store's bytes for a 60-call session vs the raw JSONL.

    .venv/bin/python benchmarks/proxy_overhead.py [--calls 300] [--clients 50]

Starts the scripted upstream and two real proxies from proxy/litellm_config.yaml, one with
the callbacks line removed. Every call is a mid-size agent request (system prompt, tools,
a 20-message conversation), alternating Anthropic messages / OpenAI chat and plain / stream.
1. sequential: one client; each request goes to both proxies back to back, so drift on a
   shared machine hits both alike;
2. concurrent: N clients at once, rounds alternating between the proxies (latency here is
   mostly queueing, so it measures the logger's CPU cost per call);
3. a 60-call session through the logger, loaded into a store.
The last line reads `logger_overhead_ratio=X store_ratio=Y`: X is the mean of the two
phases' p50 latency ratios (logger / no callback), Y is stored bytes / JSONL bytes.
Targets: X < 1.10, Y < 0.15.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from trajhub_assets.recording.proxy_process import (
    DEFAULT_CONFIG,
    ProxyProcess,
    scripted_upstream_env,
)
from trajhub_assets.recording.raw_calls import load_runs
from trajhub_assets.recording.run_id import make_run_id, run_headers
from trajhub_assets.recording.scripted_upstream import (
    Reply,
    ScriptedUpstream,
    text_block,
    thinking_block,
    tool_use_block,
)
from trajhub_assets.store import Store

RNG = random.Random(7)
SYSTEM = "You are a careful coding agent working in a repository. " * 150  # ~8 kB
TOOLS = [
    {
        "name": f"tool_{i}",
        "description": "Does one thing well. " * 20,
        "input_schema": {"type": "object", "properties": {"arg": {"type": "string"}}},
    }
    for i in range(8)
]
CHAT_TOOLS = [
    {
        "type": "function",
        "function": {"name": t["name"], "description": t["description"], "parameters": t["input_schema"]},
    }
    for t in TOOLS
]


def _text(size: int) -> str:
    return "".join(RNG.choice("abcdefghij klmnop\n") for _ in range(size))


def conversation(turns: int) -> list[dict]:
    """User query, then (assistant tool call, tool result) pairs, in Anthropic shape."""
    messages = [{"role": "user", "content": "Fix the failing pagination test."}]
    for turn in range(turns):
        messages.append(
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": f"Step {turn}: look around."},
                    {"type": "tool_use", "id": f"toolu_{turn}", "name": "tool_0", "input": {"arg": f"ls {turn}"}},
                ],
            }
        )
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": f"toolu_{turn}", "content": _text(RNG.randint(500, 2500))}
                ],
            }
        )
    return messages


def as_chat(messages: list[dict]) -> list[dict]:
    chat = [{"role": "system", "content": SYSTEM}]
    for message in messages:
        if isinstance(message["content"], str):
            chat.append(message)
        elif message["role"] == "assistant":
            call = message["content"][1]
            chat.append(
                {
                    "role": "assistant",
                    "content": message["content"][0]["text"],
                    "tool_calls": [
                        {
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["name"], "arguments": '{"arg": "x"}'},
                        }
                    ],
                }
            )
        else:
            result = message["content"][0]
            chat.append({"role": "tool", "tool_call_id": result["tool_use_id"], "content": result["content"]})
    return chat


MID_CONVERSATION = conversation(10)  # 21 messages, ~15 kB


def request(index: int) -> tuple[str, dict]:
    stream = index % 4 >= 2
    if index % 2 == 0:
        return "/v1/messages", {
            "model": "scripted-anthropic",
            "max_tokens": 4096,
            "stream": stream,
            "system": SYSTEM,
            "tools": TOOLS,
            "messages": MID_CONVERSATION,
        }
    return "/v1/chat/completions", {
        "model": "scripted-openai",
        "stream": stream,
        "tools": CHAT_TOOLS,
        "messages": as_chat(MID_CONVERSATION),
    }


def reply(_request) -> Reply:
    return Reply(
        [
            thinking_block("Think about the offset. " * 8, "c2lnbmF0dXJl" * 8),
            text_block("Let me look at the pager. " * 4),
            tool_use_block("toolu_x", "tool_0", {"arg": "cat pager/paginate.py"}),
        ]
    )


async def call(http: httpx.AsyncClient, proxy: ProxyProcess, index: int, run_id: str) -> float:
    path, body = request(index)
    headers = {"authorization": f"Bearer {proxy.master_key}", **run_headers(run_id)}
    started = time.perf_counter()
    async with http.stream("POST", f"{proxy.url}{path}", json=body, headers=headers) as response:
        await response.aread()
        if response.status_code != 200:
            raise RuntimeError(f"{path}: HTTP {response.status_code}: {response.text[:300]}")
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (Linux): robust to other load on a shared machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    return statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))]


async def sequential(http, proxies, calls: int, run_id: str) -> dict[str, list[float]]:
    """Each request goes to both proxies back to back, in alternating order."""
    latencies = {name: [] for name in proxies}
    for index in range(calls):
        for name, proxy in proxies.items() if index % 2 == 0 else reversed(proxies.items()):
            latencies[name].append(await call(http, proxy, index, run_id))
    return latencies


async def concurrent(http, proxies, clients: int, rounds: int, run_id: str) -> dict[str, list[float]]:
    latencies = {name: [] for name in proxies}
    for round_ in range(rounds):
        for name, proxy in proxies.items() if round_ % 2 == 0 else reversed(proxies.items()):
            latencies[name] += await asyncio.gather(
                *(call(http, proxy, round_ * clients + c, run_id) for c in range(clients))
            )
    return latencies


async def session(http, proxy: ProxyProcess, run_id: str, calls: int = 60) -> None:
    """An agent loop: every call resends the conversation, one tool step longer."""
    messages = conversation(0)
    headers = {"authorization": f"Bearer {proxy.master_key}", **run_headers(run_id)}
    for step in range(calls):
        body = {
            "model": "scripted-anthropic",
            "max_tokens": 4096,
            "stream": step % 2 == 1,
            "system": SYSTEM,
            "tools": TOOLS,
            "messages": messages,
        }
        async with http.stream("POST", f"{proxy.url}/v1/messages", json=body, headers=headers) as response:
            await response.aread()
        messages = messages + conversation(step + 1)[-2:]


def report(phase: str, latencies: dict[str, list[float]]) -> float:
    (l50, l95), (p50, p95) = percentiles(latencies["logger"]), percentiles(latencies["plain"])
    print(
        f"{phase:<11} n={len(latencies['logger'])}/proxy  no callback p50 {p50 * 1e3:6.1f} ms  "
        f"p95 {p95 * 1e3:6.1f} ms | logger p50 {l50 * 1e3:6.1f} ms  p95 {l95 * 1e3:6.1f} ms | "
        f"ratio p50 {l50 / p50:.3f}  p95 {l95 / p95:.3f}"
    )
    return l50 / p50


async def main(calls: int, clients: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plain_config = tmp / "plain.yaml"
        plain_config.write_text(DEFAULT_CONFIG.read_text().replace("  callbacks: trajectory_logger.instance\n", ""))
        upstream = ScriptedUpstream(reply).start()
        env = scripted_upstream_env(upstream.url, "sk-bench-upstream-key-0000000000")
        proxies = {
            "logger": ProxyProcess(tmp / "logger" / "recordings", env=env),
            "plain": ProxyProcess(tmp / "plain" / "recordings", config=plain_config, env=env),
        }
        try:
            await asyncio.gather(*(asyncio.to_thread(p.start) for p in proxies.values()))
            limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
            async with httpx.AsyncClient(timeout=120, limits=limits) as http:
                warm = make_run_id("bench", "warmup", 0)
                await sequential(http, proxies, 20, warm)
                cpu = {name: cpu_seconds(p.process.pid) for name, p in proxies.items()}
                ratios = [
                    report("sequential", await sequential(http, proxies, calls, make_run_id("bench", "seq", 0))),
                    report(
                        f"{clients} clients",
                        await concurrent(http, proxies, clients, rounds, make_run_id("bench", "conc", 0)),
                    ),
                ]
                per_call = {
                    name: (cpu_seconds(p.process.pid) - cpu[name]) / (calls + clients * rounds)
                    for name, p in proxies.items()
                }
                print(
                    f"proxy CPU per call: no callback {per_call['plain'] * 1e3:.1f} ms, logger "
                    f"{per_call['logger'] * 1e3:.1f} ms, ratio {per_call['logger'] / per_call['plain']:.3f}"
                )
                run_id = make_run_id("bench", "session", 0)
                await session(http, proxies["logger"], run_id)
            jsonl = proxies["logger"].recordings_dir / f"{run_id}.jsonl"
            loaded = load_runs(Store(tmp / "store"), [jsonl], "bench", "session")
        finally:
            for proxy in proxies.values():
                proxy.stop()
            upstream.stop()
    store_ratio = loaded.stored_bytes / loaded.raw_bytes
    print(
        f"60-call session: JSONL {loaded.raw_bytes / 1e6:.2f} MB -> store {loaded.stored_bytes / 1e3:.1f} kB "
        f"({loaded.blobs} blobs)"
    )
    print(f"logger_overhead_ratio={statistics.mean(ratios):.3f} store_ratio={store_ratio:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="sequential calls per proxy")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients")
    parser.add_argument("--rounds", type=int, default=8, help="concurrent rounds per proxy")
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.clients, args.rounds))
