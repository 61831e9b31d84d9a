"""Do preference_pairs and rule_rewards stay linear in the models per instance?

Builds two stores of synthetic runs (benchmarks/synthetic_runs.py, loaded with the real load
code and merged with the real merge) over the same instances: one with 4 models per instance,
one with 20. The 4-model store draws its 4 models per instance in rotation from the same 20
profiles, two of each client style so that runs with the same tools exist, so both stores hold
the same mix of run lengths. Trajectory rewards and step rewards are seeded random
numbers written as TRAJECTORY_REWARDS and JUDGE_STEPS rows (the judge is not what is timed).

Then times, without Dagster:
- rules: the rule_rewards asset's body (rewards.assets.score_rule_partitions) over batches of
  one model and every instance, as BackfillPolicy.multi_run batches a backfill;
- pairs: the preference_pairs asset's body per instance: reading every model's partition of the
  instance (pairs.assets.instance_inputs), then pairing (pairs.preference_pairs), timed apart.

Prints per-trajectory milliseconds at 4 and 20 models (wall time; the machine may be shared, so
expect noise of tens of percent), then the last line
    pairs_growth_4_to_20=X rules_growth_4_to_20=Y
X, Y: per-trajectory seconds at 20 models over the same at 4 (about 1 when linear).

    python benchmarks/pairs_scaling.py [--instances 40] [--seed 7] [--work DIR]
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
from synthetic_runs import load_partition, model_profiles, task_records

from trajhub_assets.config import ReleaseConfig, RewardConfig
from trajhub_assets.merge.assets import merge_partition
from trajhub_assets.merge.schema import MERGED_TRAJECTORIES, conversations_to_table
from trajhub_assets.pairs.pairs import PairPolicy
from trajhub_assets.recording.raw_calls import rebuild_records
from trajhub_assets.recording.schema import MESSAGE_BLOBS, RAW_CALLS
from trajhub_assets.rewards.schema import JUDGE_STEPS, TRAJECTORY_REWARDS
from trajhub_assets.store import Store
from trajhub_assets.tasks.catalog import TaskRecord, stored_tasks, tasks_to_table
from trajhub_assets.tasks.schema import TASKS

PROFILES = 20
SAME_CLIENT = (0, 4, 1, 5)  # offsets: profiles i and i+4 share a client (scaffold = index % 4)


def models_of(index: int, per_instance: int) -> list[int]:
    """The profiles that ran instance `index`: all 20, or 4 in rotation (each profile equally often)."""
    if per_instance == PROFILES:
        return list(range(PROFILES))
    return [(2 * index + offset) % PROFILES for offset in SAME_CLIENT]


def store_scored_partition(store: Store, scratch: Path, profile, task: dict, seed: int) -> dict:
    """One (model, instance) partition as the pipeline leaves it before pairs: the synthetic run
    loaded, merged, and given seeded rewards and step rewards. Returns the partition."""
    partition = {"model": profile.key, "instance": task["instance_id"]}
    load_partition(store, scratch, profile, task, seed)
    records = rebuild_records(store.read(RAW_CALLS, partition), store.read(MESSAGE_BLOBS, partition))
    conversations = merge_partition(records, **partition)
    store.write(MERGED_TRAJECTORIES, conversations_to_table(conversations), partition)
    rewards, steps = rewards_of(conversations, random.Random(f"{seed}:{profile.key}:{task['instance_id']}"))
    store.write(TRAJECTORY_REWARDS, rewards, partition)
    store.write(JUDGE_STEPS, steps, partition)
    return partition


def rewards_of(conversations: list[dict], rng: random.Random) -> tuple[pa.Table, pa.Table]:
    """Seeded TRAJECTORY_REWARDS and JUDGE_STEPS rows for one partition's main conversations."""
    rewards, steps = [], []
    for c in conversations:
        meta = c["meta"]
        if meta["kind"] != "main":
            continue
        rewards.append(
            {name: None for name in TRAJECTORY_REWARDS.schema.names}
            | {
                "run_id": meta["run_id"],
                "attempt": meta["attempt"],
                **{f"weight_{name}": 0.25 for name in ("outcome", "rules", "step", "checklist")},
                "components": ["outcome"],
                "reward": round(rng.random(), 3),
                "reward_version": "bench",
            }
        )
        generated = [i for i, m in enumerate(c["messages"]) if m["role"] == "assistant" and m["generation"]]
        steps += [
            {name: None for name in JUDGE_STEPS.schema.names}
            | {
                "run_id": meta["run_id"],
                "attempt": meta["attempt"],
                "conversation_id": meta["conversation_id"],
                "step_index": k,
                "message_index": i,
                "step_reward": round(rng.random(), 3),
            }
            for k, i in enumerate(generated)
        ]
    return (
        pa.Table.from_pylist(rewards, schema=TRAJECTORY_REWARDS.schema),
        pa.Table.from_pylist(steps, schema=JUDGE_STEPS.schema),
    )


def build_store(root: Path, tasks: list[dict], per_instance: int, seed: int) -> tuple[Store, dict[str, list[str]]]:
    """(store, instance ids by model key) of one synthetic run per (model, instance)."""
    store, profiles = Store(root), model_profiles(PROFILES, seed)
    store.write(TASKS, tasks_to_table([TaskRecord(t, "bench", n) for n, t in enumerate(tasks, start=1)]))
    (root / "scratch").mkdir(parents=True, exist_ok=True)
    ran: dict[str, list[str]] = {}
    for index, task in enumerate(tasks):
        for p in models_of(index, per_instance):
            profile = profiles[p]
            store_scored_partition(store, root / "scratch", profile, task, seed)
            ran.setdefault(profile.key, []).append(task["instance_id"])
    return store, ran


def time_rules(store: Store, ran: dict[str, list[str]], config: RewardConfig) -> float:
    """Seconds of the rule_rewards body over one batch per model."""
    from trajhub_assets.rewards.assets import score_rule_partitions

    tasks = stored_tasks(store)
    started = time.perf_counter()
    for model, instances in sorted(ran.items()):
        for _ in score_rule_partitions(store, [{"model": model, "instance": i} for i in instances], tasks, config):
            pass
    return time.perf_counter() - started


def time_pairs(store: Store, instances: list[str], policy: PairPolicy) -> tuple[float, float, int, int]:
    """(reading seconds, pairing seconds, pairs, comparisons) of the preference_pairs body over
    every instance."""
    from trajhub_assets.pairs.assets import instance_inputs
    from trajhub_assets.pairs.pairs import preference_pairs

    read_s = pair_s = 0.0
    pairs = compared = 0
    for instance in instances:
        started = time.perf_counter()
        inputs = instance_inputs(store, instance)
        middle = time.perf_counter()
        read_s += middle - started
        result = preference_pairs(*inputs, policy)
        pair_s += time.perf_counter() - middle
        pairs += result.table.num_rows
        compared += result.stats.get("compared_trajectory", 0) + result.stats.get("compared_step", 0)
    return read_s, pair_s, pairs, compared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=40, help="a multiple of 10 keeps the rotation even")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work", type=Path, default=None, help="keep the stores here (default: a temporary dir)")
    args = parser.parse_args()
    tasks = task_records(args.instances)
    config, policy = RewardConfig(), PairPolicy.from_config(ReleaseConfig())
    per_trajectory: dict[str, dict[int, float]] = {"rules": {}, "pairs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        # Untimed: the first call of each body pays for imports, which would count against 4 models.
        store, ran = build_store(work / "warm-up", tasks[:1], 4, args.seed)
        time_rules(store, ran, config), time_pairs(store, [tasks[0]["instance_id"]], policy)
        for models in (4, PROFILES):
            started = time.perf_counter()
            store, ran = build_store(work / f"models{models}", tasks, models, args.seed)
            runs = sum(len(v) for v in ran.values())
            print(
                f"{models} models x {args.instances} instances: {runs} runs stored in "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )
            shutil.rmtree(store.root / "cache", ignore_errors=True)  # cold, as in a first backfill
            rules_s = time_rules(store, ran, config)
            read_s, pair_s, pairs, compared = time_pairs(store, [t["instance_id"] for t in tasks], policy)
            per_trajectory["rules"][models] = rules_s / runs
            per_trajectory["pairs"][models] = (read_s + pair_s) / runs
            print(
                f"  rules {rules_s:.2f} s ({rules_s / runs * 1e3:.2f} ms/run); pairs {read_s + pair_s:.2f} s "
                f"({(read_s + pair_s) / runs * 1e3:.2f} ms/run: read {read_s / runs * 1e3:.2f}, "
                f"pair {pair_s / runs * 1e3:.2f}), {pairs} pairs, {compared / runs:.1f} comparisons per run",
                flush=True,
            )
    growth = {stage: times[PROFILES] / times[4] for stage, times in per_trajectory.items()}
    print(f"pairs_growth_4_to_20={growth['pairs']:.2f} rules_growth_4_to_20={growth['rules']:.2f}")


if __name__ == "__main__":
    main()
