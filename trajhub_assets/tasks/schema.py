"""The tasks table: one row per task record of the catalog."""

import pyarrow as pa

from trajhub_assets.store import Table

_CHECK = pa.struct([("check_id", pa.string()), ("description", pa.string()), ("check_type", pa.string())])
CHECKLIST_TYPE = pa.list_(
    pa.struct([("category", pa.string()), ("description", pa.string()), ("checks", pa.list_(_CHECK))])
)

TASKS = Table(
    name="tasks",
    description="One row per task: the OctoCodingBench record, where it came from, and its hash.",
    schema=pa.schema(
        [
            pa.field("instance_id", pa.string(), nullable=False),
            ("category", pa.string()),
            ("user_query", pa.list_(pa.string())),
            ("system_prompt", pa.string()),
            ("image", pa.string()),
            ("workspace_abs_path", pa.string()),
            ("scaffold_name", pa.string()),
            ("scaffold_version", pa.string()),
            ("checklist", CHECKLIST_TYPE),
            ("expected_skill", pa.string()),
            ("workspace_source", pa.string()),
            ("test_command", pa.string()),
            ("reference_patch", pa.string()),
            pa.field("extra_json", pa.string(), metadata={"doc": "fields beyond the schema, as JSON"}),
            ("source", pa.string()),
            ("source_line", pa.int64()),
            pa.field("record_sha256", pa.string(), metadata={"doc": "hash of the record as read"}),
        ]
    ),
)
