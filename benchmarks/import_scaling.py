"""Does `trajhub import mini-vela` keep up with plain JSON parsing, and stay linear in size?

Builds mini-vela raw recordings (one file per session, as mini-vela writes them) from the
Claude Code-like runs of merge_scaling.py: every call repeats the whole history, and every
call is there twice (mini-vela's sync and async hooks both log it; the copies differ only
in request_time), with the request shaped like the real recording in
../shared/data/minivela_sample (system prompt as cached text blocks, tools, model,
max_tokens, metadata). Then, per size, times
- parse: reading the files and json.loads of every line;
- import: `import_files(store, "mini-vela", files)` into a fresh store, what `trajhub
  import mini-vela` calls (without the Dagster instance it reports to).

Each time is the best of a few runs (--repeat; the import into a fresh store each time), after
a small warm-up import. Prints per size the MB, both times and their ratio, then the last line
    import_vs_parse_30=X import_vs_parse_120=Y per_mb_growth=Z
X, Y: import seconds over parse seconds at 30 and at 120 calls per session; Z: import seconds
per MB at 120 calls over the same at 30 calls (about 1 when the import is linear in input size;
below 1 as the files grow with the square of the calls while the distinct content they hold,
what the import stores, grows with the calls).

    python benchmarks/import_scaling.py [--quick] [--profile] [--repeat 2] [--dir DIR]

Default sizes are the issue's: 50 sessions x 30 calls (~110 MB) and 10 x 120 (~340 MB);
--quick: 8 x 30 and 2 x 120 (~18 and ~68 MB). --profile prints the import's top functions
by cumulative and by own time (cProfile; times under the profiler are longer).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import random
import shutil
import tempfile
import time
from pathlib import Path

from merge_scaling import session_lines

from trajhub_assets.interchange.sources import import_files
from trajhub_assets.store import Store

MODEL = "claude-sonnet-4-5-20250929"
RESULT_BYTES = 2000
SIZES = {False: ((30, 50), (120, 10)), True: ((30, 8), (120, 2))}  # --quick: (calls, sessions)


def minivela_line(record: dict, session_id: str, request_time: int) -> str:
    """One mini-vela line of a trajhub-shaped call record (merge_scaling's)."""
    request = dict(record["request"])
    request["model"] = MODEL
    for block in request["system"]:
        block.setdefault("cache_control", {"type": "ephemeral"})
    request["metadata"] = {}
    return json.dumps(
        {
            "session_id": session_id,
            "biz_id": "",
            "request_time": request_time,
            "request_body": request,
            "response_body": {"content": record["response"]["content"]},
        },
        ensure_ascii=False,
    )


def write_sessions(directory: Path, calls: int, sessions: int) -> list[Path]:
    """`sessions` mini-vela files of `calls` calls each (every call logged twice)."""
    rng = random.Random(calls)
    paths = []
    for session in range(sessions):
        session_id = f"bench-{calls}-{session:03d}"
        path = directory / f"raw_{session_id}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for step, line in enumerate(session_lines(session, calls, RESULT_BYTES, rng)):
                record = json.loads(line)
                at = 1_768_533_217_176 + 30_000 * step
                for copy in range(2):  # the sync hook, then the async one a few ms later
                    f.write(minivela_line(record, session_id, at + 3 * copy) + "\n")
        paths.append(path)
    return paths


def parse(paths: list[Path]) -> int:
    lines = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            lines += sum(1 for text in f if json.loads(text) is not None)
    return lines


def timed(fn, repeat: int) -> float:
    """The best of `repeat` runs: the machine may be busy with other work."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run_import(paths: list[Path], root: Path) -> list:
    return import_files(Store(root), "mini-vela", paths)


def profile_import(paths: list[Path], root: Path, top: int = 25) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    run_import(paths, root)
    profiler.disable()
    stats = pstats.Stats(profiler)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 x 30 and 2 x 120 calls instead of 50 x 30 and 10 x 120")
    parser.add_argument("--profile", action="store_true", help="also profile the import (cProfile) at each size")
    parser.add_argument("--dir", help="scratch directory (default: a temporary one, removed at the end)")
    parser.add_argument("--repeat", type=int, default=2, help="imports per size, best kept (parses: one more)")
    args = parser.parse_args()
    scratch = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="import-scaling-"))
    per_mb, ratio = {}, {}
    try:
        # Warm up: the first import loads the merge, Arrow's Parquet writer and DuckDB.
        warm = scratch / "warm-up"
        warm.mkdir(parents=True, exist_ok=True)
        run_import(write_sessions(warm, 3, 1), warm / "store")
        shutil.rmtree(warm)
        for calls, sessions in SIZES[args.quick]:
            files = scratch / f"files-{calls}"
            files.mkdir(parents=True, exist_ok=True)
            paths = write_sessions(files, calls, sessions)
            megabytes = sum(p.stat().st_size for p in paths) / 1e6
            parse_s = timed(lambda paths=paths: parse(paths), args.repeat + 1)
            store = scratch / f"store-{calls}"

            def fresh_import(paths=paths, store=store):
                shutil.rmtree(store, ignore_errors=True)
                run_import(paths, store)

            import_s = timed(fresh_import, args.repeat)
            per_mb[calls], ratio[calls] = import_s / megabytes, import_s / parse_s
            print(
                f"{sessions} sessions x {calls} calls: {megabytes:.1f} MB, "
                f"parse {parse_s:.2f} s ({parse_s / megabytes * 1e3:.2f} ms/MB), "
                f"import {import_s:.2f} s ({import_s / megabytes * 1e3:.2f} ms/MB), "
                f"import/parse {import_s / parse_s:.2f}",
                flush=True,
            )
            if args.profile:
                shutil.rmtree(store, ignore_errors=True)
                profile_import(paths, store)
            shutil.rmtree(files, ignore_errors=True)
            shutil.rmtree(store, ignore_errors=True)
    finally:
        if not args.dir:
            shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"import_vs_parse_30={ratio[30]:.2f} import_vs_parse_120={ratio[120]:.2f} "
        f"per_mb_growth={per_mb[120] / per_mb[30]:.2f}"
    )


if __name__ == "__main__":
    main()
