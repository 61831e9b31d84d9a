"""How fast is the release's secret scan, against the one regex it stands for?

scan_text looks for key-shaped strings in every text of every row of a release. Measured
on text like a release's (prose and code, a few real key shapes, long base64 signatures of
thinking blocks), in one run, against `_SECRET.finditer` over the same text (every pattern
tried at every position), and over rows with signed thinking whose base64 is skipped.

Then, as an import scans them, 120 calls of one conversation (each repeats the history, as
clients send it): one SecretScanner over all of them, which searches each distinct text once,
against scan_text over every text of every call (the scan before issue 14).

Prints MB/s of each and the history figures, then the last line
    scan_vs_full_regex=X rows_mb_per_s=Y
X: scan_text time over the full pattern's time on the same text (below 1: faster);
Y: scan_rows throughput over rows with 4 MB of thinking signatures.

    python benchmarks/secret_scan.py [--mb 8]
"""

from __future__ import annotations

import argparse
import base64
import random
import time

from trajhub_assets.release.secrets import _SECRET, SecretScanner, scan_rows, scan_text

WORDS = (
    "def return self value import from test error path file line data merge call run assert "
    "None True False for in if else while print list dict str int token key secret"
).split()


def sample_text(megabytes: float, rng: random.Random) -> str:
    parts, size = [], 0
    while size < megabytes * 1e6:
        piece = " ".join(rng.choice(WORDS) for _ in range(200))
        if rng.random() < 0.05:
            piece += " sk-ant-" + "".join(rng.choice("abcdefghijk0123456789") for _ in range(40))
        if rng.random() < 0.2:
            piece += " " + base64.b64encode(rng.randbytes(3000)).decode()
        parts.append(piece)
        size += len(piece)
    return "\n".join(parts)


def history_calls(calls: int, rng: random.Random) -> list[dict]:
    """Call records of one conversation: call k repeats the k exchanges before it."""
    history, records = [{"role": "user", "content": sample_text(0.002, rng)}], []
    for k in range(calls):
        records.append({"call_id": f"c{k}", "request": {"messages": list(history)}})
        history += [{"role": "assistant", "content": f"step {k}"}, {"role": "user", "content": sample_text(0.002, rng)}]
    return records


def every_text(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from every_text(item)
    elif isinstance(value, list):
        for item in value:
            yield from every_text(item)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=8)
    args = parser.parse_args()
    rng = random.Random(7)
    text = sample_text(args.mb, rng)
    ours = timed(lambda: list(scan_text(text)))
    full = timed(lambda: list(_SECRET.finditer(text)))
    assert len(list(scan_text(text))) == len(list(_SECRET.finditer(text)))  # the same hits
    blob = base64.b64encode(rng.randbytes(3_000_000)).decode()
    rows = [
        {
            "messages": [
                {
                    "content": text[:1_000_000],
                    "thinking_blocks": [{"type": "thinking", "thinking": "plan", "signature": blob, "data": None}],
                }
            ]
        }
    ]
    row_mb = (len(blob) + 1_000_000) / 1e6
    rows_seconds = timed(lambda: scan_rows("bench", rows))
    mb = len(text) / 1e6
    print(
        f"scan_text: {mb / ours:.1f} MB/s; full pattern: {mb / full:.1f} MB/s; "
        f"rows with signatures: {row_mb / rows_seconds:.1f} MB/s"
    )
    calls = history_calls(120, rng)
    history_mb = sum(len(t) for c in calls for t in every_text(c)) / 1e6
    scanner = SecretScanner()
    once = timed(lambda: [scanner.value(call) for call in calls])
    again = timed(lambda: [list(scan_text(t)) for c in calls for t in every_text(c)])
    print(
        f"120 calls sharing a history ({history_mb:.1f} MB of text, {scanner.chars_scanned / 1e6:.2f} MB distinct): "
        f"one scanner {once:.3f} s, every text of every call {again:.3f} s ({again / once:.0f}x)"
    )
    print(f"scan_vs_full_regex={ours / full:.3f} rows_mb_per_s={row_mb / rows_seconds:.1f}")


if __name__ == "__main__":
    main()
