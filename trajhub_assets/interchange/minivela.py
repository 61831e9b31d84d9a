"""mini-vela raw trajectories → trajhub call records.

mini-vela (MiniMax-AI/mini-vela) records one JSON line per API call through its LiteLLM
logger: {session_id, biz_id, request_time (ms), request_body {messages, system, tools,
model, max_tokens, metadata} in the Anthropic messages format, response_body {content}}.
Both the sync and the async success hooks fire, so every call is there twice; the two
lines differ only in request_time. Failed calls are not recorded.

Each distinct call becomes one record in trajhub's call format (see
trajhub_assets.merge.merge), with a call_id derived from its content, so the two copies
collapse into one, and a `provenance` field that keeps where it came from: file, lines,
session_id, biz_id and every request_time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable

from trajhub_assets.errors import RecordError


def _body(line: dict, name: str, source: str, number: int) -> dict:
    body = line.get(name)
    if isinstance(body, str):  # mini-vela's reader accepts bodies stored as JSON strings
        try:
            body = json.loads(body)
        except ValueError as error:
            raise RecordError(f"not JSON: {error}", source=source, line=number, field=name) from error
    if not isinstance(body, dict):
        raise RecordError(f"expected an object, got {type(body).__name__}", source=source, line=number, field=name)
    return body


def minivela_to_calls(
    lines: Iterable[dict | None], *, source: str = "mini-vela", run_id: str | None = None
) -> list[dict]:
    """Call records from parsed mini-vela lines, numbered from 1 in errors and provenance
    (None stands for a blank line: skipped, but counted)."""
    calls: dict[str, dict] = {}
    for number, line in enumerate(lines, start=1):
        if line is None:
            continue
        if not isinstance(line, dict):
            raise RecordError(f"expected an object, got {type(line).__name__}", source=source, line=number)
        request = _body(line, "request_body", source, number)
        response = _body(line, "response_body", source, number)
        if not isinstance(response.get("content", []), list):
            raise RecordError(
                "expected a list of content blocks", source=source, line=number, field="response_body.content"
            )
        request_time = line.get("request_time")
        if not isinstance(request_time, (int, float)):
            raise RecordError(
                f"expected milliseconds since the epoch, got {request_time!r}",
                source=source,
                line=number,
                field="request_time",
            )
        digest = hashlib.sha256(
            json.dumps([request, response], sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
        ).hexdigest()
        call_id = f"mv-{digest[:20]}"
        seen = calls.get(call_id)
        if seen is not None:
            seen["provenance"]["lines"].append(number)
            seen["provenance"]["request_times"].append(request_time)
            continue
        # mini-vela stamps a line when the call has finished, so both times are that moment.
        at = request_time / 1000
        calls[call_id] = {
            "run_id": run_id or line.get("session_id") or "",
            "call_id": call_id,
            "seq": None,
            "started_at": at,
            "ended_at": at,
            "wire_format": "anthropic_messages",
            "call_kind": "agent",
            "request": request,
            "response": {"content": response.get("content", []), "stop_reason": None},
            "status": "ok",
            "error": None,
            "model": request.get("model"),
            "source": "mini-vela",
            "provenance": {
                "format": "mini-vela",
                "file": source,
                "lines": [number],
                "request_times": [request_time],
                "session_id": line.get("session_id"),
                "biz_id": line.get("biz_id"),
            },
        }
    ordered = sorted(calls.values(), key=lambda c: (c["started_at"], c["provenance"]["lines"][0]))
    for seq, call in enumerate(ordered):
        call["seq"] = seq
    return ordered


def read_minivela(path: str | os.PathLike, *, run_id: str | None = None) -> list[dict]:
    """Call records from a mini-vela raw .jsonl file."""
    lines = []
    with open(path, encoding="utf-8", errors="surrogatepass") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                lines.append(None)
                continue
            try:
                lines.append(json.loads(text))
            except ValueError as error:
                raise RecordError(f"not JSON: {error}", source=str(path), line=number) from error
    return minivela_to_calls(lines, source=str(path), run_id=run_id)
