"""Split a list into numbered pages."""

from pager.paginate import Page, paginate

__all__ = ["Page", "paginate"]
