"""What may differ between a run and its replay without the replay being wrong: the masks.

Every mask is here, in the order they are applied, each with the reason it exists. A
replay compares requests after masking (so a test runner's "0.003s" or today's date is
not a divergence) and reports the raw, unmasked comparison next to it, so nothing a mask
hides goes unseen. A mask is a regular expression and the placeholder it leaves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Mask:
    name: str
    pattern: re.Pattern
    placeholder: str
    why: str


def _mask(name: str, pattern: str, placeholder: str, why: str) -> Mask:
    return Mask(name, re.compile(pattern), placeholder, why)


MASKS: tuple[Mask, ...] = (
    # First: a run id holds a hex nonce the hex mask would only half cover.
    _mask(
        "run_id",
        r"[A-Za-z0-9._:@+-]+~[A-Za-z0-9._:@+-]+~\d+~[0-9a-f]{8}",
        "<run-id>",
        "the replay runs under a run id of its own (recording/run_id.py)",
    ),
    _mask(
        "uuid",
        r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b",
        "<uuid>",
        "session and request ids (Claude Code's metadata.user_id session_id)",
    ),
    _mask(
        "timestamp",
        r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?\b",
        "<date>",
        "today's date in system prompts (Claude Code), file times, log lines",
    ),
    _mask(
        "ls_time",
        r"\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ \d]\d (?:\d\d:\d\d|\d{4})\b",
        "<mtime>",
        "`ls -l` modification times",
    ),
    _mask(
        "tmp_path",
        r"/tmp/[^\s\"'/:\\]+",
        "/tmp/<tmp>",
        "temporary directories, e.g. the local backend's copy of the workspace",
    ),
    _mask("hex_address", r"\b0x[0-9a-fA-F]{4,}\b", "<0x-address>", "object reprs, pointers"),
    # Lower-case hex of 7+ characters with at least one digit: git commit and blob hashes,
    # container ids, Claude Code's device id; words such as "defaced" are left alone.
    _mask(
        "hex_id",
        r"\b(?=[a-f]*\d)[0-9a-f]{7,64}\b",
        "<hex>",
        "git hashes of the sandbox's baseline commit, container and device ids",
    ),
    _mask(
        "duration",
        r"(?<![\w.])\d+(?:\.\d+)?\s?(?:ms|s|sec|secs|seconds)\b",
        "<duration>",
        "timings printed by test runners and tools (`Ran 5 tests in 0.003s`)",
    ),
)


def mask_text(text: str) -> str:
    for mask in MASKS:
        text = mask.pattern.sub(mask.placeholder, text)
    return text


def mask_value(value):
    """A JSON value with every string (keys kept) masked."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, list):
        return [mask_value(item) for item in value]
    if isinstance(value, dict):
        return {key: mask_value(item) for key, item in value.items()}
    return value


def masks_markdown() -> str:
    """The masks as a table, for the README and `trajhub replay --masks`."""
    rows = [
        f"| `{m.name}` | `{m.pattern.pattern.replace('|', chr(92) + '|')}` | `{m.placeholder}` | {m.why} |"
        for m in MASKS
    ]
    return "| mask | pattern | becomes | why |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
