"""The preference_pairs asset: one instance, every model's trajectories of it."""

from collections import Counter

import duckdb
import pyarrow as pa
from dagster import (
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    MultiToSingleDimensionPartitionMapping,
    asset,
)

from trajhub_assets.automation import FOLLOW_ANY_INPUTS
from trajhub_assets.checks import PAIR_CHECK_SPECS, margin_respected
from trajhub_assets.lineage import reading
from trajhub_assets.merge.schema import MERGED_TRAJECTORIES, table_to_conversations
from trajhub_assets.metadata import PartitionMetadata, batch_totals, table
from trajhub_assets.pairs.pairs import PairPolicy, preference_pairs
from trajhub_assets.pairs.preview import no_pairs_reason, preview_rows
from trajhub_assets.pairs.schema import PREFERENCE_PAIRS
from trajhub_assets.partitions import BATCHED, instances_partitions, model_name
from trajhub_assets.resources import ProjectResource, StoreResource
from trajhub_assets.rewards.schema import JUDGE_STEPS, TRAJECTORY_REWARDS
from trajhub_assets.store import Store, Table

_EVERY_MODEL = MultiToSingleDimensionPartitionMapping(partition_dimension_name="instance")


def named_conversations(table: pa.Table) -> list[dict]:
    """The table's conversations, with meta.model the model's name (not its key)."""
    conversations = table_to_conversations(table)
    for conversation in conversations:
        conversation["meta"]["model"] = model_name(conversation["meta"]["model"])
    return conversations


def instance_rows(
    con: duckdb.DuckDBPyConnection, store: Store, table: Table, instance: str, where: str = "TRUE"
) -> pa.Table | None:
    """Every model's partition of one instance, in one query over just those files (None when there
    are none): a view of the whole table would list, and open, every partition of every instance."""
    try:
        return con.sql(
            "SELECT * FROM read_parquet(?, hive_partitioning = true, hive_types_autocast = false, "
            f"union_by_name = true) WHERE {where}",
            params=[store.instance_glob(table, instance)],
        ).to_arrow_table()
    except duckdb.IOException:  # no model has that partition yet
        return None


def instance_inputs(store: Store, instance: str) -> tuple[list[dict], list[dict], list[dict]]:
    """(main trajectories, trajectory rewards, step rewards) of every model's runs of one instance,
    in no particular order (preference_pairs orders the runs itself)."""
    with store.connect([]) as con:  # one connection: opening one costs more than a small query
        merged, rewards, steps = (
            instance_rows(con, store, table, instance, where)
            for table, where in (
                (MERGED_TRAJECTORIES, "kind = 'main'"),
                (TRAJECTORY_REWARDS, "TRUE"),
                (JUDGE_STEPS, "TRUE"),
            )
        )
    return (
        named_conversations(merged) if merged is not None else [],
        rewards.to_pylist() if rewards is not None else [],
        steps.to_pylist() if steps is not None else [],
    )


@asset(
    name="preference_pairs",
    partitions_def=instances_partitions,
    backfill_policy=BATCHED,
    group_name="pairs",
    kinds={"parquet"},
    check_specs=PAIR_CHECK_SPECS,
    automation_condition=FOLLOW_ANY_INPUTS,
    **reading(MERGED_TRAJECTORIES, TRAJECTORY_REWARDS, JUDGE_STEPS, partition_mapping=_EVERY_MODEL),
    description="DPO pairs (TRL conversational format) among all runs of one instance.",
)
def preference_pairs_asset(
    context: AssetExecutionContext, store: StoreResource, project: ProjectResource
) -> MaterializeResult:
    store, config = store.get(), project.load()
    policy = PairPolicy.from_config(config.release)
    stats, coverage = Counter(), Counter()
    metadata = PartitionMetadata(context, len(context.partition_keys))
    written = []  # what the check looks at: the tables just written
    for instance in context.partition_keys:
        result = preference_pairs(*instance_inputs(store, instance), policy)
        store.write(PREFERENCE_PAIRS, result.table, {"instance": instance})
        written.append(result.table)
        counts = {k: v for k, v in result.stats.items() if isinstance(v, int)} | {"pairs": result.table.num_rows}
        if metadata.per_partition:
            preview = (
                table(preview_rows(result.table))
                if result.table.num_rows
                else MetadataValue.text(no_pairs_reason(counts))
            )
            metadata.add(
                instance,
                counts | {"preview": preview, "pairs_per_model": MetadataValue.json(result.stats["model_coverage"])},
            )
        stats.update(counts)
        coverage.update(result.stats["model_coverage"])
    return MaterializeResult(
        check_results=[margin_respected(pa.concat_tables(written), policy.min_margin)],
        metadata=batch_totals(stats, len(context.partition_keys))
        | {"batch_pairs_per_model": MetadataValue.json(dict(sorted(coverage.items())))}
        | metadata.batch(),
    )
