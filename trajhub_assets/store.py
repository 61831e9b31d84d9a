"""The store: hive-partitioned Parquet tables under one root, read through DuckDB.

Layout: <root>/tables/<table>/model=<key>/instance=<key>/data.parquet
Each partition is exactly one file, replaced with os.replace, so a reader sees the
old partition or the new one, never half of one; writers of different partitions
share nothing, so parallel runs never collide. DuckDB connections are in-memory
and read-only over the files: no process holds a DuckDB write lock while assets run.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from trajhub_assets.errors import StoreError

DATA_FILE = "data.parquet"
# A partition value becomes a directory name: no path separators, no '=' (hive), and
# none of Dagster's multi-partition separators.
_PARTITION_VALUE = re.compile(r"^[A-Za-z0-9._:@+-]+$")


@dataclass(frozen=True)
class Table:
    """A table's declaration: name, explicit Arrow schema and partition columns.

    Partition columns live in the directory names, not in the files; DuckDB adds
    them back as VARCHAR columns when it reads the table.
    """

    name: str
    schema: pa.Schema
    partitioned_by: tuple[str, ...] = ()
    description: str = ""


def home() -> Path:
    """The store root: $TRAJHUB_HOME, or ./.trajhub."""
    return Path(os.environ.get("TRAJHUB_HOME", ".trajhub")).resolve()


class Store:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).resolve() if root is not None else home()

    # -- paths ---------------------------------------------------------------------
    def table_dir(self, table: Table | str) -> Path:
        return self.root / "tables" / (table if isinstance(table, str) else table.name)

    def partition_file(self, table: Table, partition: Mapping[str, str] | None = None) -> Path:
        partition = dict(partition or {})
        if tuple(partition) != table.partitioned_by:
            raise StoreError(
                f"table {table.name!r} is partitioned by {list(table.partitioned_by)}, "
                f"got partition {partition}")
        path = self.table_dir(table)
        for column, value in partition.items():
            if not _PARTITION_VALUE.match(value):
                raise StoreError(f"table {table.name!r}: partition value {column}={value!r} "
                                 "may only hold letters, digits and . _ : @ + -")
            path = path / f"{column}={value}"
        return path / DATA_FILE

    # -- write ---------------------------------------------------------------------
    def write(self, table: Table, data: pa.Table,
              partition: Mapping[str, str] | None = None) -> Path:
        """Replace one partition (or the whole unpartitioned table) atomically."""
        target = self.partition_file(table, partition)
        data = conform(table, data)
        target.parent.mkdir(parents=True, exist_ok=True)
        # The temporary name is hidden from the '*.parquet' glob readers use.
        tmp = target.parent / f".{uuid.uuid4().hex}.tmp"
        try:
            pq.write_table(data, tmp, compression="zstd")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target

    # -- read ----------------------------------------------------------------------
    def exists(self, table: Table, partition: Mapping[str, str] | None = None) -> bool:
        return self.partition_file(table, partition).exists()

    def read(self, table: Table, partition: Mapping[str, str] | None = None) -> pa.Table:
        """One partition (or an unpartitioned table) with the table's declared schema."""
        path = self.partition_file(table, partition)
        if not path.exists():
            raise StoreError(f"table {table.name!r} has no partition {dict(partition or {})} "
                             f"(looked for {path}); materialize it first")
        return pq.read_table(path, schema=table.schema)

    def table_names(self) -> list[str]:
        tables = self.root / "tables"
        if not tables.is_dir():
            return []
        return sorted(d.name for d in tables.iterdir()
                      if d.is_dir() and next(d.rglob(f"*{Path(DATA_FILE).suffix}"), None))

    def parquet_glob(self, name: str) -> str:
        return str(self.table_dir(name) / "**" / "*.parquet")

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with one view per stored table."""
        con = duckdb.connect()
        for statement in self._view_statements():
            con.execute(statement)
        return con

    def sql(self, query: str, params: list | None = None) -> pa.Table:
        with self.connect() as con:
            return con.sql(query, params=params).to_arrow_table()

    def write_catalog(self, path: str | os.PathLike | None = None) -> Path:
        """A DuckDB file of views over the tables, for notebooks.

        The views hold only file globs, so the catalog stays current as partitions
        are replaced; rerun after a new table first appears.
        """
        path = Path(path) if path is not None else self.root / "catalog.duckdb"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{uuid.uuid4().hex}.duckdb")
        try:
            with duckdb.connect(str(tmp)) as con:
                for statement in self._view_statements():
                    con.execute(statement)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def _view_statements(self) -> list[str]:
        return [
            f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet("
            f"'{self.parquet_glob(name)}', hive_partitioning = true, "
            # Keys such as '001' must stay strings, and old partitions may lack new columns.
            f"hive_types_autocast = false, union_by_name = true)"
            for name in self.table_names()
        ]


def conform(table: Table, data: pa.Table) -> pa.Table:
    """Check `data` has exactly the table's columns and cast it to the declared schema."""
    expected, got = table.schema.names, data.column_names
    missing = [c for c in expected if c not in got]
    extra = [c for c in got if c not in expected]
    if missing or extra:
        raise StoreError(f"table {table.name!r}: missing columns {missing}, unexpected columns {extra}")
    try:
        return data.select(expected).cast(table.schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
        raise StoreError(f"table {table.name!r}: data does not fit the declared schema: {error}") from error
