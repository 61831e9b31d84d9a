"""The replays table: one row per replay of a recorded run."""

import pyarrow as pa

from trajhub_assets.store import Table

_DIFFERENCE = pa.struct([("path", pa.string()), ("expected", pa.string()), ("actual", pa.string())])
REPLAYS = Table(
    "replays",
    partitioned_by=("model", "instance"),
    description="One row per replay of a recorded run: fidelity (recorded agent calls whose request "
    "the replay sent again, after masking), the first divergence and the outcome compared.",
    schema=pa.schema(
        [
            pa.field("replay_run_id", pa.string(), nullable=False),
            ("run_id", pa.string()),
            ("attempt", pa.int64()),
            ("scaffold", pa.string()),
            ("backend", pa.string()),
            ("recorded_scaffold_version", pa.string()),
            ("replay_scaffold_version", pa.string()),
            ("replayed_at", pa.float64()),
            ("release_version", pa.string()),
            ("recorded_calls", pa.int64()),
            ("replayed_calls", pa.int64()),
            ("matched_calls", pa.int64()),
            ("raw_matched_calls", pa.int64()),
            ("extra_calls", pa.int64()),
            ("side_call_differences", pa.int64()),
            ("fidelity", pa.float64()),
            ("divergence_call_index", pa.int64()),
            ("divergence_seq", pa.int64()),
            ("divergence_path", pa.string()),
            ("divergence_expected", pa.string()),
            ("divergence_actual", pa.string()),
            ("outcome_differences", pa.list_(_DIFFERENCE)),
            ("reproduced", pa.bool_()),
            ("error", pa.string()),
        ]
    ),
)
