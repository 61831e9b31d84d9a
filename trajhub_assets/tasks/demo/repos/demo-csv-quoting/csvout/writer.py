"""CSV writer used by the order export job.

Rows are sequences of plain values (str, int, float, None). Lines end with
CRLF as RFC 4180 asks, so spreadsheet tools open the files unchanged.
"""

from collections.abc import Iterable, Sequence

LINE_END = "\r\n"


def format_field(value: object, delimiter: str = ",") -> str:
    """Return one field as CSV text; None becomes an empty field."""
    if value is None:
        return ""
    return str(value)


def format_row(values: Sequence[object], delimiter: str = ",") -> str:
    """Return one CSV line without its line ending."""
    return delimiter.join(format_field(value, delimiter) for value in values)


def to_csv(
    rows: Iterable[Sequence[object]],
    header: Sequence[str] | None = None,
    delimiter: str = ",",
) -> str:
    """Return the whole document, one line per row, each ending in CRLF."""
    lines = []
    if header is not None:
        lines.append(format_row(header, delimiter))
    for row in rows:
        lines.append(format_row(row, delimiter))
    return "".join(line + LINE_END for line in lines)
