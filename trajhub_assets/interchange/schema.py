"""The imports table: where each imported run came from."""

import pyarrow as pa

from trajhub_assets.store import Table

IMPORTS = Table(
    "imports",
    partitioned_by=("model", "instance"),
    description="Where each imported run came from: format, file and its sha256, when, and the ids it had there.",
    schema=pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            ("format", pa.string()),
            ("file", pa.string()),
            ("path", pa.string()),
            ("sha256", pa.string()),
            ("imported_at", pa.float64()),
            pa.field("lines", pa.list_(pa.int64()), metadata={"doc": "lines of the file the run came from"}),
            ("original_run_id", pa.string()),
            ("original_conversation_ids", pa.list_(pa.string())),
            ("conversation_ids", pa.list_(pa.string())),
            pa.field("original_source", pa.string(), metadata={"doc": "meta.source in a trajhub export"}),
            ("agent_name", pa.string()),
            ("agent_version", pa.string()),
            pa.field("format_version", pa.string(), metadata={"doc": "e.g. ATIF-v1.7"}),
        ]
    ),
)
