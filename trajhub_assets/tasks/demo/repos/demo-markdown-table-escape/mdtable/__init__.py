"""Render GitHub-flavoured Markdown tables."""

from mdtable.render import render_table

__all__ = ["render_table"]
