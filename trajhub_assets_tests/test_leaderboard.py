"""leaderboard: per-model figures, PNG plots, HTML report and the run query over the store."""

import pyarrow as pa
import pytest

from trajhub_assets.release.leaderboard import COLUMNS_SHOWN, leaderboard, run_summary_sql
from trajhub_assets.release.preview import definitions_markdown, leaderboard_rows, plots_markdown
from trajhub_assets.release.schema import LEADERBOARD
from trajhub_assets.store import Table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(model, instance, category, attempt, outcome, reward, isr=1.0, csr=1.0, steps=10, tokens=1000, cost=0.01):
    return {
        "model": model,
        "instance_id": instance,
        "category": category,
        "run_id": f"{model}-{instance}-{attempt}",
        "attempt": attempt,
        "outcome": outcome,
        "isr": isr,
        "csr": csr,
        "reward": reward,
        "n_steps": steps,
        "tokens": tokens,
        "cost_usd": cost,
    }


RUNS = [
    run("m-a", "i1", "SP", 0, 1.0, 0.9, isr=1.0, csr=1.0, steps=10, tokens=1000, cost=0.02),
    run("m-a", "i1", "SP", 1, 0.0, 0.5, isr=0.0, csr=0.5, steps=20, tokens=3000, cost=0.04),
    run("m-a", "i2", "Memory", 0, None, 0.7, isr=1.0, csr=0.75, steps=12, tokens=None, cost=None),
    run("m-b", "i1", "SP", 0, 0.0, 0.2, isr=0.0, csr=0.25, steps=30, tokens=5000, cost=0.10),
]


def test_per_model_figures():
    board = leaderboard(RUNS)
    assert board.table.schema == LEADERBOARD.schema
    a, b = board.table.to_pylist()  # best mean reward first
    assert a["model"] == "m-a" and b["model"] == "m-b"
    assert (a["runs"], a["instances"], a["test_runs"]) == (3, 2, 2)
    assert a["test_pass_rate"] == pytest.approx(0.5)  # the run without tests does not count
    assert a["isr"] == pytest.approx(2 / 3) and a["csr"] == pytest.approx(0.75)
    assert a["mean_reward"] == pytest.approx(0.7) and a["mean_steps"] == pytest.approx(14)
    assert a["mean_tokens"] == pytest.approx(2000) and a["total_tokens"] == 4000
    assert a["total_cost_usd"] == pytest.approx(0.06)
    assert b["test_pass_rate"] == 0.0


def test_plots_report_and_metadata(tmp_path):
    board = leaderboard(RUNS)
    assert set(board.figures) == {"reward_distribution.png", "pass_rate_by_category.png"}
    assert all(png.startswith(PNG_MAGIC) for png in board.figures.values())
    assert leaderboard(RUNS).figures == board.figures  # no timestamps or version stamps
    # the UI's entries: a table, what ISR and CSR mean, one entry per plot
    rows = leaderboard_rows(board)
    assert rows[0]["ISR"] == pytest.approx(0.6667) and rows[0]["model"] == "m-a"
    shown = [rows[0][title] for _, title in COLUMNS_SHOWN[:6]]
    assert shown == ["m-a", 3, 0.5, pytest.approx(0.6667), 0.75, 0.7]
    assert "**ISR**: instance success rate" in definitions_markdown()
    plots = plots_markdown(board)
    assert set(plots) == {"reward_distribution", "pass_rate_by_category"}
    assert all(p.count("data:image/png;base64,") == 1 for p in plots.values())
    index = board.write(tmp_path / "report")
    page = index.read_text()
    assert "<td>m-b</td>" in page and 'src="reward_distribution.png"' in page
    assert (tmp_path / "report" / "pass_rate_by_category.png").read_bytes() == board.figures[
        "pass_rate_by_category.png"
    ]


def test_no_runs_or_no_tests_still_render():
    assert leaderboard([]).table.num_rows == 0
    untested = [run("m-a", "i1", "SP", 0, None, None)]
    board = leaderboard(untested)
    assert board.table.to_pylist()[0]["test_pass_rate"] is None
    assert all(png.startswith(PNG_MAGIC) for png in board.figures.values())


def test_run_summary_sql_over_the_store(store):
    # Only the columns the query reads, so the test follows the query's contract rather than
    # every column of the reward, judge and recording tables.
    def table(name, **columns):
        return Table(name, pa.schema(list(columns.items())), partitioned_by=("model", "instance"))

    rewards = table(
        "trajectory_rewards", run_id=pa.string(), attempt=pa.int64(), outcome=pa.float64(), reward=pa.float64()
    )
    judge = table("judge_summary", run_id=pa.string(), isr=pa.float64(), csr=pa.float64(), n_steps=pa.int64())
    calls = table(
        "raw_calls", run_id=pa.string(), input_tokens=pa.int64(), output_tokens=pa.int64(), cost_usd=pa.float64()
    )
    tasks = Table("tasks", pa.schema([("instance_id", pa.string()), ("category", pa.string())]))
    part = {"model": "m-a", "instance": "i1"}
    store.write(rewards, pa.Table.from_pylist([{"run_id": "r1", "attempt": 0, "outcome": 1.0, "reward": 0.8}]), part)
    store.write(judge, pa.Table.from_pylist([{"run_id": "r1", "isr": 1.0, "csr": 0.9, "n_steps": 7}]), part)
    store.write(
        calls,
        pa.Table.from_pylist([{"run_id": "r1", "input_tokens": 100, "output_tokens": 10, "cost_usd": 0.01}] * 2),
        part,
    )
    store.write(tasks, pa.Table.from_pylist([{"instance_id": "i1", "category": "SP"}]))
    [row] = store.sql(run_summary_sql()).to_pylist()
    assert row == {
        "model": "m-a",
        "instance_id": "i1",
        "category": "SP",
        "run_id": "r1",
        "attempt": 0,
        "outcome": 1.0,
        "isr": 1.0,
        "csr": 0.9,
        "reward": 0.8,
        "n_steps": 7,
        "tokens": 220,
        "cost_usd": pytest.approx(0.02),
    }
    assert leaderboard([row]).table.to_pylist()[0]["mean_tokens"] == 220
