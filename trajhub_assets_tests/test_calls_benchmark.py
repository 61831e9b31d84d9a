"""benchmarks/calls_scaling.py, smallest: every stage timed at both run lengths, the judge at
<= 2 requests for a run that fits, and the last line in its documented format."""

import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_calls_scaling_prints_a_growth_ratio_per_stage():
    done = subprocess.run(
        [sys.executable, "calls_scaling.py", "--instances", "1"],
        cwd=BENCHMARKS,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    last = re.fullmatch(
        r"merge_per_mb_growth=(\S+) rules_per_step_growth=(\S+) "
        r"judge_per_step_growth=(\S+) pairs_per_step_growth=(\S+)",
        lines[-1],
    )
    assert last and all(float(g) > 0 for g in last.groups()), lines[-1]
    requests = [float(r) for r in re.findall(r"([\d.]+) judge requests per run", done.stdout)]
    assert len(requests) == 2 and requests[0] <= 2.0 < requests[1]  # 120 steps: chunked past 40 per request
