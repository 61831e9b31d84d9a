"""The branch tables: continuations recorded as runs are, apart from the runs raw_trajectories owns.

Their schemas are the recording tables' (runs, raw_calls, message_blobs), so everything that
reads a run reads a branch; a `branch_runs` row names its parent run, step and sample.
"""

from trajhub_assets.merge.schema import MERGED_TRAJECTORIES
from trajhub_assets.recording.schema import MESSAGE_BLOBS, RAW_CALLS, RUNS
from trajhub_assets.store import Table

BRANCH_RUNS = Table(
    "branch_runs",
    schema=RUNS.schema,
    partitioned_by=RUNS.partitioned_by,
    description="One row per continuation of a recorded run from one of its steps (kind branch): "
    "its parent run, step and sample, how it ended; a refused branch says where its prefix diverged.",
)
BRANCH_RAW_CALLS = Table(
    "branch_raw_calls",
    schema=RAW_CALLS.schema,
    partitioned_by=RAW_CALLS.partitioned_by,
    description="The recorded calls of the continuations, prefix and live part alike (as raw_calls).",
)
BRANCH_MESSAGE_BLOBS = Table(
    "branch_message_blobs",
    schema=MESSAGE_BLOBS.schema,
    partitioned_by=MESSAGE_BLOBS.partitioned_by,
    description="The continuations' message blobs (as message_blobs).",
)
BRANCHED_TRAJECTORIES = Table(
    "branched_trajectories",
    schema=MERGED_TRAJECTORIES.schema,
    partitioned_by=MERGED_TRAJECTORIES.partitioned_by,
    description="The continuations' conversations, merged as merged_trajectories merges runs.",
)
