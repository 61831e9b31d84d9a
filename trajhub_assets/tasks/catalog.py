"""The task catalog: OctoCodingBench-style task records from JSONL files or the Hub.

A record is validated with a JSON Schema; the first problem is reported with the
file, line, instance_id and field. Loading is all-or-nothing, so a broken file never
replaces a good catalog.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pyarrow as pa

from trajhub_assets.errors import RecordError
from trajhub_assets.tasks.schema import TASKS

_TEXT = {"type": "string"}
_OPTIONAL_TEXT = {"type": ["string", "null"]}

TASK_RECORD_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": [
        "instance_id",
        "user_query",
        "system_prompt",
        "category",
        "image",
        "workspace_abs_path",
        "scaffold",
        "checklist",
    ],
    "properties": {
        # Same rule as partition keys (trajhub_assets.partitions): ids become directory names.
        "instance_id": {"type": "string", "pattern": r"^[A-Za-z0-9._:@+-]+$"},
        "user_query": {"type": "array", "items": _TEXT, "minItems": 1},
        "system_prompt": _TEXT,
        "category": _TEXT,
        "image": _TEXT,
        "workspace_abs_path": {"type": "string", "pattern": "^/"},
        "scaffold": {"type": "object", "required": ["name"], "properties": {"name": _TEXT, "version": _OPTIONAL_TEXT}},
        "checklist": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["description", "checks"],
                "properties": {
                    "description": _TEXT,
                    "checks": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["check_id", "description", "check_type"],
                            "properties": {"check_id": _TEXT, "description": _TEXT, "check_type": _TEXT},
                        },
                    },
                },
            },
        },
        "expected_skill": _OPTIONAL_TEXT,
        # Runnable tasks: where the workspace comes from and how its tests run.
        "workspace_source": _OPTIONAL_TEXT,
        "test_command": _OPTIONAL_TEXT,
        "reference_patch": _OPTIONAL_TEXT,
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(TASK_RECORD_SCHEMA)
_KNOWN_FIELDS = set(TASK_RECORD_SCHEMA["properties"])
_LOCAL_PATH_FIELDS = ("workspace_source", "reference_patch")


@dataclass(frozen=True)
class TaskRecord:
    record: dict
    source: str
    line: int


def validate_record(record: object, *, source: str, line: int) -> dict:
    """Return the record if it fits the task schema, else raise RecordError naming the field."""
    if not isinstance(record, dict):
        raise RecordError(f"a task record must be a JSON object, got {type(record).__name__}", source=source, line=line)
    record_id = record.get("instance_id") if isinstance(record.get("instance_id"), str) else None
    error = jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(record))
    if error is not None:
        path = [str(p) for p in error.absolute_path]
        if error.validator == "required":
            path.append(next(f for f in error.validator_value if f not in error.instance))
        raise RecordError(error.message, source=source, line=line, record_id=record_id, field=".".join(path) or None)
    return record


def read_jsonl(path: str | Path) -> Iterator[TaskRecord]:
    path = Path(path)
    source = str(path)
    try:
        # utf-8-sig: editors on Windows start the file with a byte-order mark and end lines
        # with CRLF. Split on "\n" only: JSON strings may hold U+2028 and other characters
        # that str.splitlines() would also break at.
        lines = [
            line.removesuffix("\r") for line in path.read_text(encoding="utf-8-sig").removesuffix("\n").split("\n")
        ]
    except (OSError, UnicodeDecodeError) as error:
        raise RecordError(f"cannot read task file: {error}", source=source) from error
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            hint = " (truncated last line?)" if number == len(lines) else ""
            raise RecordError(
                f"invalid JSON{hint}: {error.msg} at column {error.colno}", source=source, line=number
            ) from None
        record = validate_record(record, source=source, line=number)
        for field in _LOCAL_PATH_FIELDS:  # relative to the task file, like imports
            if record.get(field):
                record = {**record, field: str((path.parent / record[field]).resolve())}
        yield TaskRecord(record, source, number)


def read_hf_dataset(dataset_id: str, split: str = "train", revision: str | None = None) -> Iterator[TaskRecord]:
    import datasets  # heavy; only needed for this source

    source = f"hf:{dataset_id}[{split}]"
    rows = datasets.load_dataset(dataset_id, split=split, revision=revision)
    for number, row in enumerate(rows, start=1):
        # Arrow turns the checklist mapping into a struct of every category seen in the
        # dataset; categories this task lacks come back as None and are not its own.
        if isinstance(row.get("checklist"), dict):
            row["checklist"] = {k: v for k, v in row["checklist"].items() if v is not None}
        row = {k: v for k, v in row.items() if v is not None or k in _KNOWN_FIELDS}
        yield TaskRecord(validate_record(row, source=source, line=number), source, number)


def check_unique(records: Iterable[TaskRecord]) -> list[TaskRecord]:
    first_seen: dict[str, TaskRecord] = {}
    for item in records:
        instance_id = item.record["instance_id"]
        if instance_id in first_seen:
            first = first_seen[instance_id]
            raise RecordError(
                f"duplicate instance_id, first seen at {first.source}:{first.line}",
                source=item.source,
                line=item.line,
                record_id=instance_id,
                field="instance_id",
            )
        first_seen[instance_id] = item
    return list(first_seen.values())


def tasks_to_table(items: list[TaskRecord]) -> pa.Table:
    rows = []
    for item in items:
        r = item.record
        rows.append(
            {
                "instance_id": r["instance_id"],
                "category": r["category"],
                "user_query": r["user_query"],
                "system_prompt": r["system_prompt"],
                "image": r["image"],
                "workspace_abs_path": r["workspace_abs_path"],
                "scaffold_name": r["scaffold"]["name"],
                "scaffold_version": r["scaffold"].get("version"),
                "checklist": [
                    {
                        "category": name,
                        "description": part["description"],
                        "checks": [
                            {k: c[k] for k in ("check_id", "description", "check_type")} for c in part["checks"]
                        ],
                    }
                    for name, part in r["checklist"].items()
                ],
                "expected_skill": r.get("expected_skill"),
                "workspace_source": r.get("workspace_source"),
                "test_command": r.get("test_command"),
                "reference_patch": r.get("reference_patch"),
                "extra_json": json.dumps(
                    {k: v for k, v in r.items() if k not in _KNOWN_FIELDS}, ensure_ascii=False, sort_keys=True
                ),
                "source": item.source,
                "source_line": item.line,
                "record_sha256": hashlib.sha256(json.dumps(r, ensure_ascii=False, sort_keys=True).encode()).hexdigest(),
            }
        )
    return pa.Table.from_pylist(rows, schema=TASKS.schema)


def table_to_records(table: pa.Table) -> list[dict]:
    """The task records back in their OctoCodingBench shape (inverse of tasks_to_table)."""
    records = []
    for row in table.to_pylist():
        record = {
            "instance_id": row["instance_id"],
            "user_query": row["user_query"],
            "system_prompt": row["system_prompt"],
            "category": row["category"],
            "image": row["image"],
            "workspace_abs_path": row["workspace_abs_path"],
            "scaffold": {"name": row["scaffold_name"]}
            | ({"version": row["scaffold_version"]} if row["scaffold_version"] is not None else {}),
            "checklist": {
                part["category"]: {"description": part["description"], "checks": part["checks"]}
                for part in row["checklist"]
            },
        }
        for field in ("expected_skill", "workspace_source", "test_command", "reference_patch"):
            if row[field] is not None:
                record[field] = row[field]
        records.append(record | json.loads(row["extra_json"]))
    return records


def load_catalog(config) -> list[TaskRecord]:
    """Every task of the config's sources, validated, with unique instance_ids."""
    items: list[TaskRecord] = []
    for source in config.tasks:
        if source.path is not None:
            items.extend(read_jsonl(config.resolve(source.path)))
        else:
            items.extend(read_hf_dataset(source.hf_dataset, source.split, source.revision))
    return check_unique(items)


def stored_tasks(store) -> dict[str, dict]:
    """The stored catalog's task records by instance_id."""
    return {record["instance_id"]: record for record in table_to_records(store.read(TASKS))}
