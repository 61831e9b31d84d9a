"""The merged_trajectories asset: a run's recorded calls → the conversations that happened."""

from collections import Counter, defaultdict

from dagster import AssetExecutionContext, MaterializeResult, asset

from trajhub_assets.automation import FOLLOW_INPUTS
from trajhub_assets.checks import MERGED_CHECK_SPECS, generation_flags_consistent, no_orphan_tool_results
from trajhub_assets.lineage import reading
from trajhub_assets.merge.merge import merge_calls
from trajhub_assets.merge.schema import MERGED_TRAJECTORIES, conversations_to_table
from trajhub_assets.metadata import PartitionMetadata, batch_totals, table
from trajhub_assets.partitions import BATCHED, run_key, run_partitions, run_partitions_of
from trajhub_assets.progress import Progress, fail_if_all_failed
from trajhub_assets.recording.raw_calls import rebuild_records
from trajhub_assets.recording.run_id import parse_run_id
from trajhub_assets.recording.schema import MESSAGE_BLOBS, RAW_CALLS
from trajhub_assets.resources import StoreResource


def merge_partition(records: list[dict], model: str, instance: str) -> list[dict]:
    """The conversations of every run in one (model, instance) partition, run by run."""
    by_run: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_run[record["run_id"]].append(record)
    return [
        conversation
        for run_id, calls in sorted(by_run.items())
        for conversation in merge_calls(
            calls, run_id=run_id, model=model, instance=instance, attempt=parse_run_id(run_id).attempt
        )
    ]


def conversations_summary(conversations: list[dict]) -> dict:
    """A partition's conversations for the UI: counts, and conversations per kind."""
    kinds = Counter(c["meta"]["kind"] for c in conversations)
    return {
        "conversations": len(conversations),
        "messages": sum(len(c["messages"]) for c in conversations),
        "kinds": [{"kind": kind, "conversations": n} for kind, n in kinds.most_common()],
    }


@asset(
    partitions_def=run_partitions,
    backfill_policy=BATCHED,
    group_name="merge",
    **reading(RAW_CALLS, MESSAGE_BLOBS),
    kinds={"parquet"},
    check_specs=MERGED_CHECK_SPECS,
    automation_condition=FOLLOW_INPUTS,
    description="Whole conversations rebuilt from each run's calls, with generation flags.",
)
def merged_trajectories(context: AssetExecutionContext, store: StoreResource) -> MaterializeResult:
    store = store.get()
    totals, written, empty = Counter(), [], []
    partitions = run_partitions_of(context)
    progress = Progress(context.log, len(partitions), "partitions")
    metadata = PartitionMetadata(context, len(partitions))
    for partition in partitions:
        records = rebuild_records(store.read(RAW_CALLS, partition), store.read(MESSAGE_BLOBS, partition))
        conversations = merge_partition(records, partition["model"], partition["instance"])
        store.write(MERGED_TRAJECTORIES, conversations_to_table(conversations), partition)
        summary = conversations_summary(conversations)
        key = run_key(partition["model"], partition["instance"])
        metadata.add(key, summary | {"kinds": table(summary["kinds"], ["kind", "conversations"])})
        totals.update(conversations=summary["conversations"], messages=summary["messages"])
        written += conversations
        if not conversations:
            empty.append(key)
        progress.advance(calls=len(records), conversations=len(conversations))
    fail_if_all_failed(
        "partitions of this batch",
        len(partitions),
        len(empty),
        f"{empty[0]}: no recorded call of its runs made a conversation" if empty else "",
    )
    checks = [generation_flags_consistent(written), no_orphan_tool_results(written)]
    return MaterializeResult(check_results=checks, metadata=batch_totals(totals, len(partitions)) | metadata.batch())
