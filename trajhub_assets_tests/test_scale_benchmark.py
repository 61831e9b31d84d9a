"""The scale benchmark (benchmarks/scale_pipeline.py) in its --quick form: every stage runs
through Dagster and produces rows, and the last line keeps its documented format."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trajhub_assets.merge.assets import merge_partition
from trajhub_assets.merge.schema import (
    MERGED_TRAJECTORIES,
    conversations_to_table,
    table_to_conversations,
)
from trajhub_assets.rewards.assets import instance_median_steps
from trajhub_assets.rewards.judge import LIMITS, STEP_SCHEMA, read_answer, step_requests
from trajhub_assets.rewards.rules import build_run, median_steps, trajectory_lengths
from trajhub_assets.scaffolds.baselines import judge_answer
from trajhub_assets_tests.test_rules import assistant, call, conversation, result

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from synthetic_runs import model_profiles, run_records, task_records  # noqa: E402 (a script beside the package)

LAST_LINE = re.compile(
    r"^trajectories_per_s=(\d+\.\d+) slowest_stage_per_s=(\d+\.\d+) "
    r"judge_requests_per_trajectory=(\d+\.\d+) backfill_batched_vs_per_partition=(\d+\.\d+)$"
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "scale_pipeline.py"), "--quick", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root, done.stdout.strip().splitlines()


def last_line(lines: list[str]) -> re.Match:
    line = next(line for line in reversed(lines) if line.startswith("trajectories_per_s="))
    match = LAST_LINE.match(line)
    assert match, line
    return match


def test_last_line_has_every_figure(quick_run):
    _, lines = quick_run
    assert lines[-1].startswith("trajectories_per_s=")
    figures = [float(f) for f in last_line(lines).groups()]
    assert all(f > 0 for f in figures), figures


def test_each_stage_is_compared_with_dagsters_floor(quick_run):
    _, lines = quick_run
    floor_row = next(line for line in lines if line.startswith("dagster floor (no-op body)"))
    assert columns(floor_row)[:3] == ["2", "8", "8"]  # the same batched runs as the stages: 2 models x 4
    floor = float(re.search(r"Dagster's floor: (\d+\.\d+) partitions/s", "\n".join(lines)).group(1))
    compared = {line.split()[0]: line for line in lines if " x floor; target >= " in line}
    assert set(compared) >= {"merged_trajectories", "rule_rewards", "trajectory_rewards", "preference_pairs"}
    slowest = float(last_line(lines).group(2))
    rates = [float(re.search(r"(\d+\.\d+) traj/s", line).group(1)) for line in compared.values()]
    assert slowest <= max(rates) and floor > 0


def columns(line: str) -> list[str]:
    """runs, partitions, trajectories, wall s, ... of a table row (the name is 44 wide)."""
    return line[45:].split()


def test_every_stage_produced_rows(quick_run):
    root, lines = quick_run
    rows = next(line for line in lines if line.startswith("rows: "))
    counts = dict(re.findall(r"(\w+)=(\d+)", rows.split(", release=")[0]))
    # 2 models x 4 instances, plus the backfilled model's 4 runs
    assert int(counts["trajectory_rewards"]) == 12
    assert all(int(n) > 0 for n in counts.values()), rows
    manifest = json.loads(next((root / "home" / "releases").glob("*/*/manifest.json")).read_text())
    assert manifest["rows"]["trajectories"] == 8 and manifest["rows"]["step_rewards"] > 0


def test_judge_stage_split_into_live_and_cached_calls(quick_run):
    _, lines = quick_run
    judge = [line for line in lines if line.startswith("judge_rewards ") and "judge requests" in line]
    live, cached = (int(re.search(r"(\d+) judge requests", line).group(1)) for line in judge)
    assert live > 0 and cached == 0  # the cache fill matched the judge's own keys


def test_backfill_batched_and_per_partition_extrapolated(quick_run):
    _, lines = quick_run
    batched = next(line for line in lines if ": batched" in line)
    per_partition = next(line for line in lines if ": one run per partition" in line)
    assert columns(batched)[:2] == ["1", "4"]  # 4 instances in one run
    assert columns(per_partition)[:2] == ["4", "4"]
    assert "EXTRAPOLATED x2.0 from a random sample of 2 partitions" in per_partition


def test_baseline_judge_answers_a_step_whose_arguments_were_truncated():
    """Found by the benchmark: a long Write shortened in the judge prompt is no JSON any more."""
    content = "x" * (LIMITS["assistant"] + 100)
    conv = conversation(assistant("", call("c1", "write_file", path="src/a.py", content=content)), result("c1"))
    [(request, _)] = step_requests(build_run([conv]), [conv], {"user_query": ["Fix it."]}, 40, 150_000)
    assert "characters truncated" in request.messages[1]["content"]
    body = {"messages": list(request.messages), "response_format": request.response_format()}
    [verdict] = read_answer(json.dumps(judge_answer(body)), request)[0].values()
    assert set(verdict) == {"step_id", *STEP_SCHEMA["properties"]}


def test_instance_median_reads_the_instance_of_every_model_and_nothing_else(store):
    """Found by the benchmark: the median was a query over the whole table, per instance."""
    tasks = task_records(2)
    assert instance_median_steps(store, tasks[0]["instance_id"]) is None  # nothing merged yet
    for profile in model_profiles(3, seed=1):
        for task in tasks:
            records, _ = run_records(profile, task, seed=1)
            conversations = merge_partition(records, profile.key, task["instance_id"])
            store.write(
                MERGED_TRAJECTORIES,
                conversations_to_table(conversations),
                {"model": profile.key, "instance": task["instance_id"]},
            )
    for task in tasks:
        whole_table = store.sql(
            "SELECT * EXCLUDE (model, instance) FROM merged_trajectories WHERE instance = ?", [task["instance_id"]]
        )
        lengths = trajectory_lengths(table_to_conversations(whole_table))
        assert len(lengths) == 3
        assert instance_median_steps(store, task["instance_id"]) == median_steps(lengths.values())
    assert instance_median_steps(store, "never-run") is None
