import multiprocessing
import os

import duckdb
import pyarrow as pa
import pyarrow.parquet
import pytest

from trajhub_assets.errors import StoreError
from trajhub_assets.store import Store, Table

RUNS = Table(
    "runs_demo", pa.schema([("attempt", pa.int64()), ("text", pa.string())]), partitioned_by=("model", "instance")
)
FLAT = Table("flat_demo", pa.schema([("x", pa.int64())]))


def rows(n: int, text: str = "a") -> pa.Table:
    return pa.table({"attempt": list(range(n)), "text": [text] * n})


def test_write_and_read_a_partition(store):
    path = store.write(RUNS, rows(3), {"model": "baseline__careful", "instance": "001"})
    assert path == store.root / "tables/runs_demo/model=baseline__careful/instance=001/data.parquet"
    assert store.read(RUNS, {"model": "baseline__careful", "instance": "001"}).equals(rows(3))


def test_replacing_a_partition_keeps_the_others(store):
    store.write(RUNS, rows(3), {"model": "m", "instance": "a"})
    store.write(RUNS, rows(2), {"model": "m", "instance": "b"})
    store.write(RUNS, rows(5, "new"), {"model": "m", "instance": "a"})
    counts = dict(store.connect().execute("SELECT instance, count(*) FROM runs_demo GROUP BY ALL").fetchall())
    assert counts == {"a": 5, "b": 2}
    assert list(store.table_dir(RUNS).rglob("*.tmp")) == []


def test_hive_columns_stay_strings(store):
    store.write(RUNS, rows(1), {"model": "m", "instance": "007"})
    assert store.sql("SELECT instance FROM runs_demo").to_pylist() == [{"instance": "007"}]


def test_schema_is_enforced_and_old_partition_survives(store):
    partition = {"model": "m", "instance": "a"}
    store.write(RUNS, rows(2), partition)
    with pytest.raises(StoreError, match=r"missing columns \['text'\], unexpected columns \['txt'\]"):
        store.write(RUNS, pa.table({"attempt": [1], "txt": ["x"]}), partition)
    with pytest.raises(StoreError, match="does not fit the declared schema"):
        store.write(RUNS, pa.table({"attempt": ["not a number"], "text": ["x"]}), partition)
    assert store.read(RUNS, partition).equals(rows(2))


@pytest.mark.parametrize(
    "partition",
    [
        {"model": "a/b", "instance": "x"},
        {"model": "a|b", "instance": "x"},
        {"model": "a", "instance": "x=y"},
        {"instance": "x", "model": "a"},
        {"model": "a"},
    ],
)
def test_bad_partitions_are_refused(store, partition):
    with pytest.raises(StoreError):
        store.write(RUNS, rows(1), partition)


def test_reading_a_missing_partition_says_so(store):
    with pytest.raises(StoreError, match="materialize it first"):
        store.read(FLAT)


def test_catalog_file_serves_views_read_only(store):
    store.write(FLAT, pa.table({"x": [1, 2, 3]}))
    path = store.write_catalog()
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT sum(x) FROM flat_demo").fetchone() == (6,)
    # views hold globs: data written after the catalog is seen through it
    store.write(FLAT, pa.table({"x": [10]}))
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT sum(x) FROM flat_demo").fetchone() == (10,)


def _write_many(root: str, model: str, n: int) -> None:
    store = Store(root)
    for i in range(n):
        for version in range(3):  # replace each partition several times
            store.write(RUNS, rows(4, f"v{version}"), {"model": model, "instance": f"i{i:03d}"})


def test_two_processes_write_different_partitions_while_a_reader_queries(store):
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(str(store.root), model, 40)) for model in ("m1", "m2")]
    for writer in writers:
        writer.start()
    seen_sizes = set()
    while any(w.is_alive() for w in writers):
        if store.table_names():
            for (size,) in (
                store.connect().execute("SELECT count(*) FROM runs_demo GROUP BY model, instance").fetchall()
            ):
                seen_sizes.add(size)
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    # the reader did see partitions mid-write, and every one it saw was whole
    assert seen_sizes == {4}
    counts = (
        store.connect()
        .execute("SELECT model, count(DISTINCT instance), count(*) FROM runs_demo GROUP BY model ORDER BY model")
        .fetchall()
    )
    assert counts == [("m1", 40, 160), ("m2", 40, 160)]
    assert not any(name.endswith(".tmp") for _, _, files in os.walk(store.root) for name in files)


def test_a_partition_written_under_an_older_schema_reads_with_nulls_for_new_columns(store):
    partition = {"model": "m", "instance": "a"}
    older = store.partition_file(RUNS, partition)
    older.parent.mkdir(parents=True)
    pa.parquet.write_table(pa.table({"attempt": [1, 2]}), older)  # before `text` was declared
    assert store.read(RUNS, partition).to_pylist() == [{"attempt": 1, "text": None}, {"attempt": 2, "text": None}]


def test_reading_some_columns_of_a_partition(store):
    partition = {"model": "m", "instance": "a"}
    store.write(RUNS, rows(2, "x"), partition)
    assert store.read(RUNS, partition, ["text"]).equals(pa.table({"text": ["x", "x"]}))
    older = {"model": "m", "instance": "b"}
    store.partition_file(RUNS, older).parent.mkdir(parents=True)
    pa.parquet.write_table(pa.table({"attempt": [1]}), store.partition_file(RUNS, older))  # before `text`
    assert store.read(RUNS, older, ["text", "attempt"]).to_pylist() == [{"text": None, "attempt": 1}]
