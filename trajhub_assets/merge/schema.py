"""The merged_trajectories table: one row per conversation.

Meta fields are columns; tools and messages are lists of structs (a tool's parameters,
a tool call's arguments and a message's extra are JSON strings). `model` and `instance` are not columns:
the store adds them from the hive partition path, and `table_to_conversations` puts
them back into meta.
"""

from __future__ import annotations

import json

import pyarrow as pa

from trajhub_assets.errors import StoreError
from trajhub_assets.store import Table

PARTITION_FIELDS = ("model", "instance")

TOOL = pa.struct(
    [("type", pa.string()), ("name", pa.string()), ("description", pa.string()), ("parameters", pa.string())]
)
TOOL_CALL = pa.struct([("id", pa.string()), ("type", pa.string()), ("name", pa.string()), ("arguments", pa.string())])
# A media part's ref is its URL or file id, or "sha256:<hex>" of a base64 payload.
CONTENT_PART = pa.struct(
    [("type", pa.string()), ("text", pa.string()), ("media_type", pa.string()), ("ref", pa.string())]
)
THINKING_BLOCK = pa.struct(
    [("type", pa.string()), ("thinking", pa.string()), ("signature", pa.string()), ("data", pa.string())]
)
MESSAGE = pa.struct(
    [
        ("role", pa.string()),
        ("content", pa.string()),
        ("reasoning_content", pa.string()),
        ("tool_calls", pa.list_(TOOL_CALL)),
        ("tool_call_id", pa.string()),
        ("name", pa.string()),
        ("is_error", pa.bool_()),
        ("generation", pa.bool_()),
        ("generated_by", pa.string()),
        ("content_parts", pa.list_(CONTENT_PART)),
        ("thinking_blocks", pa.list_(THINKING_BLOCK)),
        ("extra", pa.string()),  # JSON object: the wire fields no column holds, by their path
    ]
)
META = [
    pa.field("conversation_id", pa.string(), nullable=False),
    pa.field("run_id", pa.string()),
    pa.field("attempt", pa.int64()),
    pa.field("kind", pa.string()),
    pa.field("parent_conversation_id", pa.string()),
    pa.field("parent_link", pa.string()),
    pa.field("branch_index", pa.int64()),
    pa.field("call_ids", pa.list_(pa.string())),
    pa.field("failed_call_ids", pa.list_(pa.string())),
    pa.field("call_kinds", pa.list_(pa.string())),
    pa.field("n_generations", pa.int64()),
    pa.field("started_at", pa.float64()),
    pa.field("ended_at", pa.float64()),
    pa.field("wire_format", pa.string()),
    pa.field("tools_changed", pa.bool_()),
    pa.field("error", pa.string()),
    pa.field("source", pa.string()),
    # request | upstream_request | mixed: the body the prompt was read from (merge/README.md)
    pa.field("prompt_from", pa.string()),
    # calls whose upstream_request is in a format the merge cannot tell: read from request
    pa.field("prompt_fallback_call_ids", pa.list_(pa.string())),
]
# Added later: conversations from elsewhere (imports) may lack them, and store them as null.
OPTIONAL_META_FIELDS = ("prompt_from", "prompt_fallback_call_ids")
CONVERSATION_SCHEMA = pa.schema(META + [pa.field("tools", pa.list_(TOOL)), pa.field("messages", pa.list_(MESSAGE))])
META_FIELDS = tuple(f.name for f in META)


MERGED_TRAJECTORIES = Table(
    "merged_trajectories",
    CONVERSATION_SCHEMA,
    partitioned_by=PARTITION_FIELDS,
    description="One row per conversation a run held (main agent, subagents, restarts).",
)


def _row(conversation: dict) -> dict:
    meta = conversation["meta"]
    unknown = set(meta) - set(META_FIELDS) - set(PARTITION_FIELDS)
    missing = set(META_FIELDS) - set(meta) - set(OPTIONAL_META_FIELDS)
    if unknown or missing:
        raise StoreError(
            f"conversation {meta.get('conversation_id')!r}: meta has fields {sorted(unknown)} "
            f"the merged_trajectories schema lacks, and lacks {sorted(missing)}"
        )
    row = {name: meta.get(name) for name in META_FIELDS}
    row["tools"] = [
        {
            "type": t["type"],
            "name": t["function"]["name"],
            "description": t["function"]["description"],
            "parameters": json.dumps(t["function"]["parameters"], ensure_ascii=False),
        }
        for t in conversation["tools"]
    ]
    row["messages"] = [
        {
            **m,
            "tool_calls": None
            if m["tool_calls"] is None
            else [{"id": c["id"], "type": c["type"], **c["function"]} for c in m["tool_calls"]],
        }
        for m in conversation["messages"]
    ]
    return row


def conversations_to_table(conversations: list[dict]) -> pa.Table:
    """Conversations as returned by merge_calls → a table with CONVERSATION_SCHEMA."""
    return pa.Table.from_pylist([_row(c) for c in conversations], schema=CONVERSATION_SCHEMA)


def table_to_conversations(table: pa.Table, *, model: str | None = None, instance: str | None = None) -> list[dict]:
    """The inverse of conversations_to_table. model and instance come from the table's own
    columns when it has them (DuckDB reads them from the path), else from the arguments."""
    conversations = []
    for row in table.to_pylist():
        meta = {name: row[name] for name in META_FIELDS}
        meta["model"] = row.get("model", model)
        meta["instance"] = row.get("instance", instance)
        tools = [
            {
                "type": t["type"],
                "function": {
                    "name": t["name"],
                    "description": t["description"],
                    "parameters": json.loads(t["parameters"]),
                },
            }
            for t in row["tools"]
        ]
        messages = [
            {
                **m,
                "tool_calls": None
                if m["tool_calls"] is None
                else [
                    {"id": c["id"], "type": c["type"], "function": {"name": c["name"], "arguments": c["arguments"]}}
                    for c in m["tool_calls"]
                ],
            }
            for m in row["messages"]
        ]
        conversations.append({"meta": meta, "tools": tools, "messages": messages})
    return conversations
