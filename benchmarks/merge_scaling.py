"""Does merge_calls stay linear in the size of the calls?

Generates Claude Code-like runs (Anthropic messages: a system prompt, a few tools, each
step an assistant tool call answered by a ~2 KB tool result; every call repeats the whole
history), writes each call as a JSON line, then times, per run, json.loads of the lines
("parse") and merge_calls on the parsed records ("merge"). Runs are done one at a time so
memory stays at one run's worth.

Prints seconds per MB of JSON lines for 30 and 120 calls per run, then the last line
    merge_vs_parse=X per_mb_growth=Y
X: merge time over parse time (the larger of the two sizes); Y: merge seconds per MB at
120 calls over the same at 30 calls (about 1 when the merge is linear).

    python benchmarks/merge_scaling.py [--sessions 50] [--result-bytes 2000]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time

from trajhub_assets.merge.merge import merge_calls

WORDS = (
    "def return self value import from test error path file line data merge call run "
    "assert None True False for in if else while print list dict str int"
).split()


def session_lines(session: int, calls: int, result_bytes: int, rng: random.Random) -> list[str]:
    """The JSON lines of one run of `calls` calls."""
    pool = " ".join(rng.choice(WORDS) for _ in range(result_bytes)).encode()[: result_bytes * 4].decode()
    system = f"You are a coding agent (session {session}). " + pool[:1500]
    tools = [
        {
            "name": name,
            "description": pool[i * 100 : (i + 1) * 100],
            "input_schema": {"type": "object", "properties": {"arg": {"type": "string"}}, "required": ["arg"]},
        }
        for i, name in enumerate(["Read", "Bash", "Edit", "Grep", "Write"])
    ]
    messages = [{"role": "user", "content": [{"type": "text", "text": f"Fix the bug, session {session}."}]}]
    lines = []
    for step in range(calls):
        offset = rng.randrange(len(pool) - result_bytes)
        response = {
            "content": [
                {"type": "thinking", "thinking": pool[offset : offset + 200], "signature": "sig"},
                {"type": "text", "text": f"Step {step}: let me look."},
                {
                    "type": "tool_use",
                    "id": f"toolu_{session}_{step}",
                    "name": "Bash",
                    "input": {"arg": f"grep -n '{pool[offset : offset + 30]}' src/file_{step}.py"},
                },
            ],
            "stop_reason": "tool_use",
        }
        request = {
            "model": "m",
            "system": [{"type": "text", "text": system}],
            "tools": tools,
            "messages": messages,
            "max_tokens": 8000,
        }
        lines.append(
            json.dumps(
                {
                    "run_id": f"run-{session}",
                    "call_id": f"call-{session}-{step}",
                    "seq": step,
                    "started_at": 1000.0 + step,
                    "ended_at": 1000.5 + step,
                    "wire_format": "anthropic_messages",
                    "call_kind": "agent",
                    "request": request,
                    "response": response,
                    "status": "ok",
                    "error": None,
                },
                ensure_ascii=False,
            )
        )
        # The client drops thinking from history it sends back, as Claude Code does for older turns.
        messages = messages + [
            {"role": "assistant", "content": response["content"][1:]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": f"toolu_{session}_{step}",
                        "content": pool[offset : offset + result_bytes],
                    }
                ],
            },
        ]
    return lines


def measure(sessions: int, calls: int, result_bytes: int) -> tuple[float, float, float]:
    """(megabytes, parse seconds, merge seconds) over `sessions` runs."""
    rng = random.Random(calls)
    megabytes = parse_s = merge_s = 0.0
    for session in range(sessions):
        lines = session_lines(session, calls, result_bytes, rng)
        megabytes += sum(len(line.encode()) for line in lines) / 1e6
        gc.collect()
        start = time.perf_counter()
        records = [json.loads(line) for line in lines]
        parse_s += time.perf_counter() - start
        gc.collect()
        start = time.perf_counter()
        conversations = merge_calls(records, model="m", instance="i", attempt=0)
        merge_s += time.perf_counter() - start
        assert len(conversations) == 1 and len(conversations[0]["messages"]) == 2 * calls + 1
    return megabytes, parse_s, merge_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--result-bytes", type=int, default=2000)
    args = parser.parse_args()
    per_mb, ratios = {}, []
    for calls in (30, 120):
        megabytes, parse_s, merge_s = measure(args.sessions, calls, args.result_bytes)
        per_mb[calls] = merge_s / megabytes
        ratios.append(merge_s / parse_s)
        print(
            f"{args.sessions} sessions x {calls} calls: {megabytes:.1f} MB, "
            f"parse {parse_s:.2f} s ({parse_s / megabytes * 1e3:.2f} ms/MB), "
            f"merge {merge_s:.2f} s ({merge_s / megabytes * 1e3:.2f} ms/MB), "
            f"merge/parse {merge_s / parse_s:.2f}",
            flush=True,
        )
    print(f"merge_vs_parse={max(ratios):.2f} per_mb_growth={per_mb[120] / per_mb[30]:.2f}")


if __name__ == "__main__":
    main()
