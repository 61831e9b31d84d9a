"""The branched_trajectories asset: each partition's recorded runs continued from their branch points.

For each (model, instance) of the batch: the branch points of its runs (branching.points, from
the merged steps, the judge's and the rules' step scores and the instance's other runs), less
the points already branched; `branching.samples` continuations of each, through one replay
proxy for the batch (branches.py); the continuations stored in the branch tables; and every
continuation of the partition merged into `branched_trajectories` (merged_trajectories'
schema), so what reads conversations reads them. A re-materialization branches only new
points. `branching.max_per_release` counts every branch point already stored.
"""

from collections import Counter
from contextlib import nullcontext

from dagster import AssetExecutionContext, MaterializeResult, asset

from trajhub_assets.automation import SANDBOX_POOL
from trajhub_assets.branching.branches import continue_at, store_branches
from trajhub_assets.branching.points import BranchPoint, branch_points
from trajhub_assets.branching.schema import BRANCH_MESSAGE_BLOBS, BRANCH_RAW_CALLS, BRANCH_RUNS, BRANCHED_TRAJECTORIES
from trajhub_assets.lineage import reading
from trajhub_assets.merge.assets import merge_partition
from trajhub_assets.merge.schema import MERGED_TRAJECTORIES, conversations_to_table, table_to_conversations
from trajhub_assets.metadata import PartitionMetadata, batch_totals
from trajhub_assets.pairs.assets import instance_inputs
from trajhub_assets.partitions import BATCHED, run_key, run_partitions, run_partitions_of
from trajhub_assets.progress import Progress, fail_if_all_failed
from trajhub_assets.recording.raw_calls import rebuild_records
from trajhub_assets.recording.schema import MESSAGE_BLOBS, RAW_CALLS, RUNS
from trajhub_assets.replay.recorded import load_recorded_run
from trajhub_assets.replay.service import ReplayService
from trajhub_assets.resources import ProjectResource, StoreResource
from trajhub_assets.rewards.rules import build_run, group_runs
from trajhub_assets.rewards.schema import JUDGE_STEPS, RULE_STEPS
from trajhub_assets.store import Store
from trajhub_assets.tasks.schema import TASKS


def _by_run(rows: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["run_id"], []).append(row)
    return grouped


def branched_points(store: Store) -> set[tuple[str, int]]:
    """(parent run, step) of every branch stored."""
    if BRANCH_RUNS.name not in store.table_names():
        return set()
    rows = store.sql(f"SELECT DISTINCT parent_run_id, branch_step FROM {BRANCH_RUNS.name}").to_pylist()
    return {(row["parent_run_id"], row["branch_step"]) for row in rows}


def partition_points(
    store: Store, config, partition: dict, merged: dict[str, list[dict]], done: set, budget: int | None
) -> list[BranchPoint]:
    """The partition's new branch points (see branching.points) not yet branched, given its
    merged conversations by run."""
    if not merged:
        return []
    runs = {run_id: build_run(conversations).main_steps for run_id, conversations in merged.items()}
    peers_conversations, _, judged = instance_inputs(store, partition["instance"])
    peers = {
        run_id: build_run(conversations).main_steps
        for run_id, conversations in group_runs(peers_conversations).items()
        if run_id not in runs
    }
    rules = store.read(RULE_STEPS, partition).to_pylist() if store.exists(RULE_STEPS, partition) else []
    return branch_points(runs, _by_run(judged), _by_run(rules), config.branching, peers=peers, skip=done, budget=budget)


def merge_branches(store: Store, partition: dict) -> list[dict]:
    """Every stored continuation of the partition, merged, written to branched_trajectories."""
    if not store.exists(BRANCH_RAW_CALLS, partition):
        return []
    records = rebuild_records(store.read(BRANCH_RAW_CALLS, partition), store.read(BRANCH_MESSAGE_BLOBS, partition))
    conversations = merge_partition(records, partition["model"], partition["instance"])
    store.write(BRANCHED_TRAJECTORIES, conversations_to_table(conversations), partition)
    return conversations


@asset(
    partitions_def=run_partitions,
    backfill_policy=BATCHED,
    group_name="branching",
    **reading(TASKS, RUNS, RAW_CALLS, MESSAGE_BLOBS, MERGED_TRAJECTORIES, RULE_STEPS, JUDGE_STEPS),
    kinds={"docker", "parquet"},
    pool=SANDBOX_POOL,
    description="Each recorded run continued live from its branch points (branching in the project "
    "file), the recorded prefix served again and verified; the continuations merged.",
)
def branched_trajectories(
    context: AssetExecutionContext, store: StoreResource, project: ProjectResource
) -> MaterializeResult:
    store, config = store.get(), project.load()
    partitions = run_partitions_of(context)
    done = branched_points(store)
    limit = config.branching.max_per_release
    plans = []  # (partition, its merged conversations by run, its new points)
    for partition in partitions:
        budget = None if limit is None else max(0, limit - len(done) - sum(len(p) for _, _, p in plans))
        merged = (
            group_runs(table_to_conversations(store.read(MERGED_TRAJECTORIES, partition)))
            if store.exists(MERGED_TRAJECTORIES, partition)
            else {}
        )
        plans.append((partition, merged, partition_points(store, config, partition, merged, done, budget)))
    recorded = {p.run_id: load_recorded_run(store, p.run_id, config) for _, _, points in plans for p in points}
    totals, failed = Counter(), []
    metadata = PartitionMetadata(context, len(partitions))
    progress = Progress(context.log, len(partitions), "partitions branched")
    service = ReplayService(list(recorded.values()), store.root, config.sandbox, purpose="branches")
    with service if recorded else nullcontext():  # no point: no proxy started
        for partition, merged, points in plans:
            rows = [
                row
                for point in points
                for row in continue_at(
                    recorded[point.run_id],
                    merged[point.run_id],
                    point.step,
                    config.branching.samples,
                    service,
                    config.sandbox,
                )
            ]
            if rows:
                store_branches(store, rows, service.recordings_dir)
            conversations = merge_branches(store, partition)
            counts = {
                "points": len(points),
                "continuations": len(rows),
                "refused": sum(str(r["error"] or "").startswith("branch refused") for r in rows),
                "failed": sum(r["error"] is not None for r in rows),
                "resolved": sum(bool(r["resolved"]) for r in rows),
                "branch_conversations": len(conversations),
            }
            if rows and counts["failed"] == len(rows):
                failed.append(f"{run_key(partition['model'], partition['instance'])}: {rows[0]['error']}")
            metadata.add(run_key(partition["model"], partition["instance"]), counts)
            totals.update(counts)
            progress.advance(continuations=len(rows))
    with_points = sum(1 for _, _, points in plans if points)
    first = failed[0] if failed else ""
    fail_if_all_failed("partitions of this batch with branch points", with_points, len(failed), first)
    return MaterializeResult(metadata=batch_totals(totals, len(partitions)) | metadata.batch())
