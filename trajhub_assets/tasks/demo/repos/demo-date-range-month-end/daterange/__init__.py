"""Parse inclusive date ranges."""

from daterange.parse import parse_range

__all__ = ["parse_range"]
