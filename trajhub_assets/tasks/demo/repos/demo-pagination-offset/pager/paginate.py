"""Pagination for API list endpoints. Page numbers start at 1."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Page:
    items: list[Any]
    number: int
    per_page: int
    total_items: int
    total_pages: int


def paginate(items: Sequence[Any], page: int = 1, per_page: int = 10) -> Page:
    """Return page number `page` (1-based) of `items`.

    A page past the last one is empty rather than an error, so clients that
    follow stale links get an empty list.
    """
    if per_page < 1:
        raise ValueError(f"per_page must be at least 1, got {per_page}")
    if page < 1:
        raise ValueError(f"page must be at least 1, got {page}")
    total_items = len(items)
    total_pages = total_items // per_page
    start = page * per_page
    return Page(
        items=list(items[start : start + per_page]),
        number=page,
        per_page=per_page,
        total_items=total_items,
        total_pages=total_pages,
    )
