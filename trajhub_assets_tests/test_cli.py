"""The trajhub command as a user runs it: run on a small project, sql, label export/import."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trajhub_assets_tests.test_pipeline import write_project

TRAJHUB = [sys.executable, "-m", "trajhub_assets.cli"]


def trajhub(*args, env, check=True):
    done = subprocess.run(TRAJHUB + list(args), env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def project_run(tmp_path_factory):
    """`trajhub run` on one demo task with the local sandbox backend (no Docker needed)."""
    tmp_path = tmp_path_factory.mktemp("cli")
    config = write_project(tmp_path, backend="local", instances=("demo-lru-eviction",))
    env = {**os.environ, "TRAJHUB_HOME": str(tmp_path / "home"), "TRAJHUB_CONFIG": config}
    env.pop("DAGSTER_HOME", None)
    done = trajhub("run", env=env)
    return tmp_path, env, done.stdout


def test_run_prints_where_things_are_and_a_leaderboard(project_run):
    tmp_path, _, stdout = project_run
    assert f"store: {tmp_path / 'home'}" in stdout
    assert "baseline/careful" in stdout and "baseline/hasty" in stdout
    assert (tmp_path / "home/dagster").is_dir()  # Dagster's SQLite instance, under the store
    assert (tmp_path / "home/catalog.duckdb").is_file()


def test_sql_prints_a_table(project_run):
    _, env, _ = project_run
    out = trajhub("sql", "SELECT model, count(*) AS runs FROM runs GROUP BY model ORDER BY model", env=env).stdout
    assert "baseline__careful" in out and "runs" in out


def test_sql_errors_are_plain(project_run):
    _, env, _ = project_run
    done = trajhub("sql", "SELECT * FROM no_such_table", env=env, check=False)
    assert done.returncode != 0 and "no_such_table" in done.stderr


def test_label_sheet_round_trip(project_run):
    tmp_path, env, _ = project_run
    sheet = tmp_path / "sheet.csv"
    assert "wrote 1 pairs" in trajhub("label", "export", "--out", str(sheet), env=env).stdout
    rows = list(csv.DictReader(sheet.open()))
    labelled = tmp_path / "labelled.csv"
    with labelled.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        for annotator, choice in (("ann1", "A"), ("ann2", "B")):
            writer.writerows({**row, "annotator": annotator, "choice": choice} for row in rows)
    assert "imported 2 labels" in trajhub("label", "import", str(labelled), env=env).stdout
    out = trajhub("sql", "SELECT annotator, preferred FROM human_labels ORDER BY annotator", env=env).stdout
    assert "ann1" in out and "ann2" in out
    # A and B are the same pair seen blind: the two annotators disagree, one way or the other
    assert "chosen" in out and "rejected" in out


def test_check_tasks_names_the_bad_line(tmp_path):
    bad = tmp_path / "tasks.jsonl"
    bad.write_text('{"instance_id": "x"}\n')
    done = trajhub("check-tasks", str(bad), env=dict(os.environ), check=False)
    assert done.returncode != 0
    assert f"{bad}:1, record 'x', field 'user_query'" in done.stderr


def test_catalog_only_run_registers_partitions(tmp_path):
    env = {**os.environ, "TRAJHUB_HOME": str(tmp_path / "home")}
    env.pop("TRAJHUB_CONFIG", None)
    env.pop("DAGSTER_HOME", None)
    out = trajhub("run", "--catalog-only", env=env).stdout
    assert "Claude.md" in out and Path(tmp_path / "home/tables/tasks/data.parquet").exists()
