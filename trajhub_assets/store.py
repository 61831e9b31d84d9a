"""The store: hive-partitioned Parquet tables under one root, read through DuckDB.

Layout: <root>/tables/<table>/model=<key>/instance=<key>/data.parquet
Each partition is exactly one file, replaced with os.replace, so a reader sees the
old partition or the new one, never half of one; writers of different partitions
share nothing, so parallel runs never collide. DuckDB connections are in-memory
and read-only over the files: no process holds a DuckDB write lock while assets run.

In a cluster the tables can live on S3-compatible object storage instead
($TRAJHUB_TABLES_URI, e.g. s3://bucket/trajhub/tables, same layout below it); `root`
stays a local working directory for caches, reports, releases and recordings. There a
partition is one object: a PUT replaces it whole, and readers fetch each object with one
GET, so the same guarantee holds. Credentials come from the environment only.
"""

from __future__ import annotations

import io
import os
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.implementations.arrow import ArrowFSWrapper

from trajhub_assets.errors import StoreError

DATA_FILE = "data.parquet"
# A partition file is small and read whole, often: zstd's per-column cost made up most of
# reading and writing one (LZ4 reads a merged partition in ~60% of the time, for ~25% more bytes).
# Readers (pyarrow, DuckDB) take either codec, so files written before stay readable.
COMPRESSION = "lz4"
_LOCAL = pafs.LocalFileSystem()
TABLES_URI_ENV = "TRAJHUB_TABLES_URI"
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
    """The tables, under `<root>/tables`, or under `tables_uri` (default $TRAJHUB_TABLES_URI)
    when that names object storage (s3://bucket/prefix); `root` is always a local directory."""

    def __init__(self, root: str | os.PathLike | None = None, tables_uri: str | None = None):
        self.root = Path(root).resolve() if root is not None else home()
        tables_uri = tables_uri if tables_uri is not None else os.environ.get(TABLES_URI_ENV)
        self.objects = ObjectStore(tables_uri) if tables_uri else None

    # -- paths ---------------------------------------------------------------------
    def table_dir(self, table: Table | str) -> Path | str:
        name = table if isinstance(table, str) else table.name
        return self.objects.uri(name) if self.objects else self.root / "tables" / name

    def partition_file(self, table: Table, partition: Mapping[str, str] | None = None) -> Path | str:
        partition = dict(partition or {})
        if tuple(partition) != table.partitioned_by:
            raise StoreError(
                f"table {table.name!r} is partitioned by {list(table.partitioned_by)}, got partition {partition}"
            )
        parts = [table.name]
        for column, value in partition.items():
            if not _PARTITION_VALUE.match(value):
                raise StoreError(
                    f"table {table.name!r}: partition value {column}={value!r} "
                    "may only hold letters, digits and . _ : @ + -"
                )
            parts.append(f"{column}={value}")
        parts.append(DATA_FILE)
        return self.objects.uri(*parts) if self.objects else self.root.joinpath("tables", *parts)

    # -- write ---------------------------------------------------------------------
    def write(self, table: Table, data: pa.Table, partition: Mapping[str, str] | None = None) -> Path | str:
        """Replace one partition (or the whole unpartitioned table) atomically."""
        target = self.partition_file(table, partition)
        data = conform(table, data)
        if self.objects:
            self.objects.put_parquet(target, data)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        # The temporary name is hidden from the '*.parquet' glob readers use.
        tmp = target.parent / f".{uuid.uuid4().hex}.tmp"
        try:
            # Through a buffer: the Parquet writer hands over many small pieces (each page and its
            # header), each one a system call when written straight to the file (~0.2 ms a file).
            with _LOCAL.open_output_stream(str(tmp)) as raw, pa.BufferedOutputStream(raw, 1 << 20) as out:
                pq.write_table(data, out, compression=COMPRESSION)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target

    # -- read ----------------------------------------------------------------------
    def exists(self, table: Table, partition: Mapping[str, str] | None = None) -> bool:
        path = self.partition_file(table, partition)
        return self.objects.exists(path) if self.objects else path.exists()

    def read(
        self, table: Table, partition: Mapping[str, str] | None = None, columns: list[str] | None = None
    ) -> pa.Table:
        """One partition (or an unpartitioned table) with the table's declared schema, or only
        its `columns` (a wide table's few columns decode in a fraction of the time)."""
        path = self.partition_file(table, partition)
        try:
            if self.objects:
                source = pa.BufferReader(self.objects.get(path))
            elif path.exists():
                source = path
            else:
                raise FileNotFoundError(path)
        except FileNotFoundError:
            raise StoreError(
                f"table {table.name!r} has no partition {dict(partition or {})} "
                f"(looked for {path}); materialize it first"
            ) from None
        # ParquetFile reads a single file in half the time of read_table's dataset machinery;
        # a file written under an older schema still goes through read_table, which fills and casts.
        data = pq.ParquetFile(source).read(columns=columns)
        schema = table.schema if columns is None else pa.schema([table.schema.field(c) for c in columns])
        if data.schema.equals(schema):
            return data
        if isinstance(source, pa.BufferReader):
            source.seek(0)
        return pq.read_table(source, schema=table.schema, columns=columns)

    def table_names(self) -> list[str]:
        if self.objects:
            return self.objects.table_names()
        tables = self.root / "tables"
        if not tables.is_dir():
            return []
        return sorted(
            d.name for d in tables.iterdir() if d.is_dir() and next(d.rglob(f"*{Path(DATA_FILE).suffix}"), None)
        )

    def parquet_glob(self, name: str) -> str:
        if self.objects:
            return self.objects.uri(name, "**", "*.parquet")
        return str(self.table_dir(name) / "**" / "*.parquet")

    # -- every model's partition of one instance -----------------------------------
    def instance_glob(self, table: Table, instance: str) -> str:
        """The files of every model's partition of one instance, as a glob DuckDB reads: only
        those files, where a view of the whole table lists and opens every partition."""
        return f"{self.table_dir(table)}/model=*/instance={instance}/*.parquet"

    def instance_files(self, table: Table, instance: str) -> dict[str, str]:
        """Each model's partition file of one instance (a path for `open_file`) with its version,
        "<size>:<mtime_ns>": one listing of the table's model directories and one look-up per
        model, never a listing of every instance."""
        fs, base = self._filesystem(table)
        models = [
            d
            for d in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
            if d.type == pafs.FileType.Directory
        ]
        files = fs.get_file_info([f"{d.path}/instance={instance}/{DATA_FILE}" for d in models])
        return {f.path: f"{f.size}:{f.mtime_ns}" for f in files if f.type == pafs.FileType.File}

    def partitions(self, table: Table) -> list[dict[str, str]]:
        """Every stored partition of the table ({column: value}), from one listing of its files."""
        fs, base = self._filesystem(table)
        files = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return [
            dict(part.split("=", 1) for part in f.path[len(base) + 1 :].split("/")[:-1])
            for f in files
            if f.type == pafs.FileType.File and f.base_name == DATA_FILE
        ]

    def _filesystem(self, table: Table) -> tuple[pafs.FileSystem, str]:
        """The filesystem the table's files are on, and the table's directory on it."""
        if self.objects:
            return self.objects.fs, f"{self.objects.base}/{table.name}"
        return _LOCAL, str(self.table_dir(table))

    def size(self, path: Path | str) -> int:
        """Bytes of a file `write` returned (a local path or an s3:// object)."""
        if self.objects:
            return self.objects.size(str(path))
        return Path(path).stat().st_size

    def open_file(self, path: str) -> pa.NativeFile:
        """A file `instance_files` named, for pyarrow to read."""
        return (self.objects.fs if self.objects else _LOCAL).open_input_file(path)

    def connect(self, tables: list[str] | None = None) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with one view per stored table (or per table in
        `tables`: a view reads every file's schema when it is made)."""
        con = duckdb.connect()
        self.register_filesystem(con)
        for statement in self._view_statements(tables):
            con.execute(statement)
        return con

    def register_filesystem(self, con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
        """Let `con` read this store's object storage (needed for the catalog file's views when
        the tables are on s3://); nothing to do for local tables."""
        if self.objects:
            con.register_filesystem(self.objects.duckdb_filesystem())
        return con

    def sql(self, query: str, params: list | None = None) -> pa.Table:
        """Run `query` over the views of the tables it names."""
        named = [name for name in self.table_names() if re.search(rf"\b{re.escape(name)}\b", query, re.IGNORECASE)]
        with self.connect(named) as con:
            return con.sql(query, params=params).to_arrow_table()

    def write_catalog(self, path: str | os.PathLike | None = None) -> Path:
        """A DuckDB file of views over the tables, for notebooks.

        The views hold only file globs, so the catalog stays current as partitions
        are replaced; rerun after a new table first appears. With tables on s3://, open
        it and call `register_filesystem(con)` before querying (DuckDB's own S3 support,
        the httpfs extension, is a download this project does not rely on).
        """
        path = Path(path) if path is not None else self.root / "catalog.duckdb"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{uuid.uuid4().hex}.duckdb")
        try:
            with duckdb.connect(str(tmp)) as con:
                self.register_filesystem(con)
                for statement in self._view_statements():
                    con.execute(statement)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def _view_statements(self, tables: list[str] | None = None) -> list[str]:
        return [
            f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet("
            f"'{self.parquet_glob(name)}', hive_partitioning = true, "
            # Keys such as '001' must stay strings, and old partitions may lack new columns.
            f"hive_types_autocast = false, union_by_name = true)"
            for name in (self.table_names() if tables is None else tables)
        ]


class ObjectStore:
    """Tables on S3-compatible object storage, through pyarrow's S3 client.

    `uri` is s3://bucket/prefix, optionally with pyarrow's options as a query string
    (?endpoint_override=minio:9000&scheme=http); an S3-compatible server's address can
    also come from AWS_ENDPOINT_URL. Credentials and region come from the environment
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, an
    instance or pod role), never from the URI, so they cannot reach a view, a log or a
    release.
    """

    def __init__(self, uri: str):
        parts = urlsplit(uri)
        if parts.scheme != "s3":
            raise StoreError(
                f"{TABLES_URI_ENV}={uri!r}: only s3:// object storage is supported "
                "(unset it to keep the tables under the store root)"
            )
        if parts.username or parts.password:
            raise StoreError(
                f"{TABLES_URI_ENV}: the URI holds credentials; put them in the "
                "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) instead"
            )
        try:
            self.fs, path = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, OSError) as error:
            raise StoreError(
                f"{TABLES_URI_ENV}: cannot use {parts.scheme}://{parts.netloc}{parts.path}: {error}"
            ) from error
        self.base = path.strip("/")  # bucket/prefix, what pyarrow's calls take

    def uri(self, *parts: str) -> str:
        return "s3://" + "/".join([self.base, *parts])

    def _key(self, uri: str) -> str:
        return uri.removeprefix("s3://")

    def put_parquet(self, uri: str, data: pa.Table) -> None:
        # One PUT replaces the object whole (a multipart upload too, when it completes), so
        # unlike a local file there is no temporary name to rename.
        buffer = pa.BufferOutputStream()
        pq.write_table(data, buffer, compression=COMPRESSION)
        with self.fs.open_output_stream(self._key(uri), compression=None) as out:
            out.write(buffer.getvalue())

    def get(self, uri: str) -> pa.Buffer:
        """The whole object, from one GET: one version of it, never a mix of two."""
        try:
            with self.fs.open_input_stream(self._key(uri), compression=None) as stream:
                return stream.read_buffer()
        except OSError as error:
            if self.fs.get_file_info(self._key(uri)).type == pafs.FileType.NotFound:
                raise FileNotFoundError(uri) from error
            raise StoreError(f"cannot read {uri}: {error}") from error

    def exists(self, uri: str) -> bool:
        return self.fs.get_file_info(self._key(uri)).type == pafs.FileType.File

    def size(self, uri: str) -> int:
        return self.fs.get_file_info(self._key(uri)).size

    def table_names(self) -> list[str]:
        files = self.fs.get_file_info(pafs.FileSelector(self.base, recursive=True, allow_not_found=True))
        return sorted(
            {
                f.path[len(self.base) + 1 :].split("/", 1)[0]
                for f in files
                if f.type == pafs.FileType.File and f.path.endswith(".parquet")
            }
        )

    def duckdb_filesystem(self) -> ArrowFSWrapper:
        return _WholeObjectReads(self.fs, skip_instance_cache=True)


class _WholeObjectReads(ArrowFSWrapper):
    """The object store as DuckDB sees it: an fsspec filesystem for s3:// paths.

    DuckDB asks a file's size and then reads ranges of it, and opens each file several
    times in one query (binding, then scanning). Ranged GETs of an object replaced in
    between would mix two versions. Here a file is fetched whole at open (one GET, one
    version) and its size and time are that body's, so every read of it agrees. Bodies
    are kept for the connection, up to `cache_bytes`, and served again while a new
    listing shows the same object (size and time); a glob is one recursive listing.
    """

    def __init__(self, fs: pafs.FileSystem, cache_bytes: int = 256 << 20, **kwargs):
        super().__init__(fs, **kwargs)
        self.cache_bytes = cache_bytes
        # path -> (size, whole seconds of its time): its version, as listed, cached, served
        self._listed: dict[str, tuple[int, int | None]] = {}
        self._bodies: OrderedDict[str, tuple[int, int | None, bytes]] = OrderedDict()
        self._served: dict[str, tuple[int, int | None]] = {}
        self._cached_bytes = 0
        self._lock = threading.Lock()  # DuckDB calls in from several threads

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        if maxdepth is not None:
            return super().find(path, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs)
        path = self._strip_protocol(path)
        infos = self.fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
        found = {}
        for info in infos:
            if info.type == pafs.FileType.File:
                self._listed[info.path] = (info.size, _seconds(info.mtime))
            if info.type == pafs.FileType.File or (withdirs and info.type == pafs.FileType.Directory):
                found[info.path] = self._make_entry(info)
        found = dict(sorted(found.items()))
        return found if detail else list(found)

    def _open(self, path, mode="rb", **kwargs):
        if mode != "rb":
            raise StoreError(f"{path}: DuckDB only reads the store's object storage")
        with self._lock:
            cached = self._bodies.get(path)
            fresh = cached is not None and cached[:2] == self._listed.get(path)
        if not fresh:
            with self.fs.open_input_stream(path, compression=None) as stream:
                body = stream.read()
                mtime = _seconds(_last_modified(stream.metadata()))
            cached = (len(body), mtime, body)
        with self._lock:
            self._remember(path, cached)
            self._served[path] = cached[:2]
        return io.BytesIO(cached[2])

    def _remember(self, path: str, cached: tuple) -> None:
        old = self._bodies.pop(path, None)
        self._cached_bytes += cached[0] - (old[0] if old else 0)
        self._bodies[path] = cached
        while self._cached_bytes > self.cache_bytes and len(self._bodies) > 1:
            _, (size, _, _) = self._bodies.popitem(last=False)
            self._cached_bytes -= size

    def size(self, path):
        path = self._strip_protocol(path)
        return self._served[path][0] if path in self._served else super().size(path)

    def modified(self, path):
        path = self._strip_protocol(path)
        served = self._served.get(path)
        if served and served[1] is not None:
            return datetime.fromtimestamp(served[1], UTC)
        return super().modified(path)


def _seconds(time: datetime | None) -> int | None:
    # A listing may give milliseconds where a GET's header gives seconds (MinIO does).
    return int(time.timestamp()) if time is not None else None


def _last_modified(metadata: Mapping[str, bytes]) -> datetime | None:
    """An object's time from a GET's headers, as pyarrow hands them over."""
    value = metadata.get("Last-Modified")
    try:
        return datetime.fromisoformat(value.decode().replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


def conform(table: Table, data: pa.Table) -> pa.Table:
    """Check `data` has exactly the table's columns and cast it to the declared schema."""
    if data.schema.equals(table.schema):  # the usual case; a cast of nested columns copies them
        return data
    expected, got = table.schema.names, data.column_names
    missing = [c for c in expected if c not in got]
    extra = [c for c in got if c not in expected]
    if missing or extra:
        raise StoreError(f"table {table.name!r}: missing columns {missing}, unexpected columns {extra}")
    try:
        return data.select(expected).cast(table.schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
        raise StoreError(f"table {table.name!r}: data does not fit the declared schema: {error}") from error
