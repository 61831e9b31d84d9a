"""How fast is the release's secret scan, against the one regex it stands for?

scan_text looks for key-shaped strings in every text of every row of a release. Measured
on text like a release's (prose and code, a few real key shapes, long base64 signatures of
thinking blocks), in one run, against `_SECRET.finditer` over the same text (every pattern
tried at every position), and over rows with signed thinking whose base64 is skipped.

Prints MB/s of each, then the last line
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

from trajhub_assets.release.secrets import _SECRET, scan_rows, scan_text

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
    print(f"scan_vs_full_regex={ours / full:.3f} rows_mb_per_s={row_mb / rows_seconds:.1f}")


if __name__ == "__main__":
    main()
