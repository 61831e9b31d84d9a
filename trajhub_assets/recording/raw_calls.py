"""A run's recorded calls, from the proxy's JSONL into the store and back.

Every call repeats the whole conversation, so storing calls verbatim grows with the square
of its length. The store keeps each distinct message, system prompt, tool list, parameter
set and response once, as a JSON blob keyed by its sha256 (`message_blobs`), and each call
as one `raw_calls` row: typed columns for queries, references to its blobs, and the rest
of the record (`envelope`). `rebuild_records` inverts `build_tables` exactly: the rebuilt
records serialize to the same JSON, key order included.

Both tables are partitioned by (model, instance), like every per-run asset; the attempts
of one (model, instance) share a partition, so load them together.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from trajhub_assets.errors import RecordError
from trajhub_assets.recording.run_id import parse_run_id
from trajhub_assets.recording.schema import MESSAGE_BLOBS, RAW_CALLS
from trajhub_assets.shared_history import repeated_prefix
from trajhub_assets.store import Store

log = logging.getLogger(__name__)

WIRE_FORMATS = ("anthropic_messages", "openai_chat", "openai_responses")
CALL_KINDS = ("agent", "count_tokens", "title", "background")
# Request fields with a blob of their own: large, and the same call after call.
_CONVERSATION_FIELDS = ("messages", "input")  # a list: one blob per item
_SYSTEM_FIELDS = ("system", "instructions")
_TOOLS_FIELD = "tools"

_REQUIRED = {
    "run_id": str,
    "call_id": str,
    "started_at": (int, float),
    "wire_format": str,
    "call_kind": str,
    "status": str,
    "request": dict,
}


@dataclass
class RunRecords:
    """The good records of one recordings file, and the lines that were not."""

    path: Path
    records: list[dict] = field(default_factory=list)
    bad_lines: list[RecordError] = field(default_factory=list)
    duplicates: int = 0


def encode(value) -> str:
    """The one JSON text of a value: key order kept, nothing escaped that need not be."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# -- reading ------------------------------------------------------------------------------
def _check(record, source: str, line: int) -> None:
    if not isinstance(record, dict):
        raise RecordError("a line must hold one JSON object", source=source, line=line)
    record_id = record.get("call_id") if isinstance(record.get("call_id"), str) else None
    for name, kind in _REQUIRED.items():
        if not isinstance(record.get(name), kind) or isinstance(record.get(name), bool):
            raise RecordError(
                f"missing or not a {getattr(kind, '__name__', 'number')}",
                source=source,
                line=line,
                record_id=record_id,
                field=name,
            )
    seq = record.get("seq")
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
        raise RecordError("not an int or null", source=source, line=line, record_id=record_id, field="seq")
    if record["wire_format"] not in WIRE_FORMATS:
        raise RecordError(
            f"unknown wire format {record['wire_format']!r}",
            source=source,
            line=line,
            record_id=record_id,
            field="wire_format",
        )


def number_calls(records: list[dict]) -> None:
    """Give each record with `seq: null` its seq, in the order the calls started.

    The proxy's workers and replicas share no counter, so they leave seq to the reader. The
    numbers follow the highest seq already in the file (recorded by an older, single-process
    proxy, or imported). Start times from one host's monotonic clock (`clock` is its boot id)
    are compared as they are; across hosts or a reboot, by the wall clock. The call id
    breaks ties, so every read numbers the same way."""
    unnumbered = [r for r in records if r.get("seq") is None]
    if not unnumbered:
        return
    clocks = {r.get("clock") for r in unnumbered}
    monotonic = (
        len(clocks) == 1 and None not in clocks and all(isinstance(r.get("started_ns"), int) for r in unnumbered)
    )
    start = (lambda r: r["started_ns"]) if monotonic else (lambda r: r["started_at"])
    first = max((r["seq"] for r in records if r.get("seq") is not None), default=-1) + 1
    for seq, record in enumerate(sorted(unnumbered, key=lambda r: (start(r), r["call_id"])), start=first):
        record["seq"] = seq


_RECORD_START = b'{"record_version":'  # the recorder writes this key first


def _after_half_line(raw: bytes) -> dict | None:
    """The whole record a line ends in, when a line fails to parse because a killed writer left
    half a line and another process (a worker, a replica) appended right after it."""
    start = raw.find(_RECORD_START, 1)
    while start != -1:
        try:
            record = json.loads(raw[start:])
        except ValueError:
            start = raw.find(_RECORD_START, start + 1)  # that one was inside the half line
            continue
        return record if isinstance(record, dict) else None
    return None


def read_run(path: str | Path) -> RunRecords:
    """Every good record of a recordings file, numbered (number_calls) and ordered by seq;
    bad lines become errors."""
    path = Path(path)
    run = RunRecords(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    seen: set[str] = set()
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        truncated = number == len(lines) and not data.endswith(b"\n")
        try:
            record = json.loads(raw)
        except ValueError as error:
            why = "truncated (the proxy stopped mid-write)" if truncated else f"not valid JSON ({error})"
            record = None if truncated else _after_half_line(raw)
            if record is not None:
                why = "half a line (its writer was killed mid-write), then a whole record, kept"
            run.bad_lines.append(RecordError(why, source=str(path), line=number))
            if record is None:
                continue
        try:
            _check(record, str(path), number)
        except RecordError as error:
            run.bad_lines.append(error)
            continue
        if record["call_id"] in seen:  # the recorder writes a call once; a copied file might not
            run.duplicates += 1
            continue
        seen.add(record["call_id"])
        run.records.append(record)
    if run.duplicates:
        log.warning("%s: skipped %d duplicate call id(s)", path, run.duplicates)
    number_calls(run.records)
    run.records.sort(key=lambda r: r["seq"])
    return run


def raise_for_bad_lines(runs: Iterable[RunRecords]) -> None:
    """After the good records are stored: fail, naming the first bad line and the count."""
    runs = list(runs)
    bad = [error for run in runs for error in run.bad_lines]
    if bad:
        kept = sum(len(run.records) for run in runs)
        first = bad[0]
        raise RecordError(
            f"{str(first).split(': ', 1)[-1]} ({len(bad)} bad line(s) in all; the {kept} good record(s) were stored)",
            source=first.source,
            line=first.line,
            record_id=first.record_id,
            field=first.field,
        )


def run_files(recordings_dir: str | Path, model_key: str, instance_id: str) -> list[Path]:
    """The recordings files of every run of (model, instance)."""
    found = []
    for path in sorted(Path(recordings_dir).glob("*.jsonl")):
        try:
            run = parse_run_id(path.stem)
        except RecordError:
            continue  # _unattributed.jsonl and strays
        if (run.model_key, run.instance) == (model_key, instance_id):
            found.append(path)
    return found


# -- records -> tables ----------------------------------------------------------------------
class _Blobs:
    def __init__(self) -> None:
        self.rows: dict[str, tuple[str, str]] = {}
        # id -> (value, its key): records that share a repeated part as one object (an import's
        # history, interchange/minivela.py) have it encoded and hashed once. The value is kept
        # so that its id is not reused.
        self._seen: dict[int, tuple[object, str]] = {}
        self._history: tuple[list, list[str]] = ([], [])  # the last list of messages, and its keys

    def add_all(self, kind: str, values: list) -> list[str]:
        """The keys of a call's messages. A call repeats the history of the call before: its very
        first messages (all of them, or all but the last, which a client may resend changed) have
        the keys they had."""
        before, keys = self._history
        same = repeated_prefix(values, before)
        keys = keys[:same] + [self.add(kind, value) for value in values[same:]]
        self._history = (list(values), keys)
        return keys

    def add(self, kind: str, value) -> str:
        seen = self._seen.get(id(value))
        if seen is not None and seen[0] is value:
            return seen[1]
        text = encode(value)
        key = hashlib.sha256(text.encode()).hexdigest()
        self.rows.setdefault(key, (kind, text))
        if isinstance(value, (dict, list)):
            self._seen[id(value)] = (value, key)
        return key

    def table(self) -> pa.Table:
        keys = sorted(self.rows)
        return pa.table(
            {
                "sha256": keys,
                "kind": [self.rows[k][0] for k in keys],
                "size": [len(self.rows[k][1].encode()) for k in keys],
                "json": [self.rows[k][1] for k in keys],
            },
            schema=MESSAGE_BLOBS.schema,
        )


def _request_parts(request: dict, blobs: _Blobs) -> dict:
    """A request as references into blobs: its messages, system prompt and tools one blob each."""
    conversation = next((k for k in _CONVERSATION_FIELDS if isinstance(request.get(k), list)), None)
    system = next((k for k in _SYSTEM_FIELDS if k in request), None)
    params = {k: v for k, v in request.items() if k not in (conversation, system, _TOOLS_FIELD)}
    return {
        "request_keys": list(request),
        "params_ref": blobs.add("params", params),
        "system_ref": blobs.add("system", request[system]) if system else None,
        "tools_ref": blobs.add("tools", request[_TOOLS_FIELD]) if _TOOLS_FIELD in request else None,
        "conversation_field": conversation,
        "message_refs": blobs.add_all("message", request[conversation]) if conversation else None,
    }


def _row(record: dict, blobs: _Blobs) -> dict:
    request, response = record["request"], record.get("response")
    run = parse_run_id(record["run_id"])
    usage = record.get("usage") if isinstance(record.get("usage"), dict) else {}
    error = record.get("error") if isinstance(record.get("error"), dict) else {}
    # The envelope keeps every other field, with request and response left in place as null.
    envelope = {k: (None if k in ("request", "response") else v) for k, v in record.items()}
    if isinstance(record.get("upstream_request"), dict):
        # What a translating route sent upstream: as references too, or it alone would grow
        # with the square of the conversation.
        envelope["upstream_request"] = _request_parts(record["upstream_request"], blobs)
    return {
        "run_id": record["run_id"],
        "attempt": run.attempt,
        "nonce": run.nonce,
        "call_id": record["call_id"],
        "seq": record["seq"],
        "started_at": record["started_at"],
        "ended_at": record.get("ended_at"),
        "first_token_at": record.get("first_token_at"),
        "endpoint": record.get("endpoint"),
        "wire_format": record["wire_format"],
        "call_kind": record["call_kind"],
        "stream": bool(record.get("stream")),
        "model": record.get("model"),
        "litellm_model": record.get("litellm_model"),
        "status": record["status"],
        "http_status": record.get("http_status"),
        "error_type": error.get("type"),
        "error_message": error.get("message"),
        "input_tokens": usage.get("input_tokens"),
        "output_tokens": usage.get("output_tokens"),
        "cache_read_tokens": usage.get("cache_read_tokens"),
        "cache_creation_tokens": usage.get("cache_creation_tokens"),
        "cost_usd": record.get("cost_usd"),
        **_request_parts(request, blobs),
        "response_ref": blobs.add("response", response) if response is not None else None,
        "envelope": encode(envelope),
    }


def build_tables(records: Sequence[dict], model_key: str, instance_id: str) -> tuple[pa.Table, pa.Table]:
    """`raw_calls` and `message_blobs` for one (model, instance) partition."""
    blobs = _Blobs()
    rows = []
    for record in sorted(records, key=lambda r: (r["run_id"], r["seq"])):
        run = parse_run_id(record["run_id"])
        if (run.model_key, run.instance) != (model_key, instance_id):
            raise RecordError(
                f"belongs to ({run.model_key}, {run.instance}), not to the partition "
                f"({model_key}, {instance_id}) being loaded",
                source="raw_calls",
                record_id=record["call_id"],
                field="run_id",
            )
        rows.append(_row(record, blobs))
    calls = pa.Table.from_pylist(rows, schema=RAW_CALLS.schema) if rows else RAW_CALLS.schema.empty_table()
    return calls, blobs.table()


# -- tables -> records ----------------------------------------------------------------------
def rebuild_records(calls: pa.Table, blobs: pa.Table) -> list[dict]:
    """The exact records `build_tables` was given, ordered by (run_id, seq).

    Each blob is decoded once: every call repeats the history before it, so the records share
    those message objects. Treat them as read-only."""
    texts = dict(zip(blobs.column("sha256").to_pylist(), blobs.column("json").to_pylist(), strict=True))
    decoded: dict[str, object] = {}

    def blob(ref: str | None, call_id: str):
        if ref is None:
            return None
        if ref not in decoded:
            if ref not in texts:
                raise RecordError(
                    f"references blob {ref} which message_blobs lacks", source="raw_calls", record_id=call_id
                )
            decoded[ref] = json.loads(texts[ref])
        return decoded[ref]

    def request(refs: dict, call_id: str) -> dict:
        params = blob(refs["params_ref"], call_id)
        parts = {}
        if refs["conversation_field"]:
            parts[refs["conversation_field"]] = [blob(ref, call_id) for ref in refs["message_refs"]]
        if refs["tools_ref"] is not None:
            parts[_TOOLS_FIELD] = blob(refs["tools_ref"], call_id)
        system = next((k for k in refs["request_keys"] if k in _SYSTEM_FIELDS and k not in params), None)
        if system:
            parts[system] = blob(refs["system_ref"], call_id)
        return {k: parts[k] if k in parts else params[k] for k in refs["request_keys"]}

    records = []
    for row in sorted(calls.to_pylist(), key=lambda r: (r["run_id"], r["seq"])):
        call_id = row["call_id"]
        record = json.loads(row["envelope"])
        record["request"] = request(row, call_id)
        record["response"] = blob(row["response_ref"], call_id)
        if isinstance(record.get("upstream_request"), dict):
            record["upstream_request"] = request(record["upstream_request"], call_id)
        records.append(record)
    return records


# -- the load a raw_trajectories asset does -------------------------------------------------
@dataclass
class LoadResult:
    calls: int
    blobs: int
    runs: int
    bad_lines: int
    raw_bytes: int
    stored_bytes: int


def load_runs(store: Store, paths: Sequence[str | Path], model_key: str, instance_id: str) -> LoadResult:
    """Store every good record of these runs as the (model, instance) partition, then fail
    on any bad line (RecordError naming the file and line)."""
    runs = [read_run(path) for path in paths]
    calls, blobs = build_tables([r for run in runs for r in run.records], model_key, instance_id)
    partition = {"model": model_key, "instance": instance_id}
    written = [store.write(RAW_CALLS, calls, partition), store.write(MESSAGE_BLOBS, blobs, partition)]
    result = LoadResult(
        calls=calls.num_rows,
        blobs=blobs.num_rows,
        runs=len(runs),
        bad_lines=sum(len(run.bad_lines) for run in runs),
        raw_bytes=sum(Path(p).stat().st_size for p in paths),
        stored_bytes=sum(store.size(p) for p in written),  # a path, or an s3:// object
    )
    raise_for_bad_lines(runs)
    return result
