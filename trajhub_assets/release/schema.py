"""The release tables: human labels, the reward calibration and the leaderboard."""

import pyarrow as pa

from trajhub_assets.store import Table

HUMAN_LABELS = Table(
    name="human_labels",
    schema=pa.schema(
        [
            pa.field("pair_id", pa.string(), nullable=False),
            pa.field("annotator", pa.string(), nullable=False),
            pa.field("preferred", pa.string(), nullable=False, metadata={"doc": "chosen | rejected | tie"}),
            pa.field("score", pa.float64(), metadata={"doc": "preference for chosen over rejected, as given"}),
            pa.field("note", pa.string()),
            pa.field("source", pa.string()),
            pa.field("source_line", pa.int64()),
        ]
    ),
    description="One row per (pair, annotator): the human preference, turned to the reward's sides.",
)
REWARD_CALIBRATION = Table(
    name="reward_calibration",
    schema=pa.schema(
        [
            pa.field("metric", pa.string(), nullable=False),
            pa.field("value", pa.float64()),
            pa.field("ci_low", pa.float64()),
            pa.field("ci_high", pa.float64()),
            pa.field("n", pa.int64()),
            pa.field("note", pa.string()),
        ]
    ),
    description="One row per calibration figure: value, confidence interval and sample count.",
)

LEADERBOARD = Table(
    name="leaderboard",
    schema=pa.schema(
        [
            pa.field("model", pa.string(), nullable=False),
            pa.field("runs", pa.int64(), nullable=False),
            pa.field("instances", pa.int64(), nullable=False),
            pa.field("test_runs", pa.int64(), metadata={"doc": "runs whose task has tests"}),
            pa.field("test_pass_rate", pa.float64()),
            pa.field("isr", pa.float64()),
            pa.field("csr", pa.float64()),
            pa.field("mean_reward", pa.float64()),
            pa.field("mean_steps", pa.float64()),
            pa.field("mean_tokens", pa.float64()),
            pa.field("total_tokens", pa.int64()),
            pa.field("mean_cost_usd", pa.float64()),
            pa.field("total_cost_usd", pa.float64()),
        ]
    ),
    description="One row per model, best mean reward first.",
)
