"""Write rows of values as CSV text."""

from csvout.writer import format_field, format_row, to_csv

__all__ = ["format_field", "format_row", "to_csv"]
