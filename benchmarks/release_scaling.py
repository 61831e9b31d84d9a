"""Does hf_dataset_release stay within 5 minutes and 4 GB at 20,000 trajectories?

Builds a store of release inputs without Dagster: a template of real synthetic runs
(benchmarks/synthetic_runs.py, loaded with the real load code and merged with the real merge;
seeded rewards as in pairs_scaling.py; pairs from preference_pairs over every model's runs of
an instance), then copies of the template under new instance and run ids until the store holds
N trajectories. Each copy's message texts get a suffix of their own, so the secret scan meets as
many distinct texts as in a real store; its pairs repeat its trajectories' texts, as real ones do.

Then runs the asset's body (release.assets.release_inputs, release.release.build_release) in a
fresh process per size, so each peak RSS (ru_maxrss) is that release's alone, and prints
seconds, peak RSS and MB per 1,000 trajectories, then the last line
    release_20000_s=X release_peak_rss_mb=Y per_trajectory_growth=Z
Z: seconds per trajectory at the largest size over the same at the smallest (about 1 when linear).

    python benchmarks/release_scaling.py [--sizes 2000 20000] [--work DIR] [--profile FILE]
    python benchmarks/release_scaling.py --release STORE   # an existing store, e.g. the 20 x 1,000 run's
"""

from __future__ import annotations

import argparse
import cProfile
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pairs_scaling import store_scored_partition
from synthetic_runs import model_profiles, task_records

from trajhub_assets.merge.schema import MERGED_TRAJECTORIES
from trajhub_assets.pairs.assets import instance_inputs
from trajhub_assets.pairs.pairs import PairPolicy, preference_pairs
from trajhub_assets.pairs.schema import PREFERENCE_PAIRS
from trajhub_assets.rewards.schema import JUDGE_STEPS, TRAJECTORY_REWARDS
from trajhub_assets.store import Store
from trajhub_assets.tasks.catalog import TaskRecord, tasks_to_table
from trajhub_assets.tasks.schema import TASKS

MODELS = 8  # two of each client style: pairs need runs with the same tools
TEMPLATE_INSTANCES = 25  # 200 real runs, copied to the size asked


def _suffixed(array, suffix: str):
    return pc.binary_join_element_wise(array, pa.scalar(suffix), "")


def _with(table: pa.Table, column: str, values) -> pa.Table:
    return table.set_column(table.schema.get_field_index(column), table.schema.field(column), values)


def _distinct_texts(messages: pa.ChunkedArray, suffix: str) -> pa.ListArray:
    """The messages with `suffix` after every content: texts no other copy has."""
    messages = messages.combine_chunks()
    items = messages.values
    fields = [
        _suffixed(items.field(f.name), suffix) if f.name == "content" else items.field(f.name) for f in items.type
    ]
    items = pa.StructArray.from_arrays(fields, fields=list(items.type), mask=items.is_null())
    return pa.ListArray.from_arrays(messages.offsets, items, type=messages.type, mask=messages.is_null())


def copy_partition(store: Store, template: Store, partition: dict, target: dict, k: int) -> int:
    """Copy k of one template partition into `target`: run and conversation ids suffixed."""
    suffix = f"~c{k:04d}"
    merged = template.read(MERGED_TRAJECTORIES, partition)
    for column in ("run_id", "conversation_id"):
        merged = _with(merged, column, _suffixed(merged[column], suffix))
    if k:
        merged = _with(merged, "messages", _distinct_texts(merged["messages"], f"\n[copy {k}]"))
    store.write(MERGED_TRAJECTORIES, merged, target)
    rewards = template.read(TRAJECTORY_REWARDS, partition)
    store.write(TRAJECTORY_REWARDS, _with(rewards, "run_id", _suffixed(rewards["run_id"], suffix)), target)
    steps = template.read(JUDGE_STEPS, partition)
    for column in ("run_id", "conversation_id"):
        steps = _with(steps, column, _suffixed(steps[column], suffix))
    store.write(JUDGE_STEPS, steps, target)
    return sum(1 for kind in merged["kind"].to_pylist() if kind == "main")


def copy_pairs(store: Store, template: Store, instance: str, new: str, k: int) -> None:
    """Copy k of one template instance's pairs (their texts are the template's)."""
    suffix = f"~c{k:04d}"
    pairs = template.read(PREFERENCE_PAIRS, {"instance": instance})
    for column in ("pair_id", "chosen_run_id", "rejected_run_id"):
        pairs = _with(pairs, column, _suffixed(pairs[column], suffix))
    pairs = _with(pairs, "instance_id", pa.array([new] * pairs.num_rows, pa.string()))
    store.write(PREFERENCE_PAIRS, pairs, {"instance": new})


def build_template(
    root: Path, seed: int, models: int = MODELS, instances: int = TEMPLATE_INSTANCES
) -> tuple[Store, list[dict], list[str]]:
    """(store, partitions, instance ids): one real run per (model, instance); kept in `root`."""
    store, profiles = Store(root), model_profiles(models, seed)
    tasks = task_records(instances)
    instances = [t["instance_id"] for t in tasks]
    partitions = [{"model": p.key, "instance": i} for i in instances for p in profiles]
    if (root / "done").exists():
        return store, partitions, instances
    (root / "scratch").mkdir(parents=True, exist_ok=True)
    for task in tasks:
        for profile in profiles:
            store_scored_partition(store, root / "scratch", profile, task, seed)
        pairs = preference_pairs(*instance_inputs(store, task["instance_id"]), PairPolicy(min_margin=0.1))
        store.write(PREFERENCE_PAIRS, pairs.table, {"instance": task["instance_id"]})
    (root / "done").touch()
    return store, partitions, instances


def build_store(root: Path, template: Store, partitions: list[dict], instances: list[str], n: int) -> int:
    """A store of about `n` trajectories (whole template copies), kept in `root`; returns how many."""
    if (root / "done").exists():
        return int((root / "done").read_text())
    shutil.rmtree(root, ignore_errors=True)
    copies = max(1, round(n / len(partitions)))
    tasks = task_records(len(instances) * copies)
    store, runs = Store(root), 0
    store.write(TASKS, tasks_to_table([TaskRecord(t, "bench", i) for i, t in enumerate(tasks, start=1)]))
    for k in range(copies):
        new = {old: tasks[k * len(instances) + i]["instance_id"] for i, old in enumerate(instances)}
        for partition in partitions:
            target = {"model": partition["model"], "instance": new[partition["instance"]]}
            runs += copy_partition(store, template, partition, target, k)
        for old in instances:
            copy_pairs(store, template, old, new[old], k)
    (root / "done").write_text(str(runs))
    return runs


def release(root: Path, profile: Path | None) -> dict:
    """The asset's body on the store at `root`: seconds and this process's peak RSS."""
    from trajhub_assets.config import ProjectConfig, ReleaseConfig
    from trajhub_assets.release.assets import release_inputs
    from trajhub_assets.release.release import build_release

    config = ProjectConfig(tasks=[{"path": "tasks.jsonl"}], release=ReleaseConfig(name="bench", license="mit"))
    store = Store(root)
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    built = build_release(release_inputs(store, config), config.release, store.root)
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
    return {
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rows": built.rows,
        "version": built.version,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work", type=Path, default=None, help="keep the stores here (reused when present)")
    parser.add_argument("--profile", type=Path, default=None, help="cProfile stats of the largest release")
    # Also how each size's child process is run.
    parser.add_argument(
        "--release",
        type=Path,
        default=None,
        metavar="STORE",
        help="only release the store at STORE (e.g. scale_pipeline.py --root R's R/home) and print its figures",
    )
    args = parser.parse_args()
    if args.release:
        print(json.dumps(release(args.release, args.profile)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        started = time.perf_counter()
        template, partitions, instances = build_template(work / "template", args.seed)
        print(f"template: {len(partitions)} real runs in {time.perf_counter() - started:.0f} s", flush=True)
        results = {}
        for n in args.sizes:
            root = work / f"n{n}"
            started = time.perf_counter()
            runs = build_store(root, template, partitions, instances, n)
            print(f"{runs} trajectories stored in {time.perf_counter() - started:.0f} s", flush=True)
            profile = ["--profile", str(args.profile)] if args.profile and n == max(args.sizes) else []
            child = subprocess.run(
                [sys.executable, __file__, "--release", str(root), *profile], check=True, capture_output=True, text=True
            )
            result = json.loads(child.stdout.strip().splitlines()[-1])
            results[runs] = result
            print(
                f"  release of {runs}: {result['seconds']:.1f} s ({result['seconds'] / runs * 1e3:.2f} ms/trajectory), "
                f"peak RSS {result['peak_rss_mb']:.0f} MB ({result['peak_rss_mb'] / runs * 1e3:.0f} MB per 1,000), "
                f"rows {result['rows']}, {result['version']}",
                flush=True,
            )
            shutil.rmtree(root / "releases", ignore_errors=True)
    small, large = min(results), max(results)
    growth = (results[large]["seconds"] / large) / (results[small]["seconds"] / small)
    print(
        f"release_{large}_s={results[large]['seconds']:.1f} "
        f"release_peak_rss_mb={results[large]['peak_rss_mb']:.0f} per_trajectory_growth={growth:.2f}"
    )


if __name__ == "__main__":
    main()
