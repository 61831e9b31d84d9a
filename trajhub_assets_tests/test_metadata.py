"""The plain functions behind the assets' metadata in the Dagster UI (no Dagster run needed)."""

import os
import socket

import pyarrow as pa

from trajhub_assets.merge.assets import conversations_summary
from trajhub_assets.metadata import batch_totals, table
from trajhub_assets.pairs.preview import messages_text, no_pairs_reason, preview_rows
from trajhub_assets.pairs.schema import PREFERENCE_PAIRS
from trajhub_assets.recording.attempts import runs_preview, runs_summary
from trajhub_assets.release.preview import card_body
from trajhub_assets.rewards.preview import hits_per_rule, reward_stats
from trajhub_assets.rewards.schema import RULE_SUMMARY

RUN_ID = "baseline__careful~demo-csv-quoting~0~31444e97"


def test_table_keeps_ids_as_text_and_types_columns_by_value():
    value = table([{"run_id": RUN_ID, "tests": None, "reward": 0.5}, {"run_id": "x", "tests": 3, "reward": None}])
    assert [c.type for c in value.schema.columns] == ["string", "int", "float"]
    assert value.records[0].data["run_id"] == RUN_ID


def test_batch_totals_are_named_as_such():
    assert batch_totals({"runs": 32, "calls": 186}, 16) == {
        "batch_partitions": 16,
        "batch_runs": 32,
        "batch_calls": 186,
        "batch_worker": f"{socket.gethostname()}:{os.getpid()}",
    }


def test_runs_summary_counts_one_partition():
    rows = [
        {
            "run_id": RUN_ID,
            "attempt": 0,
            "stop_reason": "finished",
            "resolved": True,
            "tests_passed": 9,
            "tests_total": 9,
            "error": None,
            "diff": "...",
        },
        {
            "run_id": "r2",
            "attempt": 1,
            "stop_reason": "error",
            "resolved": None,
            "tests_passed": None,
            "tests_total": None,
            "error": "sandbox would not start",
            "diff": None,
        },
    ]
    usages = [{"tokens_in": 60, "tokens_out": 30, "cost_usd": 0.001, "calls": 6}, {}]
    assert runs_summary(rows, usages) == {
        "runs": 2,
        "failed": 1,
        "resolved": 1,
        "tokens_in": 60,
        "tokens_out": 30,
        "cost_usd": 0.001,
    }
    assert "diff" not in runs_preview(rows)[0] and runs_preview(rows)[1]["error"] == "sandbox would not start"


def test_conversations_summary_counts_kinds():
    conversations = [{"meta": {"kind": k}, "messages": [{}] * n} for k, n in (("main", 5), ("title", 2), ("main", 3))]
    assert conversations_summary(conversations) == {
        "conversations": 3,
        "messages": 10,
        "kinds": [{"kind": "main", "conversations": 2}, {"kind": "title", "conversations": 1}],
    }


def test_hits_per_rule_sums_the_runs_and_keeps_rules_that_never_fired():
    def row(run, rule, hits, value):
        return {
            "run_id": run,
            "attempt": 0,
            "rule_id": rule,
            "rule_version": "1",
            "description": f"{rule}!",
            "hits": hits,
            "value": value,
            "n_steps": 4,
            "ruleset_version": "v",
        }

    summary = pa.Table.from_pylist(
        [
            row("a", "tool_error", 2, -0.2),
            row("b", "tool_error", 1, -0.1),
            row("a", "tests_passed", 0, 0.0),
            row("b", "tests_passed", 1, 1.0),
        ],
        schema=RULE_SUMMARY.schema,
    )
    assert hits_per_rule(summary) == [
        {"rule": "tool_error", "hits": 3, "runs_hit": 2, "value": -0.3},
        {"rule": "tests_passed", "hits": 1, "runs_hit": 1, "value": 1.0},
    ]


def test_reward_stats_per_model_leave_unknown_rewards_out():
    stats = reward_stats([("careful", 0.9), ("hasty", 0.5), ("careful", 0.7), ("hasty", None)])
    assert stats == [
        {"model": "careful", "runs": 2, "rewarded": 2, "reward_mean": 0.8, "reward_min": 0.7, "reward_max": 0.9},
        {"model": "hasty", "runs": 2, "rewarded": 1, "reward_mean": 0.5, "reward_min": 0.5, "reward_max": 0.5},
    ]
    assert reward_stats([("m", None)])[0]["reward_mean"] is None


def message(role, content=None, calls=()):
    return {
        "role": role,
        "content": content,
        "tool_calls": [
            {"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": a}}
            for i, (n, a) in enumerate(calls)
        ],
    }


def test_pairs_preview_shows_the_prompt_tail_and_both_texts():
    pair = {
        "pair_id": "p",
        "kind": "trajectory",
        "instance_id": "i",
        "prompt": [message("system", "You are an agent. " * 40), message("user", "Fix the CSV quoting.")],
        "chosen": [message("assistant", None, [("read_file", '{"path": "csv.py"}')]), message("assistant", "Done.")],
        "rejected": [message("assistant", "I give up.")],
        "chosen_model": "baseline/careful",
        "rejected_model": "baseline/hasty",
        "chosen_attempt": 0,
        "rejected_attempt": 1,
        "chosen_reward": 0.9,
        "rejected_reward": 0.5,
        "margin": 0.4,
    }
    (row,) = preview_rows(pa.Table.from_pylist([pair], schema=PREFERENCE_PAIRS.schema))
    assert row["prompt_tail"].startswith("[...] ") and row["prompt_tail"].endswith("user: Fix the CSV quoting.")
    assert row["chosen_text"] == 'assistant: read_file({"path": "csv.py"})\nassistant: Done.'
    assert row["rejected_text"] == "assistant: I give up."
    assert row["pair"] == "trajectory: baseline/careful #0 (0.900) over baseline/hasty #1 (0.500)"
    assert messages_text(None) == ""


def test_no_pairs_reason_names_what_was_skipped():
    assert no_pairs_reason({"trajectories": 1}) == "no pairs: 1 trajectory of this instance, a pair needs two runs"
    reason = no_pairs_reason({"trajectories": 4, "skipped_tie": 2, "skipped_below_margin": 4, "skipped_no_step": 0})
    assert reason == (
        "no pairs from 4 trajectories: 2 run pairs with equal rewards; 4 run pairs whose reward gap is under min_margin"
    )


def test_card_body_drops_the_yaml_header():
    assert card_body("---\nlicense: mit\n---\n\n# trajhub-demo\n\ntext\n") == "# trajhub-demo\n\ntext\n"
    assert card_body("# no header\n") == "# no header\n"


def test_partition_metadata_is_per_partition_in_small_runs_and_batch_only_in_large_ones():
    from dagster import DagsterInstance, Definitions, MaterializeResult, asset, define_asset_job

    from trajhub_assets.jobs import RANGE_END_TAG, RANGE_START_TAG
    from trajhub_assets.metadata import PER_PARTITION_LIMIT, PartitionMetadata
    from trajhub_assets.partitions import run_key, run_partitions

    @asset(partitions_def=run_partitions)
    def counted(context) -> MaterializeResult:
        metadata = PartitionMetadata(context, len(context.partition_keys))
        for key in context.partition_keys:
            metadata.add(key, {"instance": key.keys_by_dimension["instance"]})
        return MaterializeResult(metadata={"batch_partitions": len(context.partition_keys)} | metadata.batch())

    instance = DagsterInstance.ephemeral()
    instances = [f"i{n:03d}" for n in range(PER_PARTITION_LIMIT + 1)]
    instance.add_dynamic_partitions("models", ["m"])
    instance.add_dynamic_partitions("instances", instances)
    job = Definitions(assets=[counted], jobs=[define_asset_job("j", [counted])]).resolve_job_def("j")

    def materialized(last: int) -> list[dict]:
        tags = {RANGE_START_TAG: run_key("m", instances[0]), RANGE_END_TAG: run_key("m", instances[last])}
        result = job.execute_in_process(instance=instance, tags=tags)
        return [{k: v.value for k, v in m.metadata.items()} for m in result.asset_materializations_for_node("counted")]

    small = materialized(2)
    assert sorted(m["instance"] for m in small) == instances[:3]
    assert all("batch_partition_metadata" not in m for m in small)
    large = materialized(PER_PARTITION_LIMIT)
    assert len(large) == PER_PARTITION_LIMIT + 1 and all("instance" not in m for m in large)
    assert all(f"a run of {PER_PARTITION_LIMIT + 1} partitions" in m["batch_partition_metadata"] for m in large)
