"""Every table the store holds, in pipeline order. `trajhub tables` prints their reference,
which is what README.md's table section is (a test keeps the two in step)."""

import pyarrow as pa

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
from trajhub_assets.interchange.schema import IMPORTS
from trajhub_assets.merge.schema import MERGED_TRAJECTORIES
from trajhub_assets.pairs.schema import PREFERENCE_PAIRS
from trajhub_assets.recording.schema import MESSAGE_BLOBS, RAW_CALLS, RUNS
from trajhub_assets.release.schema import HUMAN_LABELS, LEADERBOARD, REWARD_CALIBRATION
from trajhub_assets.replay.schema import REPLAYS
from trajhub_assets.rewards.schema import (
    JUDGE_CHECKS,
    JUDGE_STEPS,
    JUDGE_SUMMARY,
    RULE_STEPS,
    RULE_SUMMARY,
    TRAJECTORY_REWARDS,
)
from trajhub_assets.tasks.schema import TASKS

ALL_TABLES = [
    TASKS,
    RUNS,
    RAW_CALLS,
    MESSAGE_BLOBS,
    IMPORTS,
    MERGED_TRAJECTORIES,
    RULE_STEPS,
    RULE_SUMMARY,
    JUDGE_CHECKS,
    JUDGE_STEPS,
    JUDGE_SUMMARY,
    TRAJECTORY_REWARDS,
    PREFERENCE_PAIRS,
    HUMAN_LABELS,
    REWARD_CALIBRATION,
    LEADERBOARD,
    REPLAYS,
    BRANCH_RUNS,
    BRANCH_RAW_CALLS,
    BRANCH_MESSAGE_BLOBS,
    BRANCHED_TRAJECTORIES,
    BRANCH_RULE_STEPS,
    BRANCH_RULE_SUMMARY,
    BRANCH_JUDGE_CHECKS,
    BRANCH_JUDGE_STEPS,
    BRANCH_JUDGE_SUMMARY,
    BRANCH_TRAJECTORY_REWARDS,
    BRANCH_PAIRS,
]


def _type(arrow_type: pa.DataType) -> str:
    if pa.types.is_list(arrow_type):
        return f"list<{_type(arrow_type.value_type)}>"
    if pa.types.is_struct(arrow_type):  # field names only: the full type is `trajhub tables`' job
        return "struct<" + ", ".join(f.name for f in arrow_type) + ">"
    return str(arrow_type)


def reference_markdown() -> str:
    parts = []
    for table in ALL_TABLES:
        partitioning = f"partitioned by {', '.join(table.partitioned_by)}" if table.partitioned_by else "unpartitioned"
        parts.append(
            f"#### `{table.name}` ({partitioning})\n\n{table.description}\n\n"
            + ", ".join(f"`{f.name}` {_type(f.type)}" for f in table.schema)
        )
    return "\n\n".join(parts) + "\n"
