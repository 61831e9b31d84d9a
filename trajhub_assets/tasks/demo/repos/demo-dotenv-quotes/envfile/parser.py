"""Parse .env files: KEY=value lines, comments and blank lines (see docs/SYNTAX.md)."""

import re
from pathlib import Path

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ParseError(ValueError):
    def __init__(self, line_number: int, message: str) -> None:
        super().__init__(f"line {line_number}: {message}")
        self.line_number = line_number


def parse(text: str) -> dict[str, str]:
    """Return the assignments in `text`; a later assignment of a key wins."""
    values: dict[str, str] = {}
    for line_number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ParseError(line_number, "expected KEY=value")
        key, value = line.split("=", 1)
        key = key.strip()
        if not _KEY.fullmatch(key):
            raise ParseError(line_number, f"invalid key {key!r}")
        values[key] = value.strip()
    return values


def load(path: str | Path) -> dict[str, str]:
    return parse(Path(path).read_text(encoding="utf-8"))
