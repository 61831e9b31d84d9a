"""The secret scan: every text field of a release is searched for API keys before anything is written.

One scanner does every scan: the import refuses a record (interchange/sources.py), the blocking
check after a load of proxy recordings reports the stored calls and blobs (checks.py), and the
release refuses to write (release.py); all go through `SecretScanner`, over the one pattern set
compiled here at import (`_SECRET`, tried only where `_START` finds a key can begin).

A scanner works on distinct content once: a text is searched the first time it is seen, keyed by
its sha256 (the same digest the store keys `message_blobs` by), and a value seen again, such as a
call's history repeated in every later call, reuses what was found in it. With `shared=True` (the
records of an import, whose repeated messages are one object: interchange/minivela.py) a message
object seen before is not even walked again; its hits come back under the path it has now.

Thinking signatures and redacted thinking data (`thinking_blocks[i].signature` / `.data`) are
skipped while they are plain base64: provider-encrypted, they hold no readable text and would
match a key format by chance now and then.

A hit names the table, the row and the field path (`messages[5].tool_calls[0].function.arguments`)
and shows the key masked (its kind, first characters and length), so the error itself never
leaks what it found. Patterns follow the providers' published key formats; a generic
`Authorization: Bearer <token>` catches the rest of what agents print from curl -v and friends.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from trajhub_assets.errors import TrajhubError
from trajhub_assets.shared_history import repeated_prefix

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
# _START without its lookaheads, for Arrow's regex engine (RE2): a string it finds nothing in holds
# no key, so a table's rows without such a string need no walk (SecretScanner.sparse_table).
_START_ANYWHERE = "sk-|hf_|AKIA|ASIA|gh[pousr]_|github_pat_|AIza|xox[abposr]-|-----BEGIN|(?i:authorization)"
# The shortest text _SECRET can match (a Slack token: "xoxb-" and 10 more): shorter texts hold no key.
SHORTEST_MATCH = 15
# Texts at least this long are searched once per distinct content (keyed by their sha256); a
# shorter one costs less to search again than to hash.
CACHED_FROM = 64
# Thinking signatures and redacted thinking are provider-encrypted base64 blobs: no text anyone
# wrote, and long enough that "+AIza..." turns up in them by chance. Skipped when they are base64.
_OPAQUE_FIELD = re.compile(r"thinking_blocks\[\d+\]\.(?:signature|data)$")
_OPAQUE_KEYS = ("signature", "data")  # a field path _OPAQUE_FIELD can match ends with one of these
_BASE64 = re.compile(r"[A-Za-z0-9+/_\-]*={0,2}")
_THINKING_ITEM = re.compile(r"thinking_blocks\[\d+\]$")
_CONTAINERS = (dict, list, tuple, Mapping)  # what the scan walks into
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
    """(kind, masked) for every key-like match in the text, as _SECRET.finditer would give them.
    Uncached: SecretScanner.text searches each distinct text once with it."""
    if len(text) < SHORTEST_MATCH:
        return
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


def _join(prefix: str, tail: str) -> str:
    """A path under `prefix`, from its tail as stored: '.key…' or '[i]…'."""
    if prefix:
        return prefix + tail
    return tail[1:] if tail.startswith(".") else tail


class SecretScanner:
    """The one secret scanner: each distinct text searched once, hits found in walk order.

    Counters: `texts_scanned` and `chars_scanned` count what the pattern set ran over (distinct
    texts, and short ones each time); `reused` counts texts and shared values answered from what
    was found before, `walked` the containers (dicts and lists) walked.
    """

    def __init__(self) -> None:
        self._texts: dict[bytes, tuple[tuple[str, str], ...]] = {}
        # (id, path context) -> (the value, kept alive so its id stays its own; its hits as
        # (path tail, kind, masked)); only for shared=True walks.
        self._values: dict[tuple[int, int], tuple[object, tuple[tuple[str, str, str], ...]]] = {}
        # (path, context) -> the items of the last list walked there that held no key; for
        # shared=True walks. A call's history is the one before's, longer: only its new items are walked.
        self._clean: dict[tuple[str, int], list] = {}
        self.texts_scanned = 0
        self.chars_scanned = 0
        self.reused = 0
        self.walked = 0

    # -- texts --------------------------------------------------------------------------
    def text(self, text: str) -> tuple[tuple[str, str], ...]:
        """(kind, masked) of every key in the text, searched once per distinct text."""
        if len(text) < SHORTEST_MATCH:
            return ()
        if len(text) < CACHED_FROM:
            self.texts_scanned += 1
            self.chars_scanned += len(text)
            return tuple(scan_text(text))
        key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
        found = self._texts.get(key)
        if found is None:
            found = self._texts[key] = tuple(scan_text(text))
            self.texts_scanned += 1
            self.chars_scanned += len(text)
        else:
            self.reused += 1
        return found

    # -- values: nested dicts and lists --------------------------------------------------
    def value(self, value, path: str = "", *, shared: bool = False) -> list[tuple[str, str, str]]:
        """(field path, kind, masked) of every key in every string of the value, in walk order.

        shared=True: a dict or list met again (the same object) is not walked again; use it for
        values that stay alive while the scanner does, whose repeats are one object."""
        out: list[tuple[str, str, str]] = []
        if isinstance(value, str):
            if len(value) >= SHORTEST_MATCH:
                self._string(value, path, path, out)  # a string given alone: its path is its key
        elif isinstance(value, _CONTAINERS):
            context = 1 if path.endswith("thinking_blocks") else 2 if _THINKING_ITEM.search(path) else 0
            self._container(value, path, context, out, shared)
        return out

    def _string(self, text: str, path: str, key: str, out: list) -> None:
        if key.endswith(_OPAQUE_KEYS) and is_opaque(path, text):
            return
        found = self.text(text)
        if found:
            out.extend((path, kind, masked) for kind, masked in found)

    def _container(self, value, path: str, context: int, out: list, shared: bool) -> None:
        """`context`: how the path ends, the one thing besides the value that decides what is found
        in it (which fields are a thinking block's opaque ones): 1 "…thinking_blocks", 2
        "…thinking_blocks[3]", 0 otherwise."""
        if not shared:
            self._children(value, path, out, False)
            return
        entry = self._values.get((id(value), context))
        if entry is not None and entry[0] is value:
            self.reused += 1
            out.extend((_join(path, tail), kind, masked) for tail, kind, masked in entry[1])
            return
        found: list[tuple[str, str, str]] = []
        self._children(value, path, found, True)
        if found:
            dotted = not path and isinstance(value, Mapping)
            tails = tuple((("." + p) if dotted else p[len(path) :], kind, masked) for p, kind, masked in found)
            out.extend(found)
        else:
            tails = ()
        self._values[(id(value), context)] = (value, tails)

    def _children(self, value, path: str, out: list, shared: bool) -> None:
        """Paths as the scan has always named them, "a.b[2].c", built only for what is searched."""
        self.walked += 1
        if isinstance(value, Mapping):
            for key, item in value.items():
                if isinstance(item, str):
                    if len(item) >= SHORTEST_MATCH:
                        name = key if type(key) is str else str(key)
                        self._string(item, f"{path}.{name}" if path else name, name, out)
                elif isinstance(item, _CONTAINERS):
                    name = key if type(key) is str else str(key)
                    # "a.<name>" ends as the name does (a thinking block's path holds no ".")
                    context = (
                        1
                        if name.endswith("thinking_blocks")
                        else 2
                        if name.endswith("]") and _THINKING_ITEM.search(name)
                        else 0
                    )
                    self._container(item, f"{path}.{name}" if path else name, context, out, shared)
            return
        context = 2 if path.endswith("thinking_blocks") else 0
        values = self._values
        start, found = 0, len(out)
        if shared:
            # The very items at the same places hold the same texts, so no key either: all of
            # the clean list's, or all but its last (a client resends that one, its cache
            # breakpoint moved off).
            start = repeated_prefix(value, self._clean.get((path, context), ()))
            self.reused += start
        for i in range(start, len(value)):
            item = value[i]
            if isinstance(item, str):
                if len(item) >= SHORTEST_MATCH:
                    self._string(item, f"{path}[{i}]", "", out)
            elif isinstance(item, _CONTAINERS):
                if shared:  # the common case, an item seen before: no path unless it holds a hit
                    entry = values.get((id(item), context))
                    if entry is not None and entry[0] is item:
                        self.reused += 1
                        if entry[1]:
                            here = f"{path}[{i}]"
                            out.extend((_join(here, tail), kind, masked) for tail, kind, masked in entry[1])
                        continue
                self._container(item, f"{path}[{i}]", context, out, shared)
        if shared and len(out) == found:
            self._clean[(path, context)] = list(value)

    # -- rows, tables, documents --------------------------------------------------------
    def rows(self, name: str, rows: Iterable[Mapping], start: int = 0, *, shared: bool = False) -> list[Hit]:
        hits = []
        for row_number, row in enumerate(rows, start=start):
            hits.extend(
                Hit(name, row_number, path, kind, masked) for path, kind, masked in self.value(row, shared=shared)
            )
        return hits

    def table(self, name: str, table: pa.Table, batch_rows: int = 1024, start: int = 0) -> list[Hit]:
        """Every string anywhere in the table, nested lists and structs included, batch by batch;
        rows numbered from `start` (a shard's first row in its config)."""
        hits = []
        for batch in table.to_batches(max_chunksize=batch_rows):
            hits.extend(self.rows(name, batch.to_pylist(), start))
            start += batch.num_rows
        return hits

    def sparse_table(self, name: str, table: pa.Table, start: int = 0, batch_rows: int = 1024) -> list[Hit]:
        """`table`'s hits, walking only the rows that hold a string a key can start in (found by
        one Arrow regex pass per string column): the other rows hold no key."""
        hits, numbers = [], rows_with_key_starts(table)
        for i in range(0, len(numbers), batch_rows):
            part = numbers[i : i + batch_rows]
            for number, row in zip(part, table.take(part).to_pylist(), strict=True):
                hits.extend(self.rows(name, [row], start + number))
        return hits

    def document(self, name: str, text: str) -> list[Hit]:
        hits = []
        for number, line in enumerate(text.splitlines(), start=1):
            hits.extend(Hit(name, None, f"line {number}", kind, masked) for kind, masked in self.text(line))
        return hits

    def tables(self, tables: Mapping[str, pa.Table], documents: Mapping[str, str] | None = None) -> list[Hit]:
        hits = [hit for name, table in tables.items() for hit in self.table(name, table)]
        return hits + [hit for name, text in (documents or {}).items() for hit in self.document(name, text)]


def rows_with_key_starts(table: pa.Table) -> list[int]:
    """The rows with a string anywhere (nested lists and structs included) in which a key can start."""
    found: set[int] = set()
    for column in table.columns:
        offset = 0
        for chunk in column.chunks:
            for rows in _key_starts(chunk):
                found.update(offset + n for n in rows.to_pylist())
            offset += len(chunk)
    return sorted(found)


def _key_starts(array: pa.Array, rows: pa.Array | None = None) -> Iterator[pa.Array]:
    """Row numbers (of the outermost array) of the strings in `array` where a key can start."""
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        found = pc.indices_nonzero(pc.fill_null(pc.match_substring_regex(array, _START_ANYWHERE), False))
        yield found if rows is None else pc.take(rows, found)
    elif pa.types.is_struct(kind):
        for child in array.flatten():
            yield from _key_starts(child, rows)
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        parents = pc.list_parent_indices(array)
        yield from _key_starts(pc.list_flatten(array), parents if rows is None else pc.take(rows, parents))
    elif pa.types.is_nested(kind) or pa.types.is_dictionary(kind):  # not read here: every row is walked
        every = pa.array(range(len(array)), pa.int64())
        yield every if rows is None else rows


# Module-level forms, each with a scanner of its own unless given one.
def scan_rows(name: str, rows: Iterable[Mapping], start: int = 0, scanner: SecretScanner | None = None) -> list[Hit]:
    return (scanner or SecretScanner()).rows(name, rows, start)


def scan_tables(
    tables: Mapping[str, pa.Table], documents: Mapping[str, str] | None = None, scanner: SecretScanner | None = None
) -> list[Hit]:
    """Every hit in the tables and documents, with one scanner: text they share is searched once."""
    return (scanner or SecretScanner()).tables(tables, documents)


def check_no_secrets(
    tables: Mapping[str, pa.Table], documents: Mapping[str, str] | None = None, scanner: SecretScanner | None = None
) -> None:
    """Raise SecretLeakError naming every hit; return quietly when nothing looks like a key."""
    hits = scan_tables(tables, documents, scanner)
    if hits:
        raise SecretLeakError(hits)
