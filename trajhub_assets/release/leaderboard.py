"""leaderboard: per-model figures, two plots and a static HTML report.

Input: one row per run (see RUN_COLUMNS; `run_summary_sql` builds them from the store):
model, instance_id, category, run_id, attempt, outcome (1.0 tests all pass, 0.0 not, null when
no test ran), isr and csr (the judge's checklist rates), reward, n_steps, tokens, cost_usd.

Per model: test pass rate (mean outcome over runs with tests), ISR (share of runs that pass every
check), CSR (mean share of checks passed), mean trajectory reward, mean steps, tokens and cost.
Plots use matplotlib's Agg canvas directly (no pyplot, no global backend switch), so they render
in a Dagster worker without a display.
"""

from __future__ import annotations

import html
import io
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean

import pyarrow as pa

from trajhub_assets.errors import RecordError
from trajhub_assets.recording.schema import RAW_CALLS
from trajhub_assets.release.schema import LEADERBOARD
from trajhub_assets.rewards.schema import JUDGE_SUMMARY, TRAJECTORY_REWARDS
from trajhub_assets.tasks.schema import TASKS

log = logging.getLogger(__name__)

RUN_COLUMNS = (
    "model",
    "instance_id",
    "category",
    "run_id",
    "attempt",
    "outcome",
    "isr",
    "csr",
    "reward",
    "n_steps",
    "tokens",
    "cost_usd",
)

COLUMNS_SHOWN = (
    ("model", "model"),
    ("runs", "runs"),
    ("test_pass_rate", "test pass rate"),
    ("isr", "ISR"),
    ("csr", "CSR"),
    ("mean_reward", "mean reward"),
    ("mean_steps", "steps"),
    ("mean_tokens", "tokens"),
    ("mean_cost_usd", "cost (USD)"),
)


def run_summary_sql() -> str:
    """Run rows from the store's views (trajectory_rewards, judge_summary, raw_calls, tasks).

    `model` is the partition key; turn it into the name with partitions.model_name.
    """
    return f"""
        SELECT r.model, r.instance AS instance_id, t.category, r.run_id, r.attempt, r.outcome,
               j.isr, j.csr, r.reward, j.n_steps, c.tokens, c.cost_usd
        FROM {TRAJECTORY_REWARDS.name} r
        LEFT JOIN {JUDGE_SUMMARY.name} j ON j.model = r.model AND j.instance = r.instance AND j.run_id = r.run_id
        LEFT JOIN (SELECT model, instance, run_id,
                          sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0)) AS tokens,
                          sum(cost_usd) AS cost_usd
                   FROM {RAW_CALLS.name} GROUP BY model, instance, run_id) c
               ON c.model = r.model AND c.instance = r.instance AND c.run_id = r.run_id
        LEFT JOIN {TASKS.name} t ON t.instance_id = r.instance
        ORDER BY r.model, r.instance, r.attempt, r.run_id
    """


def _mean(values: Iterable) -> float | None:
    known = [float(v) for v in values if v is not None]
    return fmean(known) if known else None


def _total(values: Iterable, kind=float):
    known = [v for v in values if v is not None]
    return kind(sum(known)) if known else None


def leaderboard_table(runs: Iterable[Mapping]) -> pa.Table:
    by_model: dict[str, list[Mapping]] = defaultdict(list)
    for run in runs:
        by_model[run["model"]].append(run)
    rows = []
    for model, rs in by_model.items():
        tested = [r["outcome"] for r in rs if r.get("outcome") is not None]
        rows.append(
            {
                "model": model,
                "runs": len(rs),
                "instances": len({r["instance_id"] for r in rs}),
                "test_runs": len(tested),
                "test_pass_rate": _mean(tested),
                "isr": _mean(r.get("isr") for r in rs),
                "csr": _mean(r.get("csr") for r in rs),
                "mean_reward": _mean(r.get("reward") for r in rs),
                "mean_steps": _mean(r.get("n_steps") for r in rs),
                "mean_tokens": _mean(r.get("tokens") for r in rs),
                "total_tokens": _total((r.get("tokens") for r in rs), int),
                "mean_cost_usd": _mean(r.get("cost_usd") for r in rs),
                "total_cost_usd": _total(r.get("cost_usd") for r in rs),
            }
        )
    rows.sort(key=lambda r: (r["mean_reward"] is None, -(r["mean_reward"] or 0.0), r["model"]))
    return pa.Table.from_pylist(rows, schema=LEADERBOARD.schema)


# -- plots -----------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    # No software/version stamp: the same data gives the same bytes.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def reward_distribution_png(runs: list[Mapping], models: list[str]) -> bytes:
    figure = _figure(max(4.0, 1.2 * len(models) + 2), 3.6)
    axes = figure.add_subplot()
    data = [[r["reward"] for r in runs if r["model"] == m and r.get("reward") is not None] for m in models]
    if any(data):
        axes.boxplot(data, showmeans=True)
        axes.set_xticks(range(1, len(models) + 1), models, rotation=20, ha="right")
    else:
        axes.text(0.5, 0.5, "no rewards yet", ha="center", va="center", transform=axes.transAxes)
    axes.set_ylabel("trajectory reward")
    axes.set_title("Reward distribution per model")
    return _png(figure)


def pass_rate_by_category_png(runs: list[Mapping], models: list[str]) -> bytes:
    categories = sorted({r.get("category") or "?" for r in runs if r.get("outcome") is not None})
    figure = _figure(max(5.0, 0.9 * len(categories) * max(1, len(models)) / 2 + 3), 3.6)
    axes = figure.add_subplot()
    if not categories:
        axes.text(0.5, 0.5, "no test outcomes yet", ha="center", va="center", transform=axes.transAxes)
    width = 0.8 / max(1, len(models))
    for i, model in enumerate(models):
        rates = [
            _mean(r["outcome"] for r in runs if r["model"] == model and (r.get("category") or "?") == c)
            for c in categories
        ]
        bars = axes.bar([k + i * width for k in range(len(categories))], [v or 0.0 for v in rates], width, label=model)
        # A zero bar is invisible and a missing one looks like zero: write the value on each.
        axes.bar_label(bars, ["n/a" if v is None else f"{v:.2f}" for v in rates], fontsize="small")
    if categories:
        axes.set_xticks([k + 0.4 - width / 2 for k in range(len(categories))], categories, rotation=20, ha="right")
        axes.legend(fontsize="small")
    axes.set_ylim(0, 1.1)
    axes.set_ylabel("test pass rate")
    axes.set_title("Test pass rate per category")
    return _png(figure)


# -- report ----------------------------------------------------------------------------------
def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


@dataclass
class Leaderboard:
    table: pa.Table
    figures: dict[str, bytes] = field(default_factory=dict)  # file name -> PNG

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(title)}</th>" for _, title in COLUMNS_SHOWN)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_cell(row[name]))}</td>" for name, _ in COLUMNS_SHOWN) + "</tr>\n"
            for row in self.table.to_pylist()
        )
        images = "".join(
            f'<figure><img alt="{html.escape(name)}" src="{html.escape(name)}"></figure>\n' for name in self.figures
        )
        return (
            '<!doctype html>\n<html><head><meta charset="utf-8"><title>trajhub leaderboard</title>\n'
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
            "td:first-child,th:first-child{text-align:left}</style></head>\n<body>\n"
            "<h1>Leaderboard</h1>\n<p>ISR: share of runs passing every checklist item; CSR: mean share of "
            "checklist items passed; test pass rate over runs whose task has tests.</p>\n"
            f"<table><tr>{head}</tr>\n{body}</table>\n{images}</body></html>\n"
        )

    def write(self, directory: str | Path) -> Path:
        """index.html with the PNGs beside it; returns the HTML path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, png in self.figures.items():
            (directory / name).write_bytes(png)
        index = directory / "index.html"
        index.write_text(self.html(), encoding="utf-8")
        return index


def leaderboard(runs: pa.Table | Iterable[Mapping]) -> Leaderboard:
    rows = runs.to_pylist() if isinstance(runs, pa.Table) else [dict(r) for r in runs]
    missing = [c for c in ("model", "instance_id") if rows and c not in rows[0]]
    if missing:
        raise RecordError(
            f"run rows lack columns {missing}; expected {list(RUN_COLUMNS)}",
            source="leaderboard runs",
            field=missing[0],
        )
    table = leaderboard_table(rows)
    models = table.column("model").to_pylist()
    figures = {
        "reward_distribution.png": reward_distribution_png(rows, models),
        "pass_rate_by_category.png": pass_rate_by_category_png(rows, models),
    }
    log.info("leaderboard of %d models from %d runs", len(models), len(rows))
    return Leaderboard(table, figures)
