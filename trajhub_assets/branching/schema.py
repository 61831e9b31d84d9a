"""The branch tables: continuations recorded, scored and paired as runs are, apart from the
tables the run assets own.

Their schemas are the run tables' (runs, raw_calls, message_blobs, the reward tables), so
everything that reads a run reads a branch; a `branch_runs` row names its parent run, step and
sample. `branch_pairs` is preference_pairs' schema with each side's evidence added.
"""

import pyarrow as pa

from trajhub_assets.merge.schema import MERGED_TRAJECTORIES
from trajhub_assets.pairs.schema import PREFERENCE_PAIRS
from trajhub_assets.recording.schema import MESSAGE_BLOBS, RAW_CALLS, RUNS
from trajhub_assets.rewards.schema import (
    JUDGE_CHECKS,
    JUDGE_STEPS,
    JUDGE_SUMMARY,
    RULE_STEPS,
    RULE_SUMMARY,
    TRAJECTORY_REWARDS,
)
from trajhub_assets.store import Table


def _of_branches(table: Table, description: str) -> Table:
    """`table`'s twin for the continuations: same schema and partitions, its own files."""
    return Table(
        f"branch_{table.name}", schema=table.schema, partitioned_by=table.partitioned_by, description=description
    )


BRANCH_RUNS = _of_branches(
    RUNS,
    "One row per continuation of a recorded run from one of its steps (kind branch): "
    "its parent run, step and sample, how it ended; a refused branch says where its prefix diverged.",
)
BRANCH_RAW_CALLS = _of_branches(
    RAW_CALLS, "The recorded calls of the continuations, prefix and live part alike (as raw_calls)."
)
BRANCH_MESSAGE_BLOBS = _of_branches(MESSAGE_BLOBS, "The continuations' message blobs (as message_blobs).")
BRANCHED_TRAJECTORIES = Table(
    "branched_trajectories",
    schema=MERGED_TRAJECTORIES.schema,
    partitioned_by=MERGED_TRAJECTORIES.partitioned_by,
    description="The continuations' conversations, merged as merged_trajectories merges runs.",
)
BRANCH_RULE_STEPS = _of_branches(RULE_STEPS, "The continuations' rule hits (as rule_steps).")
BRANCH_RULE_SUMMARY = _of_branches(RULE_SUMMARY, "The continuations' rule totals (as rule_summary).")
BRANCH_JUDGE_CHECKS = _of_branches(JUDGE_CHECKS, "The continuations' checklist verdicts (as judge_checks).")
BRANCH_JUDGE_STEPS = _of_branches(JUDGE_STEPS, "The continuations' step rubric scores (as judge_steps).")
BRANCH_JUDGE_SUMMARY = _of_branches(JUDGE_SUMMARY, "The continuations' judge totals (as judge_summary).")
BRANCH_TRAJECTORY_REWARDS = _of_branches(
    TRAJECTORY_REWARDS, "The continuations' rewards, weighted as trajectory_rewards weighs a run's."
)

RULE_HIT = pa.struct([("step_index", pa.int64()), ("rule_id", pa.string()), ("value", pa.float64())])
_EVIDENCE = [
    pa.field("parent_run_id", pa.string(), nullable=False),
    pa.field("branch_step", pa.int64(), nullable=False, metadata={"doc": "the main step both sides resampled"}),
    *(
        field
        for side in ("chosen", "rejected")
        for field in (
            pa.field(f"{side}_resolved", pa.bool_()),
            pa.field(f"{side}_tests_passed", pa.int64()),
            pa.field(f"{side}_tests_total", pa.int64()),
            pa.field(
                f"{side}_rule_hits",
                pa.list_(RULE_HIT),
                metadata={"doc": "the rule hits of the steps this side holds (the turn, or the continuation)"},
            ),
        )
    ),
]
BRANCH_PAIRS = Table(
    "branch_pairs",
    schema=pa.schema(list(PREFERENCE_PAIRS.schema) + _EVIDENCE),
    partitioned_by=RUNS.partitioned_by,
    description="DPO pairs of two continuations of one branch point (kind branch_step: their first "
    "differing assistant turn after the shared prefix; branch_continuation: all of each from the "
    "branch step), chosen by tests, then reward (basis), with each side's evidence.",
)
