"""The reward assets: rule_rewards (free, deterministic), judge_rewards (LLM judge), and
trajectory_rewards, the configured weighting of both with the run's outcome."""

import json
import os
import uuid
from collections.abc import Callable, Iterator, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from dagster import AssetExecutionContext, MaterializeResult, asset

from trajhub_assets.automation import FOLLOW_INPUTS, JUDGE_POOL
from trajhub_assets.checks import (
    JUDGE_CHECK_SPECS,
    RULE_CHECK_SPECS,
    TRAJECTORY_CHECK_SPECS,
    every_rule_hit_has_evidence,
    judge_values_in_range,
    rule_values_in_range,
    trajectory_rewards_in_range,
)
from trajhub_assets.config import JudgeConfig, RewardConfig
from trajhub_assets.lineage import reading
from trajhub_assets.merge.schema import MERGED_TRAJECTORIES, table_to_conversations
from trajhub_assets.metadata import PartitionMetadata, batch_totals, table
from trajhub_assets.partitions import BATCHED, model_key, model_name, run_key, run_partitions, run_partitions_of
from trajhub_assets.progress import Progress, fail_if_all_failed
from trajhub_assets.recording.resources import ProxyResource
from trajhub_assets.recording.run_id import make_run_id, run_headers
from trajhub_assets.recording.schema import RUNS
from trajhub_assets.resources import ProjectResource, StoreResource
from trajhub_assets.rewards.judge import Judge, JudgeUsage, default_cache, judge_partition
from trajhub_assets.rewards.preview import REWARDS_SHOWN, hits_per_rule, reward_stats, rewards_preview
from trajhub_assets.rewards.rules import MAIN_AGENT_KINDS, RULESET_VERSION, RuleContext, median_steps, rule_tables
from trajhub_assets.rewards.schema import (
    JUDGE_CHECKS,
    JUDGE_STEPS,
    JUDGE_SUMMARY,
    RULE_STEPS,
    RULE_SUMMARY,
    TRAJECTORY_REWARDS,
)
from trajhub_assets.rewards.trajectory import trajectory_rewards
from trajhub_assets.store import Store
from trajhub_assets.tasks.catalog import stored_tasks
from trajhub_assets.tasks.schema import TASKS

# What the rules, the judge's prompt and the trajectory reward read of a run's outcome: `runs`
# has 27 columns, and reading these few takes half the time (test_rules holds the list to them).
OUTCOME_COLUMNS = [
    "run_id",
    "tests_total",
    "tests_passed",
    "tests_failed",
    "test_exit_code",
    "timed_out",
    "agent_exit_code",
    "diff",
]


def run_outcomes(store: Store, partition: dict) -> dict[str, dict]:
    """The outcome (OUTCOME_COLUMNS of its `runs` row) of each run of one (model, instance)
    partition, by run_id."""
    return {row["run_id"]: row for row in store.read(RUNS, partition, OUTCOME_COLUMNS).to_pylist()}


def partition_inputs(store: Store, partition: dict) -> tuple[list[dict], dict[str, dict]]:
    """(conversations, outcomes by run_id) of one (model, instance) partition."""
    conversations = table_to_conversations(store.read(MERGED_TRAJECTORIES, partition), **partition)
    return conversations, run_outcomes(store, partition)


def instance_lengths(store: Store, instance: str) -> dict[str, int]:
    """Main-agent steps (trajectory_lengths) of every model's runs of one instance, by run_id.

    Every model's batch needs them, so each partition's lengths are kept under
    <root>/cache/trajectory_lengths/<instance>.json with the file's version, and a file is read
    again only when it changed: per run, rule_rewards reads the instance's other partitions once,
    not once per model. A read takes three columns: a conversation's `n_generations` counts its
    generated assistant messages (merged_trajectories' blocking check
    generation_flags_consistent holds it to them), and side or subagent conversations add none.
    """
    cache = store.root / "cache" / "trajectory_lengths" / f"{instance}.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    files = store.instance_files(MERGED_TRAJECTORIES, instance)
    fresh = {path: known[path] for path, version in files.items() if known.get(path, {}).get("version") == version}
    if stale := [path for path in files if path not in fresh]:
        for path in stale:  # pyarrow, not a DuckDB connection: opening one costs more than the read
            with store.open_file(path) as file:  # ParquetFile: half the time of read_table's dataset machinery
                read = pq.ParquetFile(file).read(columns=["run_id", "kind", "n_generations"]).to_pydict()
            lengths: dict[str, int] = {}
            for run_id, kind, generations in zip(read["run_id"], read["kind"], read["n_generations"], strict=True):
                steps = (generations or 0) if kind in MAIN_AGENT_KINDS else 0
                lengths[run_id or ""] = lengths.get(run_id or "", 0) + steps
            fresh[path] = {"version": files[path], "lengths": lengths}
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(fresh, sort_keys=True))
        os.replace(tmp, cache)  # whole or not at all: batches of other models read it too
    return {run_id: steps for entry in fresh.values() for run_id, steps in entry["lengths"].items()}


def instance_median_steps(store: Store, instance: str) -> float | None:
    """The median trajectory length of an instance across every model stored so far."""
    return median_steps(instance_lengths(store, instance).values())


def score_rule_partitions(
    store: Store, partitions: list[dict], tasks: Mapping[str, dict], rewards: RewardConfig
) -> Iterator[tuple[dict, pa.Table, pa.Table]]:
    """rule_rewards' work: score and write each partition; yields (partition, steps, summary)."""
    medians = {}
    for partition in partitions:
        conversations, outcomes = partition_inputs(store, partition)
        instance = partition["instance"]
        if instance not in medians:  # every model's runs of it: from the lengths cache, once per batch
            medians[instance] = instance_median_steps(store, instance)
        rule_context = RuleContext.from_config(rewards, median_steps=medians[instance])
        steps, summary = rule_tables(conversations, outcomes, tasks[instance], rule_context)
        store.write(RULE_STEPS, steps, partition)
        store.write(RULE_SUMMARY, summary, partition)
        yield partition, steps, summary


# Also reads every model's merged partitions of the instance (three columns, each file once while
# it is unchanged: instance_lengths), for its median trajectory length; the dep stays on its own
# partition so a model that has not run yet holds nothing back.
@asset(
    partitions_def=run_partitions,
    backfill_policy=BATCHED,
    group_name="rewards",
    **reading(MERGED_TRAJECTORIES, RUNS, TASKS),
    kinds={"parquet"},
    check_specs=RULE_CHECK_SPECS,
    automation_condition=FOLLOW_INPUTS,
    description="Deterministic rules per step with their evidence, and a summary per run.",
)
def rule_rewards(context: AssetExecutionContext, store: StoreResource, project: ProjectResource) -> MaterializeResult:
    store, config = store.get(), project.load()
    partitions = run_partitions_of(context)
    metadata = PartitionMetadata(context, len(partitions))
    written_steps, written_summaries = [], []  # what the checks look at: the tables just written
    for partition, steps, summary in score_rule_partitions(store, partitions, stored_tasks(store), config.rewards):
        if metadata.per_partition:
            metadata.add(
                run_key(partition["model"], partition["instance"]),
                {"rule_hits": steps.num_rows, "hits_per_rule": table(hits_per_rule(summary))},
            )
        written_steps.append(steps)
        written_summaries.append(summary)
    steps, summary = pa.concat_tables(written_steps), pa.concat_tables(written_summaries)
    return MaterializeResult(
        check_results=[rule_values_in_range(steps, summary), every_rule_hit_has_evidence(steps)],
        metadata=batch_totals({"rule_hits": steps.num_rows}, len(partitions))
        | {"ruleset_version": RULESET_VERSION}
        | metadata.batch(),
    )


def judge_endpoint(judge: JudgeConfig, proxy: ProxyResource) -> Callable[[], tuple[str, str]] | None:
    """None for a judge with its own endpoint (it takes its own key from the config), else
    our proxy's URL and key, as a callable: the Judge calls it on its first cache miss, so a
    fully cached run never starts the proxy."""
    if judge.base_url:
        return None
    return lambda: (proxy.openai_base_url, proxy.key)


def judge_headers(judge: JudgeConfig, instance: str) -> dict[str, str]:
    """The run id under which our proxy records the judge's calls for an instance."""
    if judge.base_url:
        return {}
    return run_headers(make_run_id(model_key(f"judge/{judge.model}"), instance, 0))


@asset(
    partitions_def=run_partitions,
    backfill_policy=BATCHED,
    group_name="rewards",
    **reading(MERGED_TRAJECTORIES, RUNS, TASKS),
    kinds={"parquet"},
    pool=JUDGE_POOL,
    check_specs=JUDGE_CHECK_SPECS,
    automation_condition=FOLLOW_INPUTS,
    description="Checklist verdicts and per-step rubric scores from the judge, with reasons.",
)
def judge_rewards(
    context: AssetExecutionContext, store: StoreResource, project: ProjectResource, proxy: ProxyResource
) -> MaterializeResult:
    store, config = store.get(), project.load()
    tasks = stored_tasks(store)
    usage, first_error = JudgeUsage(), None
    partitions = run_partitions_of(context)
    progress = Progress(context.log, len(partitions), "partitions judged")
    metadata = PartitionMetadata(context, len(partitions))
    written_steps, written_summaries = [], []  # what the check looks at: the tables just written
    # One Judge for the batch: the run budget spans it, and the proxy starts on its first miss only.
    with Judge(config.judge, default_cache(store.root), proxy=judge_endpoint(config.judge, proxy)) as judge:
        for partition in partitions:
            conversations, outcomes = partition_inputs(store, partition)
            out = judge_partition(
                conversations,
                tasks[partition["instance"]],
                outcomes,
                judge,
                judge_headers(config.judge, partition["instance"]),
            )
            store.write(JUDGE_CHECKS, out.checks, partition)
            store.write(JUDGE_STEPS, out.steps, partition)
            store.write(JUDGE_SUMMARY, out.summary, partition)
            written_steps.append(out.steps)
            written_summaries.append(out.summary)
            usage = usage + out.usage
            metadata.add(run_key(partition["model"], partition["instance"]), out.usage.metadata())
            first_error = first_error or next(
                (
                    f"{row['run_id']}: {row['error']}"
                    for judged in (out.steps, out.checks)
                    for row in judged.filter(pc.fill_null(pc.not_equal(judged["error"], ""), False))
                    .select(["run_id", "error"])
                    .to_pylist()
                ),
                None,
            )
            progress.advance(
                f"{partition['model']} on {partition['instance']}",
                tokens_in=out.usage.prompt_tokens,
                tokens_out=out.usage.completion_tokens,
                cost_usd=out.usage.cost_usd,
                judge_calls=out.usage.requests,
                cache_hits=out.usage.cache_hits,
            )
    if judge.budget_reached:
        context.log.warning(judge.budget_reached)
    fail_if_all_failed("judge items of this batch", usage.items, usage.errors, first_error or "")
    check = judge_values_in_range(pa.concat_tables(written_steps), pa.concat_tables(written_summaries))
    return MaterializeResult(
        check_results=[check], metadata=batch_totals(usage.metadata(), len(partitions)) | metadata.batch()
    )


@asset(
    name="trajectory_rewards",
    partitions_def=run_partitions,
    backfill_policy=BATCHED,
    group_name="rewards",
    **reading(RULE_SUMMARY, JUDGE_SUMMARY, RUNS),
    kinds={"parquet"},
    check_specs=TRAJECTORY_CHECK_SPECS,
    automation_condition=FOLLOW_INPUTS,
    description="Each run's reward: the config's weights (rewards.trajectory_weights) over its "
    "outcome, rule score, mean step reward and checklist pass rate.",
)
def trajectory_rewards_asset(
    context: AssetExecutionContext, store: StoreResource, project: ProjectResource
) -> MaterializeResult:
    store, config = store.get(), project.load()
    partitions, rewards, written = run_partitions_of(context), [], []
    metadata = PartitionMetadata(context, len(partitions))
    for partition in partitions:
        rewarded = trajectory_rewards(
            store.read(JUDGE_SUMMARY, partition),
            store.read(RULE_SUMMARY, partition),
            run_outcomes(store, partition),
            config.rewards,
        )
        store.write(TRAJECTORY_REWARDS, rewarded, partition)
        written.append(rewarded)  # what the check looks at
        partition_rewards = [(model_name(partition["model"]), r["reward"]) for r in rewarded.to_pylist()]
        rewards += partition_rewards
        # One model per partition: its stats are the partition's (none when it has no run).
        stats = (reward_stats(partition_rewards) or [{"runs": 0}])[0]
        metadata.add(
            run_key(partition["model"], partition["instance"]),
            {k: v for k, v in stats.items() if k != "model"}
            | {"rewards": table(rewards_preview(rewarded), REWARDS_SHOWN)},
        )
    written = pa.concat_tables(written)
    return MaterializeResult(
        check_results=[trajectory_rewards_in_range(written)],
        metadata=batch_totals({"runs": written.num_rows}, len(partitions))
        | {"batch_rewards_per_model": table(reward_stats(rewards))}
        | metadata.batch(),
    )
