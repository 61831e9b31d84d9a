"""Parse date range filters such as `2024-03`, `2024-01-05..2024-02` or `2024`.

Every range is inclusive on both ends.
"""

import re
from datetime import date, timedelta

_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_YEAR = re.compile(r"^(\d{4})$")


def _period_bounds(text: str) -> tuple[date, date]:
    """Return the first and last day of the day, month or year named by `text`."""
    text = text.strip()
    if match := _DAY.match(text):
        day = date(*map(int, match.groups()))
        return day, day
    if match := _MONTH.match(text):
        year, month = map(int, match.groups())
        last = date(year, month + 1, 1) - timedelta(days=1)
        return date(year, month, 1), last
    if match := _YEAR.match(text):
        year = int(match.group(1))
        return date(year, 1, 1), date(year, 12, 31)
    raise ValueError(f"not a date, month or year: {text!r}")


def parse_range(text: str) -> tuple[date, date]:
    """Return (first day, last day) of `text`, both included."""
    if ".." in text:
        left, right = text.split("..", 1)
        start = _period_bounds(left)[0]
        end = _period_bounds(right)[0]
    else:
        start, end = _period_bounds(text)
    if end < start:
        raise ValueError(f"range ends before it starts: {text!r}")
    return start, end
