"""Render rows as a GitHub-flavoured Markdown table with padded columns."""

from collections.abc import Sequence

_SEPARATORS = {
    "left": lambda width: ":" + "-" * (width - 1),
    "right": lambda width: "-" * (width - 1) + ":",
    "center": lambda width: ":" + "-" * (width - 2) + ":",
    None: lambda width: "-" * width,
}


def _cell(value: object) -> str:
    return str(value)


def render_table(
    headers: Sequence[object],
    rows: Sequence[Sequence[object]],
    align: Sequence[str | None] | None = None,
) -> str:
    """Return the table as Markdown text ending in a newline.

    `align` holds "left", "right", "center" or None per column.
    """
    align = list(align) if align is not None else [None] * len(headers)
    if len(align) != len(headers):
        raise ValueError(f"align has {len(align)} entries for {len(headers)} columns")
    table = [[_cell(value) for value in headers]]
    table += [[_cell(value) for value in row] for row in rows]
    # GFM needs at least three dashes in a separator cell.
    widths = [max(3, *(len(line[column]) for line in table)) for column in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = (cell.ljust(width) for cell, width in zip(cells, widths))
        return "| " + " | ".join(padded) + " |"

    separator = "| " + " | ".join(_SEPARATORS[a](w) for a, w in zip(align, widths)) + " |"
    return "\n".join([line(table[0]), separator, *(line(cells) for cells in table[1:])]) + "\n"
