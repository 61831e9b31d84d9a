"""The recording tables: a run's attempts, its raw LLM calls and their message blobs."""

import pyarrow as pa

from trajhub_assets.store import Table

RUNS = Table(
    "runs",
    partitioned_by=("model", "instance"),
    description="One row per attempt: how the agent stopped, the test outcome, the diff.",
    schema=pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            ("attempt", pa.int64()),
            ("model_name", pa.string()),
            ("route", pa.string()),
            ("scaffold", pa.string()),
            ("scaffold_version", pa.string()),
            ("backend", pa.string()),
            ("started_at", pa.float64()),
            ("run_seconds", pa.float64()),
            ("stop_reason", pa.string()),
            ("agent_exit_code", pa.int64()),
            ("agent_stderr_tail", pa.string()),
            ("final_answer", pa.string()),
            ("timed_out", pa.bool_()),
            ("test_command", pa.string()),
            ("test_exit_code", pa.int64()),
            ("tests_passed", pa.int64()),
            ("tests_failed", pa.int64()),
            ("tests_total", pa.int64()),
            ("test_output_tail", pa.string()),
            ("resolved", pa.bool_()),
            ("diff", pa.string()),
            pa.field("error", pa.string(), metadata={"doc": "why the run failed, if it did"}),
            # Added later (null in older files): a continuation of another run (trajhub_assets/branching)
            pa.field("kind", pa.string(), metadata={"doc": "null: a run of its own; branch: a continuation"}),
            pa.field("parent_run_id", pa.string(), metadata={"doc": "a branch: the run it continues"}),
            pa.field("branch_step", pa.int64(), metadata={"doc": "a branch: the parent's main step it resampled"}),
            pa.field("branch_sample", pa.int64(), metadata={"doc": "a branch: which of the step's samples"}),
        ]
    ),
)

RAW_CALLS = Table(
    name="raw_calls",
    schema=pa.schema(
        [
            ("run_id", pa.string()),
            ("attempt", pa.int32()),
            ("nonce", pa.string()),
            ("call_id", pa.string()),
            ("seq", pa.int64()),
            ("started_at", pa.float64()),
            ("ended_at", pa.float64()),
            ("first_token_at", pa.float64()),
            ("endpoint", pa.string()),
            ("wire_format", pa.string()),
            ("call_kind", pa.string()),
            ("stream", pa.bool_()),
            ("model", pa.string()),
            ("litellm_model", pa.string()),
            ("status", pa.string()),
            ("http_status", pa.int32()),
            ("error_type", pa.string()),
            ("error_message", pa.string()),
            ("input_tokens", pa.int64()),
            ("output_tokens", pa.int64()),
            ("cache_read_tokens", pa.int64()),
            ("cache_creation_tokens", pa.int64()),
            ("cost_usd", pa.float64()),
            ("request_keys", pa.list_(pa.string())),
            ("params_ref", pa.string()),
            ("system_ref", pa.string()),
            ("tools_ref", pa.string()),
            ("conversation_field", pa.string()),
            ("message_refs", pa.list_(pa.string())),
            ("response_ref", pa.string()),
            ("envelope", pa.string()),
        ]
    ),
    partitioned_by=("model", "instance"),
    description="One row per recorded LLM call; request and response parts are sha256 references into message_blobs.",
)

MESSAGE_BLOBS = Table(
    name="message_blobs",
    schema=pa.schema([("sha256", pa.string()), ("kind", pa.string()), ("size", pa.int64()), ("json", pa.string())]),
    partitioned_by=("model", "instance"),
    description="Each distinct message / system prompt / tool list / params / response once.",
)
