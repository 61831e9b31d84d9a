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

import pyarrow.compute as pc
from dagster import AssetExecutionContext, MaterializeResult, asset

from trajhub_assets.automation import JUDGE_POOL, SANDBOX_POOL
from trajhub_assets.branching.accounting import outcome_counts, partition_accounting
from trajhub_assets.branching.branches import continue_at, store_branches
from trajhub_assets.branching.points import BranchPoint, branch_points
from trajhub_assets.branching.schema import (
    BRANCH_JUDGE_CHECKS,
    BRANCH_JUDGE_STEPS,
    BRANCH_JUDGE_SUMMARY,
    BRANCH_MESSAGE_BLOBS,
    BRANCH_PAIRS,
    BRANCH_RAW_CALLS,
    BRANCH_RULE_STEPS,
    BRANCH_RULE_SUMMARY,
    BRANCH_RUNS,
    BRANCH_TRAJECTORY_REWARDS,
    BRANCHED_TRAJECTORIES,
)
from trajhub_assets.lineage import reading
from trajhub_assets.merge.assets import merge_partition
from trajhub_assets.merge.schema import MERGED_TRAJECTORIES, conversations_to_table, table_to_conversations
from trajhub_assets.metadata import PartitionMetadata, batch_totals
from trajhub_assets.pairs.assets import instance_inputs
from trajhub_assets.pairs.pairs import PairPolicy
from trajhub_assets.pairs.pairs import branch_pairs as pair_branches
from trajhub_assets.partitions import BATCHED, model_name, run_key, run_partitions, run_partitions_of
from trajhub_assets.progress import Progress, fail_if_all_failed
from trajhub_assets.recording.raw_calls import rebuild_records
from trajhub_assets.recording.resources import ProxyResource
from trajhub_assets.recording.schema import MESSAGE_BLOBS, RAW_CALLS, RUNS
from trajhub_assets.replay.recorded import load_recorded_run
from trajhub_assets.replay.service import ReplayService
from trajhub_assets.resources import ProjectResource, StoreResource
from trajhub_assets.rewards.assets import instance_median_steps, judge_endpoint, judge_headers
from trajhub_assets.rewards.judge import Judge, JudgeUsage, default_cache, judge_partition
from trajhub_assets.rewards.rules import RuleContext, build_run, group_runs, rule_tables
from trajhub_assets.rewards.schema import JUDGE_STEPS, RULE_STEPS
from trajhub_assets.rewards.trajectory import trajectory_rewards
from trajhub_assets.store import Store
from trajhub_assets.tasks.catalog import stored_tasks
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
    if not merged or not config.branching.branches(model_name(partition["model"])):
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
    context: AssetExecutionContext, store: StoreResource, project: ProjectResource, proxy: ProxyResource
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
                    proxy,  # a provider's model continues through it, as its runs did
                )
            ]
            if rows:
                store_branches(store, rows, service.recordings_dir)
            conversations = merge_branches(store, partition)
            # this materialization's new points and continuations (`points` the planned ones)
            counts = outcome_counts(rows) | {"points": len(points), "branch_conversations": len(conversations)}
            # and what every branch stored for the partition (earlier ones too) came to and cost
            stored, _ = partition_accounting(store, partition, conversations)
            for name in ("continuations", "live_calls", "live_calls_without_cost", "tokens_in", "tokens_out"):
                counts[f"stored_{name}"] = stored[name]
            counts["stored_cost_usd"] = round(float(stored["cost_usd"]), 6)
            if rows and counts["failed"] == len(rows):
                failed.append(f"{run_key(partition['model'], partition['instance'])}: {rows[0]['error']}")
            metadata.add(run_key(partition["model"], partition["instance"]), counts)
            totals.update(counts)
            progress.advance(continuations=len(rows), cost_usd=stored["cost_usd"])
    with_points = sum(1 for _, _, points in plans if points)
    first = failed[0] if failed else ""
    fail_if_all_failed("partitions of this batch with branch points", with_points, len(failed), first)
    runs_branched = len({p.run_id for _, _, points in plans for p in points})
    accounting = {  # of this batch's new points
        "batch_runs_branched": runs_branched,
        "batch_points_per_branched_run": round(totals["points"] / runs_branched, 3) if runs_branched else 0.0,
        "batch_samples_per_point": config.branching.samples,
    }
    return MaterializeResult(metadata=batch_totals(totals, len(partitions)) | accounting | metadata.batch())


def score_branches(store: Store, partition: dict, task: dict, config, judge: Judge, median: float | None) -> dict:
    """Score one partition's continuations as rule_rewards, judge_rewards and trajectory_rewards
    score runs (refused and failed ones are not scored: there is nothing of theirs to score),
    write the branch reward tables; the judge's usage and the counts."""
    outcomes = {r["run_id"]: r for r in store.read(BRANCH_RUNS, partition).to_pylist() if r["error"] is None}
    conversations = [
        c
        for c in table_to_conversations(store.read(BRANCHED_TRAJECTORIES, partition), **partition)
        if c["meta"]["run_id"] in outcomes
    ]
    context = RuleContext.from_config(config.rewards, median_steps=median)
    rule_steps, rule_summary = rule_tables(conversations, outcomes, task, context)
    judged = judge_partition(conversations, task, outcomes, judge, judge_headers(config.judge, partition["instance"]))
    rewards = trajectory_rewards(judged.summary, rule_summary, outcomes, config.rewards)
    for table, rows in (
        (BRANCH_RULE_STEPS, rule_steps),
        (BRANCH_RULE_SUMMARY, rule_summary),
        (BRANCH_JUDGE_CHECKS, judged.checks),
        (BRANCH_JUDGE_STEPS, judged.steps),
        (BRANCH_JUDGE_SUMMARY, judged.summary),
        (BRANCH_TRAJECTORY_REWARDS, rewards),
    ):
        store.write(table, rows, partition)
    errors = [
        f"{r['run_id']}: {r['error']}" for t in (judged.steps, judged.checks) for r in t.to_pylist() if r["error"]
    ]
    counts = {"scored": len(outcomes), "rule_hits": rule_steps.num_rows, "judge_errors": len(errors)}
    return {"usage": judged.usage, "counts": counts, "first_error": errors[0] if errors else ""}


@asset(
    partitions_def=run_partitions,
    backfill_policy=BATCHED,
    group_name="branching",
    **reading(BRANCHED_TRAJECTORIES, BRANCH_RUNS, MERGED_TRAJECTORIES, TASKS),
    kinds={"parquet"},
    pool=JUDGE_POOL,
    description="The continuations scored as runs are: rules, the judge, and the trajectory reward.",
)
def branch_rewards(
    context: AssetExecutionContext, store: StoreResource, project: ProjectResource, proxy: ProxyResource
) -> MaterializeResult:
    store, config = store.get(), project.load()
    tasks, partitions = stored_tasks(store), run_partitions_of(context)
    metadata = PartitionMetadata(context, len(partitions))
    usage, totals, medians, first_error = JudgeUsage(), Counter(), {}, ""
    with Judge(config.judge, default_cache(store.root), proxy=judge_endpoint(config.judge, proxy)) as judge:
        for partition in partitions:
            if not store.exists(BRANCHED_TRAJECTORIES, partition):
                metadata.add(run_key(partition["model"], partition["instance"]), {"scored": 0})
                continue
            instance = partition["instance"]
            if instance not in medians:  # the recorded runs' median length: a continuation is judged by it too
                medians[instance] = instance_median_steps(store, instance)
            scored = score_branches(store, partition, tasks[instance], config, judge, medians[instance])
            metadata.add(run_key(partition["model"], instance), scored["counts"] | scored["usage"].metadata())
            usage, first_error = usage + scored["usage"], first_error or scored["first_error"]
            totals.update(scored["counts"])
    if judge.budget_reached:
        context.log.warning(judge.budget_reached)
    fail_if_all_failed("judge items of this batch's continuations", usage.items, usage.errors, first_error)
    return MaterializeResult(metadata=batch_totals(dict(totals) | usage.metadata(), len(partitions)) | metadata.batch())


@asset(
    partitions_def=run_partitions,
    backfill_policy=BATCHED,
    group_name="branching",
    **reading(BRANCHED_TRAJECTORIES, BRANCH_RUNS, BRANCH_TRAJECTORY_REWARDS, BRANCH_JUDGE_STEPS, BRANCH_RULE_STEPS),
    kinds={"parquet"},
    description="DPO pairs of the continuations of each branch point: their first differing turn "
    "(branch_step) and their whole continuations (branch_continuation), chosen by tests, then reward.",
)
def branch_pairs(context: AssetExecutionContext, store: StoreResource, project: ProjectResource) -> MaterializeResult:
    store, config = store.get(), project.load()
    policy = PairPolicy.from_config(config.release)
    partitions = run_partitions_of(context)
    metadata, totals = PartitionMetadata(context, len(partitions)), Counter()
    for partition in partitions:
        if not store.exists(BRANCH_TRAJECTORY_REWARDS, partition):
            metadata.add(run_key(partition["model"], partition["instance"]), {"pairs": 0})
            continue
        merged = store.read(BRANCHED_TRAJECTORIES, partition)
        model, instance = model_name(partition["model"]), partition["instance"]
        result = pair_branches(
            table_to_conversations(merged.filter(pc.equal(merged["kind"], "main")), model=model, instance=instance),
            store.read(BRANCH_RUNS, partition).to_pylist(),
            store.read(BRANCH_TRAJECTORY_REWARDS, partition).to_pylist(),
            store.read(BRANCH_JUDGE_STEPS, partition).to_pylist(),
            store.read(BRANCH_RULE_STEPS, partition).to_pylist(),
            policy,
        )
        store.write(BRANCH_PAIRS, result.table, partition)
        counts = result.stats | {"pairs": result.table.num_rows}
        metadata.add(run_key(partition["model"], instance), counts)
        totals.update(counts)
    return MaterializeResult(metadata=batch_totals(dict(totals), len(partitions)) | metadata.batch())
