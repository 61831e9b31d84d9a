"""How the pipeline scales: synthetic recorded runs of 20 models x 1,000 instances through
merge -> rules -> judge -> pairs -> release, in Dagster, on this machine.

    .venv/bin/python benchmarks/scale_pipeline.py [--models 20] [--instances 1000] [--quick]

1. Setup (timed, not a pipeline stage): a fresh store and a SQLite Dagster instance in a
   temporary directory; 1,000 tasks (the real OctoCodingBench records, cycled) through the
   `tasks` asset; partitions registered; one synthetic run per (model, instance)
   (benchmarks/synthetic_runs.py: calls shaped as the proxy records them) written as JSONL
   and loaded with the real load code (load_runs), in --workers processes. No Docker and no
   agents: they are not what is measured.
2. Dagster's floor: the same batched runs of an asset whose body does nothing but what every
   stage's body does for Dagster (per-partition metadata, two check results): what Dagster
   itself costs per run and per partition on this instance. Every stage is reported against
   it; the target is 50 trajectories/s, or within 1.5x of the floor where the floor is below
   75 partitions/s. On SQLite the floor is the event log's commits: Dagster writes two asset
   events per partition (planned, materialized), each a few committed transactions. The
   first batches run again with DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS=true (one
   planned event per asset and run; Dagster's caveat: a failed run's partitions are then
   not marked failed), to show what that setting buys. The floor is the disk's fsync latency
   more than anything (here 28/s on disk, 75/s on tmpfs), which drifts over minutes: each
   per-run stage is also rated against a floor batch run just before it and one just after.
   The stages, each through Dagster (orchestration.run_stage, the SQLite instance), in runs of up
   to 200 partitions batched as BackfillPolicy.multi_run(200) batches a backfill (Dagster
   holds the dimension with fewer keys fixed: one model, 200 consecutive instances per run):
   merged_trajectories, rule_rewards, judge_rewards, preference_pairs (200 instances per run),
   then the release stage (reward_calibration, leaderboard, hf_dataset_release) in one run.
   judge_rewards: the first --judge-live partitions are judged live through the real LiteLLM
   proxy and the scripted baseline judge (the demo's); for all the others the judge cache
   was filled beforehand (timed apart, not a stage) with the same scripted judge's answers
   computed in-process, so their judge_rewards runs read every verdict from the cache, as a
   re-materialization does. Both parts are reported on their own rows.
   preference_pairs: a first run over --pairs-probe instances; when the projected time over
   every instance exceeds --pairs-budget seconds, the rest is not run and the stage's time is
   extrapolated linearly (the output says so; the release then holds those instances' pairs).
3. Backfill of a 21st model over every instance (its runs loaded as in 1, the judge cache
   filled for it as in 2), through merged_trajectories + rule_rewards + judge_rewards in the
   same runs: batched (runs of up to 200 partitions), then one Dagster run per partition
   (each recomputes and overwrites its partition: the same work). When one run per
   partition over every instance would take more than --per-partition-budget seconds, a
   random sample of --per-partition-sample partitions is run and the total extrapolated
   linearly; the output says so.

Per stage: wall time, trajectories/s, Dagster overhead share = (wall - time inside the asset
bodies) / wall, where the body time of a step is read from the run's own event log: from
STEP_START to the step's first output/materialization event (so it includes the data-version
lookup Dagster does at step start and the body's own log writes: the share is a lower bound);
"pre s" / "post s" split the overhead into before the first body (run and plan creation,
resources) and after the last (materialization and check events, resource teardown; the
proxy resource starts the LiteLLM proxy lazily, inside judge_rewards' body). Peak
RSS of this process and of it plus its children (proxy, workers), sampled every 0.5 s.
Dagster runs here execute in this process (`execute_in_process`); a daemon-launched run also pays
process start-up and code loading, so per-run overhead in production is larger.

`--profile DIR` writes a cProfile of each stage's runs to DIR/<stage>.prof and prints its top
functions before the report.

The last line:
    trajectories_per_s=X slowest_stage_per_s=Y judge_requests_per_trajectory=Z backfill_batched_vs_per_partition=W
X: runs (trajectories) per second through the pipeline stages (merged_trajectories,
   rule_rewards, judge_rewards, trajectory_rewards, preference_pairs, release) = runs / the
   sum of their wall times; setup, synthetic loading and the judge cache fill are excluded,
   judge_rewards is mostly cache hits (see 2), and an extrapolated stage counts with its
   extrapolated time.
Y: trajectories/s of the slowest partitioned stage (the live judge, bound by the scripted
   upstream behind the proxy, and the single release run left out).
Z: HTTP requests the live judge sent (retries included) per trajectory it judged.
W: one-run-per-partition time / batched time to backfill the new model through
   merged_trajectories + rule_rewards + judge_rewards + trajectory_rewards (> 1: batching is faster).
The machine is shared: expect noise of tens of percent between runs.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import multiprocessing
import os
import pstats
import random
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    Definitions,
    MaterializeResult,
    asset,
    define_asset_job,
)
from synthetic_runs import ModelProfile, cache_scripted_verdicts, load_partition, model_profiles, task_records

from trajhub_assets.errors import TrajhubError
from trajhub_assets.jobs import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    RECORD_AND_SCORE_ASSETS,
    RELEASE_ASSETS,
    build_pairs_job,
    record_and_score_job,
    release_job,
    reload_catalog_job,
)
from trajhub_assets.metadata import PartitionMetadata
from trajhub_assets.orchestration import run_stage
from trajhub_assets.partitions import BATCHED as BATCHED_POLICY
from trajhub_assets.partitions import contiguous_ranges, run_key, run_partitions

BATCH = 200  # BackfillPolicy.multi_run(max_partitions_per_run=200) in trajhub_assets.partitions
FULL = 20 * 1000  # the scale, which the targets are for
PER_RUN_STAGES = ["merged_trajectories", "rule_rewards", "judge_rewards", "trajectory_rewards"]
RELEASE = ["reward_calibration", "leaderboard", "hf_dataset_release"]
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# The named job each stage's assets belong to; a stage runs some of its assets.
JOB_OF = {
    "tasks": reload_catalog_job,
    "preference_pairs": build_pairs_job,
    **{asset: record_and_score_job for asset in RECORD_AND_SCORE_ASSETS},
    **{asset: release_job for asset in RELEASE_ASSETS},
}


# -- memory --------------------------------------------------------------------------------
def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class MemorySampler(threading.Thread):
    """Peak RSS of this process, and of it with every descendant (proxy, workers), in MB."""

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        self.interval, self.stopped = interval, threading.Event()
        self.peak_self = self.peak_tree = self.stage_peak_tree = 0.0

    def sample(self) -> None:
        me = os.getpid()
        own = _rss_kb(me) / 1024
        tree = own + sum(_rss_kb(pid) for pid in _descendants(me)) / 1024
        self.peak_self, self.peak_tree = max(self.peak_self, own), max(self.peak_tree, tree)
        self.stage_peak_tree = max(self.stage_peak_tree, tree)

    def stage(self) -> float:
        """The peak since the last call, and start a new one."""
        self.sample()
        peak, self.stage_peak_tree = self.stage_peak_tree, 0.0
        return peak

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.sample()


# -- timing of Dagster runs ------------------------------------------------------------------
@dataclass
class StageTiming:
    name: str
    trajectories: int = 0
    partitions: int = 0
    runs: int = 0
    wall_s: float = 0.0
    body_s: float = 0.0
    before_s: float = 0.0  # Dagster's time before the first body (run creation, resources)
    after_s: float = 0.0  # and after the last one (materialization and check events, teardown)
    peak_mb: float = 0.0
    judge_requests: int = 0  # HTTP requests judge_rewards sent (its metadata), retries included
    floor_beside: StageTiming | None = None  # the floor of a batch just before and one just after
    note: str = ""
    materialized: dict[str, int] = field(default_factory=dict)

    @property
    def overhead(self) -> float:
        return (self.wall_s - self.body_s) / self.wall_s if self.wall_s else 0.0

    def add(self, other: StageTiming) -> None:
        self.runs += other.runs
        self.wall_s += other.wall_s
        self.body_s += other.body_s
        self.before_s += other.before_s
        self.after_s += other.after_s
        self.judge_requests += other.judge_requests
        for name, count in other.materialized.items():
            self.materialized[name] = self.materialized.get(name, 0) + count


def step_times(instance, run_id: str) -> tuple[float, float, float]:
    """(seconds inside the asset bodies, first body start, last body end) of a run, from its
    event log: a step's body runs from STEP_START to the step's first output event."""
    from dagster import DagsterEventType

    kinds = {
        DagsterEventType.STEP_START,
        DagsterEventType.STEP_OUTPUT,
        DagsterEventType.ASSET_MATERIALIZATION,
        DagsterEventType.STEP_FAILURE,
    }
    started, ended = {}, {}
    for entry in instance.all_logs(run_id, of_type=kinds):
        step, kind = entry.step_key, entry.dagster_event.event_type
        if kind == DagsterEventType.STEP_START:
            started[step] = entry.timestamp
        elif step not in ended:
            ended[step] = entry.timestamp
    steps = [step for step in started if step in ended]
    return (sum(ended[s] - started[s] for s in steps), min(started[s] for s in steps), max(ended[s] for s in steps))


def timed_run(instance, launch, selection: list[str]) -> StageTiming:
    """One Dagster run: wall time, body time, materializations per asset; fails loudly."""
    started, clock = time.perf_counter(), time.time()
    try:
        result = profile_of(selection).runcall(launch) if PROFILES is not None else launch()
    except TrajhubError as error:  # the run failed
        raise SystemExit(f"scale_pipeline: {error}") from None
    wall, ended = time.perf_counter() - started, time.time()
    body, first_start, last_end = step_times(instance, result.run_id)
    judged = result.asset_materializations_for_node("judge_rewards") if "judge_rewards" in selection else []
    return StageTiming(
        selection[0],
        runs=1,
        wall_s=wall,
        body_s=body,
        before_s=first_start - clock,
        after_s=ended - last_end,
        # the batch's totals (batch_*) are on each partition's materialization: read one
        judge_requests=judged[0].metadata["batch_judge_requests"].value if judged else 0,
        materialized={a: len(result.asset_materializations_for_node(a)) for a in selection},
    )


PROFILES: dict[str, cProfile.Profile] | None = None  # --profile: one per stage, over all its runs


def profile_of(selection: list[str]) -> cProfile.Profile:
    return PROFILES.setdefault("+".join(selection), cProfile.Profile())


def dump_profiles(directory: Path) -> None:
    """<stage>.prof per stage (open with `python -m pstats` or snakeviz), and its top functions."""
    directory.mkdir(parents=True, exist_ok=True)
    for stage, profile in PROFILES.items():
        path = directory / f"{stage.replace('+', '_and_')}.prof"
        profile.dump_stats(path)
        print(f"\nprofile of {stage} ({path}), by cumulative time:")
        pstats.Stats(profile).sort_stats("cumulative").print_stats(25)


# -- Dagster's floor -----------------------------------------------------------------------
FLOOR_CHECKS = [AssetCheckSpec(name, asset="dagster_floor") for name in ("first", "second")]


@asset(partitions_def=run_partitions, backfill_policy=BATCHED_POLICY, check_specs=FLOOR_CHECKS)
def dagster_floor(context) -> MaterializeResult:  # no annotation: this module defers them
    """Does nothing but what every stage's body does for Dagster: its partitions' metadata
    (metadata.PartitionMetadata) and two check results. Its runs cost what Dagster costs per
    run and per partition (run and plan creation, planned and materialization events): the
    floor under every stage."""
    metadata = PartitionMetadata(context, len(context.partition_keys))
    for key in context.partition_keys:
        metadata.add(key, {"conversations": 1})
    return MaterializeResult(check_results=[AssetCheckResult(check_name=c.name, passed=True) for c in FLOOR_CHECKS])


def floor_job():
    defs = Definitions(assets=[dagster_floor], jobs=[define_asset_job("dagster_floor", [dagster_floor])])
    return defs.resolve_job_def("dagster_floor")


def run_floor(instance, batches: list[list[str]]) -> StageTiming:
    job, total = floor_job(), StageTiming("dagster floor (no-op body)")
    for keys in batches:
        tags = {RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]}
        total.add(
            timed_run(
                instance,
                lambda tags=tags: job.execute_in_process(instance=instance, tags=tags, run_config=QUIET),
                ["dagster_floor"],
            )
        )
    return total


# Dagster writes one ASSET_MATERIALIZATION_PLANNED event per partition of a run unless this is
# set; then one per asset and run, and a failed run's partitions are not marked failed (Dagster's
# own caveat, dagster/_core/storage/event_log/base.py). The floor is measured both ways.
SUBSET_PLANNED_EVENTS = "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"
SUBSET_SAMPLE = 5  # batches of the floor run again with one planned event per run


def run_floor_subset_planned(instance, batches: list[list[str]]) -> StageTiming:
    """The floor with one planned event per run (SUBSET_PLANNED_EVENTS), over the first batches."""
    os.environ[SUBSET_PLANNED_EVENTS] = "true"
    try:
        timing = run_floor(instance, batches[:SUBSET_SAMPLE])
    finally:
        del os.environ[SUBSET_PLANNED_EVENTS]
    timing.name = "dagster floor, one planned event per run"
    timing.partitions = timing.trajectories = sum(len(b) for b in batches[:SUBSET_SAMPLE])
    timing.note = f"{SUBSET_PLANNED_EVENTS}=true, the first {SUBSET_SAMPLE} batches"
    return timing


def run_batches(instance, resources, selection: list[str], batches: list[list[str]]) -> StageTiming:
    """One Dagster run per batch of partition keys (a range, as a multi_run backfill makes)."""
    total = StageTiming(selection[0])
    for keys in batches:
        run = timed_run(
            instance,
            lambda keys=keys: run_stage(
                instance, JOB_OF[selection[0]], keys, resources=resources, selection=selection, run_config=QUIET
            ),
            selection,
        )
        if keys and any(count != len(keys) for count in run.materialized.values()):
            raise SystemExit(
                f"scale_pipeline: a run over {len(keys)} partitions materialized "
                f"{run.materialized}: the batch is not the range it was meant to be"
            )
        total.add(run)
    return total


def run_per_partition(instance, resources, selection: list[str], keys: list[str]) -> StageTiming:
    """One Dagster run per partition key, as a backfill without a backfill policy makes."""
    total = StageTiming(selection[0])
    for key in keys:
        total.add(
            timed_run(
                instance,
                lambda key=key: run_stage(
                    instance, JOB_OF[selection[0]], [key], resources=resources, selection=selection, run_config=QUIET
                ),
                selection,
            )
        )
    return total


def model_batches(models: list[str], instance_ids: list[str], size: int = BATCH) -> list[list[str]]:
    """Backfill runs of up to `size` partitions: one model, consecutive instances (in the
    dynamic partitions' order), as BackfillPolicy.multi_run chunks a (model x instance)
    backfill when there are fewer models than instances."""
    return [
        [run_key(model, i) for i in batch]
        for model in models
        for batch in contiguous_ranges(instance_ids, instance_ids, size)
    ]


def chunks(keys: list[str], size: int = BATCH) -> list[list[str]]:
    return [keys[start : start + size] for start in range(0, len(keys), size)]


# -- setup ---------------------------------------------------------------------------------
def write_project(root: Path, profiles: list[ModelProfile], tasks: list[dict]) -> Path:
    tasks_file = root / "tasks.jsonl"
    tasks_file.write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in tasks))
    config = root / "project.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "tasks": [{"path": str(tasks_file)}],
                "models": [{"name": p.name, "route": p.route, "scaffold": p.scaffold} for p in profiles],
                "judge": {"model": "baseline/judge", "max_concurrent": 4},
                "release": {"name": "trajhub-scale-bench", "min_margin": 0.01},
            }
        )
    )
    return config


def _pool(workers: int):
    """Worker processes, forked; they leave SIGTERM at its default, so closing the pool is
    quiet (Dagster turns SIGTERM into KeyboardInterrupt in this process)."""
    return multiprocessing.get_context("fork").Pool(
        workers, initializer=signal.signal, initargs=(signal.SIGTERM, signal.SIG_DFL)
    )


def _load_one(job) -> int:
    root, profile, task, seed = job
    from trajhub_assets.store import Store

    scratch = Path(root) / "scratch"
    return load_partition(Store(Path(root) / "home"), scratch, profile, task, seed)


def load_synthetic(
    root: Path, profiles: list[ModelProfile], tasks: list[dict], seed: int, workers: int
) -> tuple[int, float]:
    """(calls, seconds): one synthetic run per (model, instance), through load_runs."""
    (root / "scratch").mkdir(exist_ok=True)
    jobs = [(str(root), p, t, seed) for p in profiles for t in tasks]
    started = time.perf_counter()
    with _pool(workers) as pool:
        calls = sum(pool.imap_unordered(_load_one, jobs, chunksize=16))
    return calls, time.perf_counter() - started


# -- judge cache ---------------------------------------------------------------------------
def _judge_inputs(store, partition: dict) -> tuple[list[dict], dict]:
    """What judge_rewards will read for a partition: its stored merged trajectories, or, before
    they exist (the new model's backfill), the same merge done here, through the same table."""
    from trajhub_assets.merge.assets import merge_partition
    from trajhub_assets.merge.schema import (
        MERGED_TRAJECTORIES,
        conversations_to_table,
        table_to_conversations,
    )
    from trajhub_assets.recording.raw_calls import rebuild_records
    from trajhub_assets.recording.schema import MESSAGE_BLOBS, RAW_CALLS, RUNS
    from trajhub_assets.rewards.assets import partition_inputs

    if store.exists(MERGED_TRAJECTORIES, partition):
        return partition_inputs(store, partition)
    records = rebuild_records(store.read(RAW_CALLS, partition), store.read(MESSAGE_BLOBS, partition))
    table = conversations_to_table(merge_partition(records, partition["model"], partition["instance"]))
    outcomes = {row["run_id"]: row for row in store.read(RUNS, partition).to_pylist()}
    return table_to_conversations(table, **partition), outcomes


def _fill_judge_cache(job) -> int:
    """Cache the scripted baseline judge's answers for one partition's judge requests, keyed as
    the Judge keys them: the function the scripted upstream runs, called without HTTP."""
    root, config_path, partition = job
    from trajhub_assets.config import load_config
    from trajhub_assets.rewards.judge import default_cache
    from trajhub_assets.store import Store
    from trajhub_assets.tasks.catalog import stored_tasks

    store, config = Store(Path(root) / "home"), load_config(config_path)
    if "tasks" not in _TASKS:  # once per worker process
        _TASKS["tasks"] = stored_tasks(store)
    conversations, outcomes = _judge_inputs(store, partition)
    return cache_scripted_verdicts(
        default_cache(store.root),
        conversations,
        _TASKS["tasks"][partition["instance"]],
        outcomes,
        config.judge,
        "benchmarks/scale_pipeline.py (no HTTP)",
    )


_TASKS: dict = {}


def fill_judge_cache(root: Path, config: Path, partitions: list[dict], workers: int) -> tuple[int, float]:
    started = time.perf_counter()
    with _pool(workers) as pool:
        items = sum(
            pool.imap_unordered(_fill_judge_cache, [(str(root), str(config), p) for p in partitions], chunksize=8)
        )
    return items, time.perf_counter() - started


# -- report --------------------------------------------------------------------------------
HEADER = (
    f"{'stage':<44} {'runs':>5} {'parts':>6} {'traj':>6} {'wall s':>8} {'traj/s':>7} "
    f"{'body s':>8} {'dagster':>7} {'pre s':>6} {'post s':>6} {'peak MB':>7}  note"
)


def format_row(row: StageTiming) -> str:
    rate = f"{row.trajectories / row.wall_s:7.1f}" if row.wall_s and row.trajectories else f"{'-':>7}"
    dagster = (
        f"{row.body_s:8.1f} {row.overhead:>7.1%} {row.before_s:6.1f} {row.after_s:6.1f}"
        if row.runs
        else f"{'-':>8} {'-':>7} {'-':>6} {'-':>6}"
    )
    return (
        f"{row.name:<44} {row.runs or '-':>5} {row.partitions:>6} {row.trajectories or '-':>6} "
        f"{row.wall_s:8.1f} {rate} {dagster} {row.peak_mb:7.0f}  {row.note}"
    )


def print_table(rows: list[StageTiming]) -> None:
    print(HEADER)
    for row in rows:
        print(format_row(row))


def rows_of(store, table: str) -> int:
    return store.sql(f"SELECT count(*) AS n FROM {table}").column("n")[0].as_py()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 models x 4 instances")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2, help="processes for loading and the cache fill")
    parser.add_argument("--batch", type=int, default=BATCH, help="partitions per batched run")
    parser.add_argument(
        "--judge-live",
        type=int,
        default=BATCH,
        help="partitions judged live through the proxy (the rest from the cache)",
    )
    parser.add_argument("--per-partition-sample", type=int, default=100)
    parser.add_argument(
        "--per-partition-budget",
        type=float,
        default=900.0,
        help="seconds one-run-per-partition may take before it is sampled",
    )
    parser.add_argument(
        "--pairs-probe",
        type=int,
        default=10,
        help="instances in the first preference_pairs run, which decides whether to run the rest",
    )
    parser.add_argument(
        "--pairs-budget",
        type=float,
        default=1800.0,
        help="seconds preference_pairs may take over every instance before it is extrapolated",
    )
    parser.add_argument("--root", default=None, help="work directory (default: a temporary one, removed)")
    parser.add_argument("--profile", default=None, help="directory: cProfile each stage into <stage>.prof")
    args = parser.parse_args()
    if args.quick:  # every path once, small: batched runs, live and cached judge, extrapolation
        args.models, args.instances, args.batch, args.judge_live = 2, 4, 4, 4
        args.per_partition_sample, args.per_partition_budget = 2, 0.0
    warnings.filterwarnings("ignore")  # Dagster's beta warnings (backfill policies, pools)

    root = Path(args.root or tempfile.mkdtemp(prefix="trajhub-scale-"))
    (root / "dagster").mkdir(parents=True, exist_ok=True)
    (root / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(root / "dagster")
    os.environ["TRAJHUB_HOME"] = str(root / "home")
    if args.profile:
        global PROFILES
        PROFILES = {}
    memory = MemorySampler()
    memory.start()
    try:
        bench = prepare(args, root, memory)
        stages, judge = pipeline(bench)
        batched, per_partition = backfill(bench)
        if args.profile:
            dump_profiles(Path(args.profile))
        print_report(bench, stages, judge, batched, per_partition)
    finally:
        memory.stopped.set()
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)


@dataclass
class Bench:
    """What every phase works with, and the setup rows it adds (work that is not a stage)."""

    args: argparse.Namespace
    root: Path
    memory: MemorySampler
    config_path: Path
    config: object  # ProjectConfig
    resources: dict
    store: object  # Store
    instance: object  # DagsterInstance
    known: list[ModelProfile]
    new: ModelProfile
    tasks: list[dict]
    setup: list[StageTiming] = field(default_factory=list)
    floor: StageTiming | None = None
    floor_subset: StageTiming | None = None

    @property
    def instance_ids(self) -> list[str]:
        return [t["instance_id"] for t in self.tasks]

    @property
    def trajectories(self) -> int:
        return len(self.known) * len(self.tasks)

    def add_setup(self, name: str, partitions: int, seconds: float, note: str) -> None:
        self.setup.append(StageTiming(name, partitions, partitions, 0, seconds, peak_mb=self.memory.stage(), note=note))
        print(f"  done: {format_row(self.setup[-1])}", flush=True)

    def stage(
        self,
        selection: list[str],
        batches: list[list[str]],
        partitions: int,
        note: str = "",
        name: str | None = None,
        trajectories: int | None = None,
    ) -> StageTiming:
        """Dagster runs of `selection`, one per batch, as one stage row (over every known run
        unless `trajectories` says how many the batches hold)."""
        self.memory.stage()
        beside = selection[0] in PER_RUN_STAGES and not note.startswith("live")
        before = run_floor(self.instance, batches[:1]) if beside else None
        timing = run_batches(self.instance, self.resources, selection, batches)
        if before is not None:
            before.add(run_floor(self.instance, batches[-1:]))
            before.partitions = len(batches[0]) + len(batches[-1])
            timing.floor_beside = before
        timing.name, timing.partitions = name or selection[0], partitions
        timing.trajectories = trajectories if trajectories is not None else self.trajectories
        timing.peak_mb, timing.note = self.memory.stage(), note
        print(f"  done: {format_row(timing)}", flush=True)
        return timing


def prepare(args, root: Path, memory: MemorySampler) -> Bench:
    """Project, catalog (the `tasks` asset), partitions of the known models, their runs loaded."""
    from dagster import DagsterInstance

    from trajhub_assets.config import load_config
    from trajhub_assets.definitions import environment, environment_resources
    from trajhub_assets.resources import ProjectResource, StoreResource
    from trajhub_assets.store import Store
    from trajhub_assets.tasks.assets import register_partitions

    profiles, tasks = model_profiles(args.models + 1, args.seed), task_records(args.instances)
    config_path = write_project(root, profiles, tasks)
    project = ProjectResource(path=str(config_path))
    bench = Bench(
        args,
        root,
        memory,
        config_path,
        load_config(config_path),
        environment_resources(
            project,
            environment(project.load()),
            StoreResource(root=str(root / "home")),
            recordings_dir=str(root / "recordings"),
        ),
        Store(root / "home"),
        DagsterInstance.get(),
        profiles[:-1],
        profiles[-1],
        tasks,
    )
    print(
        f"scale benchmark: {len(bench.known)} models x {len(tasks)} instances = {bench.trajectories} runs "
        f"(+1 model to backfill), batches of {args.batch}, work dir {root}",
        flush=True,
    )
    memory.stage()
    catalog = timed_run(
        bench.instance,
        lambda: run_stage(bench.instance, reload_catalog_job, resources=bench.resources, run_config=QUIET),
        ["tasks"],
    )
    catalog.partitions, catalog.peak_mb = len(tasks), memory.stage()
    bench.setup.append(catalog)
    register_partitions(
        bench.instance, bench.store, bench.config.model_copy(update={"models": bench.config.models[:-1]})
    )  # the last model arrives in the backfill
    calls, seconds = load_synthetic(root, bench.known, tasks, args.seed, args.workers)
    bench.add_setup(
        "load synthetic runs (load_runs)",
        bench.trajectories,
        seconds,
        f"{calls} calls, {args.workers} processes, no Dagster",
    )
    return bench


def pipeline(bench: Bench) -> tuple[list[StageTiming], StageTiming]:
    """merge -> rules -> judge -> rewards -> pairs -> release over the known models; (rows, judge total)."""
    args, ids = bench.args, bench.instance_ids
    batches = model_batches([p.key for p in bench.known], ids, args.batch)
    bench.memory.stage()
    floor = run_floor(bench.instance, batches)
    floor.partitions = floor.trajectories = bench.trajectories
    floor.note = "the same batched runs, an asset that does nothing"
    bench.floor = floor
    print(f"  done: {format_row(floor)}", flush=True)
    bench.floor_subset = run_floor_subset_planned(bench.instance, batches)
    print(f"  done: {format_row(bench.floor_subset)}", flush=True)
    stages = [
        bench.stage(["merged_trajectories"], batches, bench.trajectories),
        bench.stage(["rule_rewards"], batches, bench.trajectories),
    ]

    live = batches[: max(1, -(-args.judge_live // args.batch))]
    live_keys = {key for batch in live for key in batch}
    cached = [{"model": p.key, "instance": i} for p in bench.known for i in ids if run_key(p.key, i) not in live_keys]
    items, seconds = fill_judge_cache(bench.root, bench.config_path, cached, args.workers)
    bench.add_setup(
        "judge cache fill (in-process)", len(cached), seconds, f"{items} judge requests, scripted judge, no HTTP"
    )
    judge_live = bench.stage(
        ["judge_rewards"], live, len(live_keys), "live: real proxy + scripted baseline judge", None, len(live_keys)
    )
    judge_cached = bench.stage(
        ["judge_rewards"], batches[len(live) :], len(cached), "every verdict from the judge cache", None, len(cached)
    )
    judge = StageTiming(
        "judge_rewards (all)",
        bench.trajectories,
        bench.trajectories,
        peak_mb=max(judge_live.peak_mb, judge_cached.peak_mb),
    )
    for part in (judge_live, judge_cached):
        part.note += f", {part.judge_requests} judge requests"
        judge.add(part)
    rewards = bench.stage(["trajectory_rewards"], batches, bench.trajectories)
    return stages + [
        judge_live,
        judge_cached,
        rewards,
        pairs_stage(bench),
        bench.stage(RELEASE, [[]], 1, name="release (calibration, leaderboard, hf)"),
    ], judge


def pairs_stage(bench: Bench) -> StageTiming:
    """preference_pairs: a probe run first; the rest, or a linear extrapolation if over budget."""
    args, ids = bench.args, bench.instance_ids
    probe = ids[: min(args.pairs_probe, len(ids))]
    # its own counts while it is printed as done, the stage's once the rest is run or extrapolated
    pairs = bench.stage(["preference_pairs"], [probe], len(probe), trajectories=len(probe) * len(bench.known))
    pairs.partitions, pairs.trajectories = len(ids), bench.trajectories
    if len(probe) == len(ids):
        return pairs
    scale = len(ids) / len(probe)
    if pairs.wall_s * scale > args.pairs_budget:
        pairs.note = (
            f"EXTRAPOLATED x{scale:.0f} from the first {len(probe)} instances "
            f"({pairs.wall_s:.0f} s measured); the release has their pairs only"
        )
        extrapolate(pairs, scale)
        pairs.runs = len(chunks(ids, args.batch))
        return pairs
    pairs.add(run_batches(bench.instance, bench.resources, ["preference_pairs"], chunks(ids[len(probe) :], args.batch)))
    pairs.note = f"a first run of {len(probe)} instances, then runs of up to {args.batch}"
    return pairs


def extrapolate(timing: StageTiming, scale: float) -> None:
    timing.wall_s, timing.body_s = timing.wall_s * scale, timing.body_s * scale
    timing.before_s, timing.after_s = timing.before_s * scale, timing.after_s * scale


def backfill(bench: Bench) -> tuple[StageTiming, StageTiming]:
    """The new model over every instance through the per-run stages: batched, then one Dagster
    run per partition (sampled and extrapolated when over budget)."""
    from trajhub_assets.tasks.assets import register_partitions

    args, ids, new = bench.args, bench.instance_ids, bench.new
    register_partitions(bench.instance, bench.store, bench.config)
    calls, seconds = load_synthetic(bench.root, [new], bench.tasks, args.seed, args.workers)
    bench.add_setup(f"load synthetic runs of {new.name}", len(ids), seconds, f"{calls} calls, for the backfill")
    items, seconds = fill_judge_cache(
        bench.root, bench.config_path, [{"model": new.key, "instance": i} for i in ids], args.workers
    )
    bench.add_setup(f"judge cache fill of {new.name}", len(ids), seconds, f"{items} judge requests, no HTTP")

    batched = bench.stage(
        PER_RUN_STAGES,
        model_batches([new.key], ids, args.batch),
        len(ids),
        f"runs of up to {args.batch} partitions",
        name=f"{new.name}: batched",
        trajectories=len(ids),
    )

    # The batched outputs stay: each run below recomputes and overwrites its partition, the same work.
    bench.memory.stage()
    sample = random.Random(args.seed).sample(ids, min(args.per_partition_sample, len(ids)))
    per_partition = run_per_partition(
        bench.instance, bench.resources, PER_RUN_STAGES, [run_key(new.key, i) for i in sample]
    )
    rest = [run_key(new.key, i) for i in ids if i not in set(sample)]
    scale = len(ids) / len(sample)
    sampled = bool(rest) and per_partition.wall_s * scale > args.per_partition_budget
    if sampled:
        extrapolate(per_partition, scale)
        per_partition.runs = len(ids)
        per_partition.note = f"EXTRAPOLATED x{scale:.1f} from a random sample of {len(sample)} partitions"
    else:
        per_partition.add(run_per_partition(bench.instance, bench.resources, PER_RUN_STAGES, rest))
        per_partition.note = "every partition measured"
    per_partition.name = f"{new.name}: one run per partition"
    per_partition.partitions = per_partition.trajectories = len(ids)
    per_partition.peak_mb = bench.memory.stage()
    print(f"  done: {format_row(per_partition)}", flush=True)
    return batched, per_partition


def print_report(
    bench: Bench, stages: list[StageTiming], judge: StageTiming, batched: StageTiming, per_partition: StageTiming
) -> None:
    print("\nsetup (not pipeline stages):")
    print_table(bench.setup)
    print("\npipeline stages (Dagster, SQLite instance, batched runs), after Dagster's floor:")
    print_table([bench.floor, bench.floor_subset, *stages])
    print(
        "\nbackfill of one new model over every instance (merged_trajectories + rule_rewards + judge_rewards"
        " + trajectory_rewards, judge from the cache):"
    )
    print_table([batched, per_partition])
    judge_live = next(s for s in stages if s.note.startswith("live"))
    live_rate = judge_live.wall_s / max(judge_live.partitions, 1)
    print(
        f"live judge: {live_rate:.2f} s per partition through the proxy; judging all {bench.trajectories} "
        f"runs live would take ~{live_rate * bench.trajectories / 60:.0f} min on this machine"
    )
    counts = {
        t: rows_of(bench.store, t)
        for t in (
            "raw_calls",
            "merged_trajectories",
            "rule_steps",
            "judge_steps",
            "trajectory_rewards",
            "preference_pairs",
        )
    }
    release = sorted((bench.root / "home" / "releases").glob("*/*/manifest.json"))
    rows = json.loads(release[-1].read_text()).get("rows") if release else None
    print("rows: " + ", ".join(f"{t}={n}" for t, n in counts.items()) + f", release={rows}")
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"peak RSS: this process {usage:.0f} MB (ru_maxrss), with its children (proxy, workers) "
        f"{bench.memory.peak_tree:.0f} MB (sampled every 0.5 s); store {du(bench.root / 'home') / 1e9:.2f} GB; "
        f"{os.cpu_count()} CPUs shared with other jobs"
    )
    in_pipeline = [s for s in stages if s.name != "judge_rewards"] + [judge]
    floor = bench.floor.trajectories / bench.floor.wall_s
    subset = bench.floor_subset.trajectories / bench.floor_subset.wall_s
    print(
        f"\nDagster's floor: {floor:.1f} partitions/s (no-op body, same batched runs, SQLite instance); "
        f"{subset:.1f} with one planned event per run ({SUBSET_PLANNED_EVENTS}=true)"
    )
    rated = [s for s in stages if s.runs and s.partitions > 1]  # the release is one run: not per partition
    for stage in rated:
        rate = stage.trajectories / stage.wall_s
        target = min(50.0, floor / 1.5)
        print(
            f"  {stage.name:<44} {rate:7.1f} traj/s = {rate / floor:.2f} x floor; target >= {target:.1f} "
            f"(50/s, or floor/1.5 where the floor is below 75/s): {'met' if rate >= target else 'NOT met'}"
        )
        if stage.floor_beside:
            beside = stage.floor_beside.partitions / stage.floor_beside.wall_s
            print(
                f"  {'':<44} {'':7} {'':6} = {rate / beside:.2f} x the floor beside it, {beside:.1f}/s (a floor "
                f"batch just before and one just after): {'met' if rate >= min(50.0, beside / 1.5) else 'NOT met'}"
            )
    release, pipeline_s, scale = stages[-1], sum(s.wall_s for s in in_pipeline), FULL / bench.trajectories
    print(
        f"  release of {bench.trajectories} trajectories: {release.wall_s:.1f} s; post-agent pipeline "
        f"{pipeline_s / 60:.1f} min; peak RSS {bench.memory.peak_tree / 1024:.2f} GB"
        + (
            f"; at these rates {FULL:,} trajectories would take {release.wall_s * scale / 60:.1f} min to release "
            f"(target < 5) and {pipeline_s * scale / 60:.0f} min through the pipeline (target < 30)"
            if scale != 1
            else " (targets: < 5 min, < 30 min, < 4 GB)"
        )
    )
    slowest = min(s.trajectories / s.wall_s for s in rated if not s.note.startswith("live"))
    print(
        f"trajectories_per_s={bench.trajectories / sum(s.wall_s for s in in_pipeline):.2f} "
        f"slowest_stage_per_s={slowest:.1f} "
        f"judge_requests_per_trajectory={judge_live.judge_requests / max(judge_live.partitions, 1):.2f} "
        f"backfill_batched_vs_per_partition={per_partition.wall_s / batched.wall_s:.2f}"
    )


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


if __name__ == "__main__":
    sys.exit(main())
