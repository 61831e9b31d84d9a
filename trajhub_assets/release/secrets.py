"""The secret scan: every text field of a release is searched for API keys before anything is written.

Thinking signatures and redacted thinking data (`thinking_blocks[i].signature` / `.data`) are
skipped while they are plain base64: provider-encrypted, they hold no readable text and would
match a key format by chance now and then.

A hit names the table, the row and the field path (`messages[5].tool_calls[0].function.arguments`)
and shows the key masked (its kind, first characters and length), so the error itself never
leaks what it found. Patterns follow the providers' published key formats; a generic
`Authorization: Bearer <token>` catches the rest of what agents print from curl -v and friends.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import pyarrow as pa

from trajhub_assets.errors import TrajhubError

# Order matters where one format is a prefix of another: the first alternative that matches wins.
PATTERNS: dict[str, str] = {
    "anthropic": r"sk-ant-[A-Za-z0-9_\-]{20,}",
    "openai_project": r"sk-proj-[A-Za-z0-9_\-]{20,}",
    # Random base62 keys hold a digit; hyphenated words after "sk-" do not.
    "openai": r"sk-(?:svcacct-|admin-)?(?=[A-Za-z_\-]*[0-9])[A-Za-z0-9_\-]{20,}",
    "huggingface": r"hf_[A-Za-z0-9]{30,}",
    "aws_access_key": r"(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Z])",
    "github_pat": r"github_pat_[A-Za-z0-9_]{22,}",
    "github_token": r"gh[pousr]_[A-Za-z0-9]{36,}",
    "google_api_key": r"AIza[0-9A-Za-z_\-]{35}",
    "slack_token": r"xox[abposr]-[A-Za-z0-9\-]{10,}",
    "private_key": r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----",
    "bearer_token": r"(?i:authorization)[\"']?\s*[:=]\s*[\"']?(?i:bearer)\s+[A-Za-z0-9._~+/=\-]{20,}",
}
# A key starts at a word boundary: "task-ant..." or "mask_hf_..." are not keys.
_SECRET = re.compile("|".join(f"(?P<{kind}>(?<![A-Za-z0-9_\\-]){pattern})" for kind, pattern in PATTERNS.items()))
# Where a key can start: each pattern begins with one of these. Finding them first and trying
# _SECRET only there is ~10x faster than _SECRET at every position (the lookahead finds
# overlapping starts; the leading class lets the regex engine skip other characters quickly).
_START = re.compile(
    r"(?=[aAghsx-])(?=sk-|hf_|AKIA|ASIA|gh[pousr]_|github_pat_|AIza|xox[abposr]-|-----BEGIN"
    r"|(?i:authorization))"
)
# Thinking signatures and redacted thinking are provider-encrypted base64 blobs: no text anyone
# wrote, and long enough that "+AIza..." turns up in them by chance. Skipped when they are base64.
_OPAQUE_FIELD = re.compile(r"thinking_blocks\[\d+\]\.(?:signature|data)$")
_BASE64 = re.compile(r"[A-Za-z0-9+/_\-]*={0,2}")
MAX_REPORTED = 20


class SecretLeakError(TrajhubError):
    """A release would publish something that looks like a credential."""

    def __init__(self, hits: list[Hit]):
        self.hits = hits
        shown = "\n".join(f"  {h}" for h in hits[:MAX_REPORTED])
        more = f"\n  ... and {len(hits) - MAX_REPORTED} more" if len(hits) > MAX_REPORTED else ""
        super().__init__(
            f"release refused: {len(hits)} possible secret(s) found; remove or redact "
            f"them at the source and rebuild:\n{shown}{more}"
        )


@dataclass(frozen=True)
class Hit:
    table: str
    row: int | None  # None for a document (the card, a report)
    field: str
    kind: str
    masked: str

    def __str__(self) -> str:
        where = f"{self.table} row {self.row}" if self.row is not None else self.table
        return f"{where}, field {self.field}: {self.kind} key {self.masked}"


def mask(secret: str) -> str:
    """Enough to find it again in the source, not enough to use it."""
    visible = secret[:8] if len(secret) >= 24 else secret[:4]
    return f"{visible}…[{len(secret)} chars]"


def scan_text(text: str) -> Iterator[tuple[str, str]]:
    """(kind, masked) for every key-like match in the text, as _SECRET.finditer would give them."""
    end = 0
    for start in _START.finditer(text):
        if start.start() < end:
            continue  # inside the key just found
        match = _SECRET.match(text, start.start())  # the lookbehind still sees the text before
        if match:
            end = match.end()
            yield match.lastgroup, mask(match.group())


def is_opaque(path: str, text: str) -> bool:
    """A thinking block's signature or redacted data that is base64 only."""
    return _OPAQUE_FIELD.search(path) is not None and _BASE64.fullmatch(text) is not None


def _walk(value, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]")


def scan_rows(name: str, rows: Iterable[Mapping], start: int = 0) -> list[Hit]:
    hits = []
    for row_number, row in enumerate(rows, start=start):
        for path, text in _walk(row, ""):
            if not is_opaque(path, text):
                hits.extend(Hit(name, row_number, path, kind, masked) for kind, masked in scan_text(text))
    return hits


def scan_table(name: str, table: pa.Table, batch_rows: int = 1024) -> list[Hit]:
    """Every string anywhere in the table, nested lists and structs included, batch by batch."""
    hits, start = [], 0
    for batch in table.to_batches(max_chunksize=batch_rows):
        hits.extend(scan_rows(name, batch.to_pylist(), start))
        start += batch.num_rows
    return hits


def scan_document(name: str, text: str) -> list[Hit]:
    hits = []
    for number, line in enumerate(text.splitlines(), start=1):
        hits.extend(Hit(name, None, f"line {number}", kind, masked) for kind, masked in scan_text(line))
    return hits


def check_no_secrets(tables: Mapping[str, pa.Table], documents: Mapping[str, str] | None = None) -> None:
    """Raise SecretLeakError naming every hit; return quietly when nothing looks like a key."""
    hits = [hit for name, table in tables.items() for hit in scan_table(name, table)]
    hits += [hit for name, text in (documents or {}).items() for hit in scan_document(name, text)]
    if hits:
        raise SecretLeakError(hits)
