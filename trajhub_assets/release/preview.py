"""What the Dagster UI shows of the leaderboard and the release.

Apart from leaderboard.py and release.py, whose code is their assets' code version: how a
result is shown decides none of it.
"""

from __future__ import annotations

import base64

from trajhub_assets.release.leaderboard import COLUMNS_SHOWN, Leaderboard

# What the shown columns mean (means are over a model's runs).
COLUMN_DEFINITIONS = {
    "test pass rate": "share of runs (of tasks with tests) whose tests all passed after the run",
    "ISR": "instance success rate: share of runs whose every checklist check the judge passed",
    "CSR": "checklist success rate: mean share of checklist checks passed (an omitted check fails)",
    "mean reward": "mean trajectory reward (the configured weights over its components)",
    "steps": "mean main-agent steps",
    "tokens": "mean tokens per run",
    "cost (USD)": "mean cost per run",
}


def leaderboard_rows(board: Leaderboard) -> list[dict]:
    """The shown columns under their titles, numbers rounded."""
    return [
        {title: round(row[name], 4) if isinstance(row[name], float) else row[name] for name, title in COLUMNS_SHOWN}
        for row in board.table.to_pylist()
    ]


def definitions_markdown() -> str:
    return "\n".join(f"- **{title}**: {meaning}" for title, meaning in COLUMN_DEFINITIONS.items())


def plots_markdown(board: Leaderboard) -> dict[str, str]:
    """Each plot as its own Markdown image (a data URI), by file name without .png."""
    return {
        name.removesuffix(".png"): f"![{name}](data:image/png;base64,{base64.b64encode(png).decode()})"
        for name, png in board.figures.items()
    }


def card_body(card: str) -> str:
    """The card without its YAML header, as a Markdown viewer should show it."""
    if card.startswith("---\n") and (end := card.find("\n---\n", 4)) != -1:
        return card[end + len("\n---\n") :].lstrip("\n")
    return card
