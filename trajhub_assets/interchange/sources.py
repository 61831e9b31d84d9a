"""Other tools' trajectories as sources of the store, and the store's conversations as files.

`read_files` reads mini-vela raw calls, ATIF trajectories or OpenAI/TRL records (the formats
of registry.py) into runs of (model, instance) partitions; `store_runs` writes them;
`report_imports` tells Dagster.

- mini-vela → `raw_calls` + `message_blobs` (each call's file, lines and times in its
  envelope's `provenance`), then `merged_trajectories` by the normal merge.
- ATIF / OpenAI → `merged_trajectories` directly, with `meta.source` "<format>:<file name>".

Every imported run gets a `runs` row (stop_reason "imported", no test outcome) so that the
rewards can score it, and an `imports` row: format, file, sha256, when, and the ids it had
in the file. Model and instance come from the arguments, else from the file (mini-vela: the
request's model and the session id; a trajhub export: its meta; a trajhub run id).

Run ids: a file's own trajhub run id is kept when it belongs to the target partition; any
other run gets `<model>~<instance>~<k>~<nonce>`, k its position in the file and the nonce
from the file's sha256, so importing a file again replaces its runs rather than adding copies.
Nothing is written unless every file parses, validates and holds nothing that looks like a
credential, and a partition holding recorded runs is only replaced when asked.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from dagster import AssetMaterialization, MetadataValue, MultiPartitionKey

from trajhub_assets.errors import RecordError, StoreError, TrajhubError
from trajhub_assets.interchange.formats import read_documents
from trajhub_assets.interchange.registry import Format, export_format, import_format
from trajhub_assets.interchange.schema import IMPORTS
from trajhub_assets.merge.assets import merge_partition
from trajhub_assets.merge.schema import MERGED_TRAJECTORIES, conversations_to_table, table_to_conversations
from trajhub_assets.partitions import (
    check_instance_id,
    instances_partitions,
    missing_keys,
    model_key,
    model_name,
    models_partitions,
)
from trajhub_assets.recording.raw_calls import build_tables, rebuild_records
from trajhub_assets.recording.run_id import RunId, parse_run_id
from trajhub_assets.recording.schema import MESSAGE_BLOBS, RAW_CALLS, RUNS
from trajhub_assets.release.secrets import SecretScanner
from trajhub_assets.store import Store, Table

IMPORTED = "imported"  # runs.stop_reason of an imported run


@dataclass
class ImportedRun:
    """One run read from a file, ready to store in its partition."""

    partition: dict[str, str]
    run_id: str
    attempt: int
    origins: list[dict]  # its `imports` rows: one per file it came from
    conversations: list[dict] = field(default_factory=list)  # ATIF / OpenAI
    calls: list[dict] = field(default_factory=list)  # mini-vela


@dataclass
class StoredPartition:
    partition: dict[str, str]
    runs: int
    conversations: int
    calls: int
    sources: list[str]
    assets: list[str]


@dataclass(frozen=True)
class _File:
    path: Path
    sha256: str

    @property
    def source(self) -> str:
        return str(self.path)


# -- reading --------------------------------------------------------------------------------
def _model_key(value: str, *, source: str, line: int | None, field: str) -> str:
    """A model name or an existing partition key → the partition key."""
    try:
        if "__" in value:  # already a key: it must map back and forth
            if model_key(model_name(value)) != value:
                raise ValueError(f"{value!r} is neither a model name nor a model partition key")
            return value
        return model_key(value)
    except ValueError as error:
        raise RecordError(f"{error}; pass --model", source=source, line=line, field=field) from None


def _instance(value: str, *, source: str, line: int | None, field: str) -> str:
    try:
        return check_instance_id(value)
    except ValueError as error:
        raise RecordError(f"{error}; pass --instance", source=source, line=line, field=field) from None


def _trajhub_run(run_id) -> RunId | None:
    try:
        return parse_run_id(run_id) if isinstance(run_id, str) else None
    except RecordError:
        return None


def _run_id(key: str, instance: str, position: int, file: _File, original) -> tuple[str, int]:
    """(run id, attempt): the file's own trajhub run id if it fits the partition, else a new one
    that importing the same file again reproduces."""
    parsed = _trajhub_run(original)
    if parsed is not None and (parsed.model_key, parsed.instance) == (key, instance):
        return original, parsed.attempt
    attempt = parsed.attempt if parsed is not None else position
    nonce = hashlib.sha256(f"{file.sha256}:{original}:{position}".encode()).hexdigest()[:8]
    return str(RunId(key, instance, attempt, nonce)), attempt


def _provenance(file: _File, fmt: str, run_id: str, **fields) -> dict:
    row = {name: None for name in IMPORTS.schema.names}
    return (
        row
        | {
            "run_id": run_id,
            "format": fmt,
            "file": file.path.name,
            "path": str(file.path.resolve()),
            "sha256": file.sha256,
            "imported_at": time.time(),
        }
        | fields
    )


def _call_runs(
    fmt: Format, file: _File, model: str | None, instance: str | None, scanner: SecretScanner
) -> list[ImportedRun]:
    """A file of recorded calls: one run per session (the calls' run_id in the file)."""
    sessions: dict[str, list[dict]] = {}
    for call in fmt.read_calls(file.path):
        _refuse_secrets(scanner, call, source=file.source, line=call["provenance"]["lines"][0])
        sessions.setdefault(call["run_id"], []).append(call)
    runs = []
    for position, (session, calls) in enumerate(sessions.items()):
        key = _model_key(
            model or calls[0].get("model") or "", source=file.source, line=None, field="request_body.model"
        )
        instance_id = _instance(instance or session, source=file.source, line=None, field="session_id")
        run_id, attempt = _run_id(key, instance_id, position, file, session)
        for call in calls:
            call["run_id"], call["source"] = run_id, f"{fmt.name}:{file.path.name}"
        lines = sorted(n for call in calls for n in call["provenance"]["lines"])
        runs.append(
            ImportedRun(
                {"model": key, "instance": instance_id},
                run_id,
                attempt,
                [_provenance(file, fmt.name, run_id, lines=lines, original_run_id=session)],
                calls=calls,
            )
        )
    return runs


@dataclass
class _Item:
    """One conversation read from a file."""

    file: _File
    line: int | None
    conversation: dict
    details: dict  # ATIF: agent name and version, schema version


def _read_conversations(fmt: Format, file: _File, scanner: SecretScanner) -> list[_Item]:
    found = []
    for line, document in read_documents(file.path):
        conversations, details = fmt.read_document(document, source=file.source, line=line)
        for conversation in conversations:
            try:  # every field must fit the table, or nothing is stored
                conversations_to_table([conversation])
            except (TrajhubError, KeyError, TypeError, pa.ArrowException) as error:
                raise RecordError(
                    f"does not fit merged_trajectories: {error}",
                    source=file.source,
                    line=line,
                    record_id=conversation["meta"].get("conversation_id"),
                ) from None
            _refuse_secrets(scanner, conversation, source=file.source, line=line)
            found.append(_Item(file, line, conversation, details))
    return found


def _conversation_runs(
    fmt: Format, files: list[_File], model: str | None, instance: str | None, scanner: SecretScanner
) -> list[ImportedRun]:
    """Conversations grouped into runs across all files (an export to a directory spreads a run
    over several): one ATIF session or one trajhub run is one run; a record without either is
    a run of its own."""
    groups: dict[object, list[_Item]] = {}
    firsts: dict[object, tuple[_File, int]] = {}  # where each run starts: file, k-th run of it
    for file in files:
        for n, item in enumerate(_read_conversations(fmt, file, scanner)):
            original = item.conversation["meta"]["run_id"]
            group = original if original is not None else (file.path, n)
            if group not in groups:
                firsts[group] = (file, sum(f is file for f, _ in firsts.values()))
            groups.setdefault(group, []).append(item)
    return [_conversation_run(fmt.name, items, *firsts[group], model, instance) for group, items in groups.items()]


def _conversation_run(
    fmt: str, items: list[_Item], file: _File, position: int, model: str | None, instance: str | None
) -> ImportedRun:
    first = items[0]
    meta, original = first.conversation["meta"], first.conversation["meta"]["run_id"]
    parsed = _trajhub_run(original)
    given_model = model or meta.get("model") or (parsed.model_key if parsed else None)
    given_instance = instance or meta.get("instance") or (parsed.instance if parsed else None)
    if not given_model or not given_instance:
        missing = "--model" if not given_model else "--instance"
        raise RecordError(
            f"the file does not say which {missing[2:]} this run belongs to: pass {missing}",
            source=file.source,
            line=first.line,
        )
    key = _model_key(given_model, source=file.source, line=first.line, field="model")
    instance_id = _instance(given_instance, source=file.source, line=first.line, field="instance")
    run_id, attempt = _run_id(key, instance_id, position, file, original)
    originals = [item.conversation["meta"]["conversation_id"] for item in items]
    ids = {old: (old if run_id == original and old else f"{run_id}-c{i}") for i, old in enumerate(originals)}
    origins: dict[Path, dict] = {}
    for i, item in enumerate(items):
        meta = item.conversation["meta"]
        origin = origins.setdefault(
            item.file.path,
            _provenance(
                item.file,
                fmt,
                run_id,
                lines=[],
                original_run_id=original,
                original_conversation_ids=[],
                conversation_ids=[],
                **item.details,
                # A trajhub export says where its conversations came from first: provenance.
                original_source=meta["source"] if meta["source"] != item.file.source else None,
            ),
        )
        if item.line is not None and item.line not in origin["lines"]:
            origin["lines"].append(item.line)
        origin["original_conversation_ids"].append(originals[i])
        origin["conversation_ids"].append(ids[originals[i]])
        meta.update(
            run_id=run_id,
            conversation_id=ids[originals[i]],
            model=key,
            instance=instance_id,
            attempt=attempt,
            source=f"{fmt}:{item.file.path.name}",
            parent_conversation_id=ids.get(meta["parent_conversation_id"], meta["parent_conversation_id"]),
        )
        _name_generations(item.conversation)
    for origin in origins.values():
        origin["lines"] = origin["lines"] or None
    return ImportedRun(
        {"model": key, "instance": instance_id},
        run_id,
        attempt,
        list(origins.values()),
        conversations=[item.conversation for item in items],
    )


def _name_generations(conversation: dict) -> None:
    """A generation with no recorded call is named after its place, `<conversation>-g<k>`, and
    listed in call_ids, so that every generation names where it came from."""
    meta = conversation["meta"]
    if meta["call_ids"]:
        return
    k = 0
    for m in conversation["messages"]:
        if m["generation"] and m["generated_by"] is None:
            m["generated_by"] = f"{meta['conversation_id']}-g{k}"
            meta["call_ids"].append(m["generated_by"])
            k += 1


def _refuse_secrets(scanner: SecretScanner, record: dict, *, source: str, line: int | None) -> None:
    """Secrets never reach the store: refuse a record with anything that looks like a key.

    One scanner reads all the files of an import: what calls repeat (their history, the system
    prompt, the tools; one object when the reader shares them) is searched once."""
    hits = [
        hit for key, value in record.items() if key != "provenance" for hit in scanner.value(value, key, shared=True)
    ]
    if hits:
        field, kind, masked = hits[0]
        raise RecordError(
            f"looks like a credential ({kind} key {masked}); redact it in the "
            f"file, then import again ({len(hits)} hit(s) in this record)",
            source=source,
            line=line,
            field=field,
        )


def read_files(
    fmt: str, paths: Sequence[str | os.PathLike], *, model: str | None = None, instance: str | None = None
) -> list[ImportedRun]:
    """Every run of every file, all read and checked before anything is stored."""
    entry = import_format(fmt)
    files = []
    for path in paths:
        try:
            with open(path, "rb") as f:  # in chunks: a file of hundreds of MB is not held twice
                files.append(_File(Path(path), hashlib.file_digest(f, "sha256").hexdigest()))
        except OSError as error:
            raise RecordError(f"cannot read: {error}", source=str(path)) from None
    if len({f.sha256 for f in files}) < len(files):
        raise TrajhubError(
            "the same file content is given twice: "
            + ", ".join(str(f.path) for f in files if [g.sha256 for g in files].count(f.sha256) > 1)
        )
    scanner = SecretScanner()
    if entry.read_calls:
        return [run for file in files for run in _call_runs(entry, file, model, instance, scanner)]
    return _conversation_runs(entry, files, model, instance, scanner)


# -- storing --------------------------------------------------------------------------------
def _runs_row(run: ImportedRun) -> dict:
    starts = [c["meta"]["started_at"] for c in run.conversations if c["meta"]["started_at"] is not None]
    ends = [c["meta"]["ended_at"] for c in run.conversations if c["meta"]["ended_at"] is not None]
    starts += [c["started_at"] for c in run.calls]
    ends += [c["ended_at"] for c in run.calls if c.get("ended_at") is not None]
    start, end = min(starts, default=None), max(ends, default=None)
    return {name: None for name in RUNS.schema.names} | {
        "run_id": run.run_id,
        "attempt": run.attempt,
        "model_name": model_name(run.partition["model"]),
        "scaffold": run.origins[0]["agent_name"],
        "scaffold_version": run.origins[0]["agent_version"],
        "started_at": start,
        "run_seconds": end - start if start is not None and end is not None else None,
        "stop_reason": IMPORTED,
    }


def _read(store: Store, table: Table, partition: dict) -> list[dict]:
    return store.read(table, partition).to_pylist() if store.exists(table, partition) else []


def _refuse_recorded(store: Store, partition: dict) -> None:
    """A partition holding runs that were recorded here is not the import's to replace."""
    existing = _read(store, RUNS, partition)
    recorded = [row["run_id"] for row in existing if row["stop_reason"] != IMPORTED]
    if not existing and store.exists(RAW_CALLS, partition):
        recorded = ["calls without a runs row"]
    if recorded:
        raise StoreError(
            f"partition model={partition['model']}, instance={partition['instance']} holds {len(recorded)} "
            f"recorded run(s) ({', '.join(recorded[:3])}{', ...' if len(recorded) > 3 else ''}); the import "
            "would replace them. Pass --replace to replace that partition's data with the import, or "
            "import under another --model or --instance."
        )


def _store_partition(store: Store, partition: dict, runs: list[ImportedRun], replace: bool) -> StoredPartition:
    existing = _read(store, RUNS, partition)
    new_ids = {run.run_id for run in runs}

    def kept(rows: Iterable[dict], run_id=lambda row: row["run_id"]) -> list[dict]:
        return [] if replace else [row for row in rows if run_id(row) not in new_ids]

    records = []
    if store.exists(RAW_CALLS, partition) and store.exists(MESSAGE_BLOBS, partition):
        records = rebuild_records(store.read(RAW_CALLS, partition), store.read(MESSAGE_BLOBS, partition))
    records = kept(records) + [call for run in runs for call in run.calls]
    with_calls = {record["run_id"] for record in records}
    stored = (
        table_to_conversations(store.read(MERGED_TRAJECTORIES, partition), **partition)
        if store.exists(MERGED_TRAJECTORIES, partition)
        else []
    )
    conversations = kept(stored, lambda c: c["meta"]["run_id"]) + [c for run in runs for c in run.conversations]
    conversations = [c for c in conversations if c["meta"]["run_id"] not in with_calls]
    conversations += merge_partition(records, partition["model"], partition["instance"])
    conversations.sort(key=lambda c: c["meta"]["run_id"])  # stable: a run's own order stays

    if records or store.exists(RAW_CALLS, partition):
        calls, blobs = build_tables(records, partition["model"], partition["instance"])
        store.write(RAW_CALLS, calls, partition)
        store.write(MESSAGE_BLOBS, blobs, partition)
    store.write(MERGED_TRAJECTORIES, conversations_to_table(conversations), partition)
    store.write(
        RUNS, pa.Table.from_pylist(kept(existing) + [_runs_row(run) for run in runs], schema=RUNS.schema), partition
    )
    store.write(
        IMPORTS,
        pa.Table.from_pylist(
            kept(_read(store, IMPORTS, partition)) + [o for run in runs for o in run.origins], schema=IMPORTS.schema
        ),
        partition,
    )
    calls_imported = sum(len(run.calls) for run in runs)
    return StoredPartition(
        partition,
        runs=len(runs),
        conversations=sum(c["meta"]["run_id"] in new_ids for c in conversations),
        calls=calls_imported,
        sources=sorted({f"{o['format']}:{o['file']}" for r in runs for o in r.origins}),
        assets=(["raw_trajectories"] if calls_imported else []) + ["merged_trajectories"],
    )


def store_runs(store: Store, runs: list[ImportedRun], *, replace: bool = False) -> list[StoredPartition]:
    """Write the runs into their partitions. A partition keeps its other imported runs; one
    holding recorded runs is refused (StoreError) before anything is written, unless `replace`."""
    by_partition: dict[tuple[str, str], list[ImportedRun]] = {}
    for run in runs:
        by_partition.setdefault((run.partition["model"], run.partition["instance"]), []).append(run)
    if not replace:  # check every partition before writing any
        for model, instance in by_partition:
            _refuse_recorded(store, {"model": model, "instance": instance})
    return [
        _store_partition(store, {"model": m, "instance": i}, group, replace)
        for (m, i), group in sorted(by_partition.items())
    ]


def report_imports(instance, stored: list[StoredPartition]) -> None:
    """Register the partitions and record a runless materialization of each asset written, so
    the Dagster UI shows the imported partitions with their source."""
    for definition, dimension in ((models_partitions, "model"), (instances_partitions, "instance")):
        new = missing_keys([s.partition[dimension] for s in stored], instance.get_dynamic_partitions(definition.name))
        if new:
            instance.add_dynamic_partitions(definition.name, new)
    for s in stored:
        key = str(MultiPartitionKey({"model": s.partition["model"], "instance": s.partition["instance"]}))
        for asset in s.assets:
            instance.report_runless_asset_event(
                AssetMaterialization(
                    asset_key=asset,
                    partition=key,
                    description=f"imported from {', '.join(s.sources)}",
                    metadata={
                        "source": MetadataValue.text(", ".join(s.sources)),
                        "imported_runs": s.runs,
                        "imported_conversations": s.conversations,
                        "imported_calls": s.calls,
                    },
                )
            )


@contextmanager
def _collector_paused():
    """The import holds every record of every file, millions of objects that make no reference
    cycles (it leaves no cyclic garbage): the cyclic collector would only walk them again and
    again, ~15% of the time of a 340 MB import."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def import_files(
    store: Store,
    fmt: str,
    paths: Sequence[str | os.PathLike],
    *,
    model: str | None = None,
    instance: str | None = None,
    replace: bool = False,
    dagster_instance=None,
) -> list[StoredPartition]:
    """read_files → store_runs → report_imports (when a Dagster instance is given)."""
    with _collector_paused():
        stored = store_runs(store, read_files(fmt, paths, model=model, instance=instance), replace=replace)
    if dagster_instance is not None:
        report_imports(dagster_instance, stored)
    return stored


# -- export ---------------------------------------------------------------------------------
def stored_conversations(
    store: Store, *, models: Sequence[str] = (), instances: Sequence[str] = (), kinds: Sequence[str] = ()
) -> list[dict]:
    """Stored conversations, partition by partition in their stored order, filtered."""
    if MERGED_TRAJECTORIES.name not in store.table_names():
        raise TrajhubError(f"no merged_trajectories under {store.root} yet: run or import something first")
    keys = [_model_key(m, source="--model", line=None, field="model") for m in models]
    where = [
        f"{column} IN ({', '.join('?' * len(values))})"
        for column, values in (("model", keys), ("instance", list(instances)))
        if values
    ]
    partitions = store.sql(
        f"SELECT DISTINCT model, instance FROM {MERGED_TRAJECTORIES.name}"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY model, instance",
        keys + list(instances),
    ).to_pylist()
    conversations = []
    for partition in partitions:
        conversations += [
            c
            for c in table_to_conversations(store.read(MERGED_TRAJECTORIES, partition), **partition)
            if not kinds or c["meta"]["kind"] in kinds
        ]
    return conversations


def _scaffolds(store: Store) -> dict[str, tuple[str | None, str | None]]:
    if RUNS.name not in store.table_names():
        return {}
    rows = store.sql(f"SELECT run_id, scaffold, scaffold_version FROM {RUNS.name}").to_pylist()
    return {row["run_id"]: (row["scaffold"], row["scaffold_version"]) for row in rows}


def _write_text(path: Path, text: str) -> None:
    """Whole or not at all: write beside, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export_files(store: Store, fmt: str, out: str | os.PathLike, **filters) -> int:
    """Write the stored conversations (filtered by models, instances, kinds) in an export format:
    a .jsonl file, or (ATIF) a directory of <conversation_id>.json; returns how many."""
    entry, out = export_format(fmt), Path(out)
    if entry.one_file and out.suffix != ".jsonl":
        raise TrajhubError(f"--out {out}: the {entry.title} export is one JSONL file; name it *.jsonl")
    conversations = stored_conversations(store, **filters)
    scaffolds = _scaffolds(store)
    documents = [
        (c["meta"]["conversation_id"], entry.write(c, scaffolds.get(c["meta"]["run_id"], (None, None))))
        for c in conversations
    ]
    if out.suffix == ".jsonl":
        _write_text(out, "".join(json.dumps(d, ensure_ascii=False) + "\n" for _, d in documents))
    else:
        for conversation_id, document in documents:
            _write_text(out / f"{conversation_id}.json", json.dumps(document, ensure_ascii=False, indent=2))
    return len(documents)
