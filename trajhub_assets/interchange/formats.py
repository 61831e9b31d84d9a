"""What the interchange formats share: JSON and JSONL files read with their line numbers,
schema errors that name the file, line and field, the text of a content-part list, and the
fields of a message a format cannot say (kept beside it so that export → import is exact).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from trajhub_assets.errors import RecordError
from trajhub_assets.merge.normalize import MARKERS, TEXT_TYPES

TRAJHUB = "trajhub"  # the key of trajhub's own fields inside another format's extension objects
_JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}


def read_documents(path: str | Path) -> list[tuple[int | None, object]]:
    """(line, document): one per non-blank line of a .jsonl file, or the one document of any
    other file (line None). Nothing is returned unless the whole file parses."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RecordError(f"cannot read: {error}", source=str(path)) from error
    if path.suffix != ".jsonl":
        try:
            return [(None, json.loads(text))]
        except ValueError as error:
            raise RecordError(f"not JSON: {error}", source=str(path)) from error
    documents = []
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            documents.append((number, json.loads(line)))
        except ValueError as error:
            cut = number == len(lines) and not text.endswith("\n")
            why = "truncated (the file ends mid-record)" if cut else f"not JSON ({error})"
            raise RecordError(why, source=str(path), line=number) from error
    return documents


def json_path(path: Sequence) -> str:
    """['steps', 2, 'tool_calls'] → 'steps[2].tool_calls'."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(error: ValidationError) -> str:
    if error.validator == "type":  # jsonschema would print the whole offending value
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"expected {expected}, got {_JSON_TYPES.get(type(error.instance), 'a value')}"
    message = error.message
    return message if len(message) <= 200 else message[:200] + "…"


def check_schema(
    validator: Draft202012Validator,
    document,
    *,
    source: str,
    line: int | None,
    record_of: Callable[[Sequence], str | None] = lambda path: None,
) -> None:
    """Raise a RecordError naming the file, line, record and field of the most relevant
    schema violation (and how many there are)."""
    errors = list(validator.iter_errors(document))
    if not errors:
        return
    error = best_match(errors)
    more = f" ({len(errors) - 1} more problem(s) in this record)" if len(errors) > 1 else ""
    raise RecordError(
        _describe(error) + more,
        source=source,
        line=line,
        record_id=record_of(list(error.absolute_path)),
        field=json_path(error.absolute_path) or None,
    )


def content_text(content) -> str:
    """A string, or a list of content parts (ATIF or OpenAI) as text: text parts joined,
    other parts kept as a marker such as "[image]", as the merge does."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if isinstance(part, str):
            parts.append(part)
        elif kind in TEXT_TYPES:
            parts.append(part.get("text") or "")
        else:
            parts.append(MARKERS.get(kind, f"[{kind}]"))
    return "".join(parts)


def differences(actual: dict, derived: dict) -> dict:
    """The fields of `actual` that a reader of the format would rebuild wrongly as `derived`."""
    return {
        key: value
        for key, value in actual.items()
        if key not in derived or type(derived[key]) is not type(value) or derived[key] != value
    }
