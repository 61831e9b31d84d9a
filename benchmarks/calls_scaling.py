"""Does each stage stay linear in the length of a run, from ~30 to ~120 calls per run?

Builds two stores of synthetic runs (benchmarks/synthetic_runs.py, loaded with the real load
code) over the same instances and 4 models, one whose runs average 30 steps, one 120 (one call
per step, plus the client's side calls). Then times, without Dagster, each stage's own body per
partition as its asset runs it:
- merge: rebuild the calls from the store, merge them, write the conversations
  (per MB of recorded calls: every call repeats the history, so a run's bytes grow with the
  square of its calls, and that is the merge's input);
- rules: rewards.assets.score_rule_partitions (per main-agent step);
- judge from the cache: rewards.judge.judge_partition with every verdict cached beforehand by
  the demo's scripted judge (scaffolds.baselines.judge_answer, no HTTP), so this is what a
  re-materialization costs: prompts built, hashed and looked up (per step); the requests per
  run are printed too (the judge chunks a run's steps past judge.max_steps_per_request);
- pairs: pairs.assets.instance_inputs + pairs.preference_pairs per instance (per step).

Prints the time per unit at 30 and 120 steps, then the last line
    merge_per_mb_growth=A rules_per_step_growth=B judge_per_step_growth=C pairs_per_step_growth=D
each the cost per unit at 120 steps over the same at 30 (about 1 when linear). The machine may
be shared: expect noise of tens of percent.

    python benchmarks/calls_scaling.py [--instances 10] [--seed 7]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from synthetic_runs import cache_scripted_verdicts, load_partition, model_profiles, task_records

from trajhub_assets.config import JudgeConfig, ReleaseConfig, RewardConfig
from trajhub_assets.merge.assets import merge_partition
from trajhub_assets.merge.schema import MERGED_TRAJECTORIES, conversations_to_table
from trajhub_assets.pairs.assets import instance_inputs
from trajhub_assets.pairs.pairs import PairPolicy, preference_pairs
from trajhub_assets.recording.raw_calls import rebuild_records
from trajhub_assets.recording.schema import MESSAGE_BLOBS, RAW_CALLS
from trajhub_assets.rewards.assets import partition_inputs, score_rule_partitions
from trajhub_assets.rewards.judge import (
    Judge,
    default_cache,
    judge_partition,
)
from trajhub_assets.store import Store
from trajhub_assets.tasks.catalog import TaskRecord, stored_tasks, tasks_to_table
from trajhub_assets.tasks.schema import TASKS

MODELS = 4
LENGTHS = (30, 120)


def build_store(root: Path, tasks: list[dict], steps: int, seed: int) -> tuple[Store, list[dict], float]:
    """(store, partitions, MB of the calls as the proxy logged them): one run per (model, instance),
    `steps` on average."""
    store = Store(root)
    store.write(TASKS, tasks_to_table([TaskRecord(t, "bench", n) for n, t in enumerate(tasks, start=1)]))
    (root / "scratch").mkdir(parents=True, exist_ok=True)
    profiles = [dataclasses.replace(p, mean_steps=steps, max_steps=3 * steps) for p in model_profiles(MODELS, seed)]
    partitions, megabytes = [], 0.0
    for task in tasks:
        for profile in profiles:
            load_partition(store, root / "scratch", profile, task, seed)
            partition = {"model": profile.key, "instance": task["instance_id"]}
            records = rebuild_records(store.read(RAW_CALLS, partition), store.read(MESSAGE_BLOBS, partition))
            megabytes += sum(len(json.dumps(r, ensure_ascii=False).encode()) for r in records) / 1e6  # as logged
            partitions.append(partition)
    return store, partitions, megabytes


def time_merge(store: Store, partitions: list[dict]) -> float:
    started = time.perf_counter()
    for p in partitions:
        records = rebuild_records(store.read(RAW_CALLS, p), store.read(MESSAGE_BLOBS, p))
        store.write(MERGED_TRAJECTORIES, conversations_to_table(merge_partition(records, **p)), p)
    return time.perf_counter() - started


def time_rules(store: Store, partitions: list[dict]) -> tuple[float, int]:
    """(seconds, main-agent steps scored)."""
    tasks, steps = stored_tasks(store), 0
    started = time.perf_counter()
    for _, _, summary in score_rule_partitions(store, partitions, tasks, RewardConfig()):
        steps += sum({r["run_id"]: r["n_steps"] for r in summary.to_pylist()}.values())
    return time.perf_counter() - started, steps


def fill_judge_cache(store: Store, partitions: list[dict], config: JudgeConfig) -> int:
    """Every request's verdicts from the scripted judge, cached as the Judge keys them; the requests."""
    tasks, cache, requests = stored_tasks(store), default_cache(store.root), 0
    for p in partitions:
        conversations, outcomes = partition_inputs(store, p)
        requests += cache_scripted_verdicts(
            cache, conversations, tasks[p["instance"]], outcomes, config, "benchmarks/calls_scaling.py (no HTTP)"
        )
    return requests


def time_judge(store: Store, partitions: list[dict], config: JudgeConfig) -> float:
    tasks = stored_tasks(store)

    def no_endpoint():
        raise SystemExit("calls_scaling: a judge request missed the cache")

    started = time.perf_counter()
    with Judge(config, default_cache(store.root), proxy=no_endpoint) as judge:
        for p in partitions:
            conversations, outcomes = partition_inputs(store, p)
            judge_partition(conversations, tasks[p["instance"]], outcomes, judge)
    return time.perf_counter() - started


def time_pairs(store: Store, instances: list[str]) -> float:
    policy = PairPolicy.from_config(ReleaseConfig())
    started = time.perf_counter()
    for instance in instances:
        preference_pairs(*instance_inputs(store, instance), policy)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    tasks, judge = task_records(args.instances), JudgeConfig()
    per_unit: dict[str, dict[int, float]] = {"merge": {}, "rules": {}, "judge": {}, "pairs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        warm, partitions, _ = build_store(Path(tmp) / "warm-up", tasks[:1], 10, args.seed)  # imports, untimed
        time_merge(warm, partitions), time_rules(warm, partitions), fill_judge_cache(warm, partitions, judge)
        time_judge(warm, partitions, judge), time_pairs(warm, [tasks[0]["instance_id"]])
        for steps in LENGTHS:
            store, partitions, megabytes = build_store(Path(tmp) / f"steps{steps}", tasks, steps, args.seed)
            merge_s = time_merge(store, partitions)
            rules_s, scored = time_rules(store, partitions)
            requests = fill_judge_cache(store, partitions, judge)
            judge_s = time_judge(store, partitions, judge)
            pairs_s = time_pairs(store, [t["instance_id"] for t in tasks])
            per_unit["merge"][steps] = merge_s / megabytes
            per_unit["rules"][steps] = rules_s / scored
            per_unit["judge"][steps] = judge_s / scored
            per_unit["pairs"][steps] = pairs_s / scored
            runs = len(partitions)
            print(
                f"~{steps} steps per run: {runs} runs, {scored / runs:.0f} main-agent steps and "
                f"{megabytes / runs:.2f} MB of calls per run, {requests / runs:.1f} judge requests per run\n"
                f"  merge {merge_s:.2f} s ({merge_s / megabytes * 1e3:.1f} ms/MB); rules {rules_s:.2f} s "
                f"({rules_s / scored * 1e3:.2f} ms/step); judge from cache {judge_s:.2f} s "
                f"({judge_s / scored * 1e3:.2f} ms/step); pairs {pairs_s:.2f} s ({pairs_s / scored * 1e3:.2f} ms/step)",
                flush=True,
            )
    growth = {stage: times[LENGTHS[1]] / times[LENGTHS[0]] for stage, times in per_unit.items()}
    print(
        f"merge_per_mb_growth={growth['merge']:.2f} rules_per_step_growth={growth['rules']:.2f} "
        f"judge_per_step_growth={growth['judge']:.2f} pairs_per_step_growth={growth['pairs']:.2f}"
    )


if __name__ == "__main__":
    main()
