"""The store with its tables on S3-compatible object storage ($TRAJHUB_TABLES_URI).

A real S3 server (moto's, over HTTP on loopback) stands in for MinIO or AWS; the store
talks to it through pyarrow's S3 client and DuckDB reads it through the store's
filesystem, exactly as in a cluster.
"""

import multiprocessing
import secrets
import uuid

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from dagster import DagsterInstance, materialize
from moto.server import ThreadedMotoServer

from trajhub_assets.errors import StoreError
from trajhub_assets.resources import ProjectResource, StoreResource
from trajhub_assets.store import Store, Table
from trajhub_assets.tasks.assets import tasks

RUNS = Table(
    "runs_demo", pa.schema([("attempt", pa.int64()), ("text", pa.string())]), partitioned_by=("model", "instance")
)
FLAT = Table("flat_demo", pa.schema([("x", pa.int64())]))
# Credentials only the test knows, to look for in everything the store wrote.
ACCESS_KEY = "AKIA" + secrets.token_hex(8).upper()
SECRET_KEY = secrets.token_urlsafe(30)


def rows(n: int, text: str = "a") -> pa.Table:
    return pa.table({"attempt": list(range(n)), "text": [text] * n})


@pytest.fixture(scope="module")
def s3_endpoint():
    """A real S3 API server on loopback (moto), stopped after the module."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    """The environment a cluster pod has: endpoint, region and credentials, nothing else."""
    for name, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    }.items():
        monkeypatch.setenv(name, value)
    return s3_endpoint


@pytest.fixture
def bucket(s3_env) -> str:
    name = f"trajhub-{uuid.uuid4().hex[:12]}"
    pafs.S3FileSystem(endpoint_override=s3_env, allow_bucket_creation=True).create_dir(name)
    return name


@pytest.fixture
def s3_store(bucket, tmp_path, monkeypatch) -> Store:
    uri = f"s3://{bucket}/trajhub/tables"
    monkeypatch.setenv("TRAJHUB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TRAJHUB_TABLES_URI", uri)
    store = Store(tmp_path / "home")
    assert store.objects is not None and store.table_dir(FLAT) == f"{uri}/flat_demo"
    return store


def objects(store: Store) -> dict[str, bytes]:
    """Every object under the store's tables prefix, by key."""
    fs, base = store.objects.fs, store.objects.base
    return {
        info.path: fs.open_input_stream(info.path).read()
        for info in fs.get_file_info(pafs.FileSelector(base, recursive=True))
        if info.type == pafs.FileType.File
    }


def test_write_read_exists_and_query_on_object_storage(s3_store, bucket):
    partition = {"model": "baseline__careful", "instance": "007"}
    assert not s3_store.exists(RUNS, partition)
    path = s3_store.write(RUNS, rows(3), partition)
    assert path == f"s3://{bucket}/trajhub/tables/runs_demo/model=baseline__careful/instance=007/data.parquet"
    assert s3_store.exists(RUNS, partition)
    assert s3_store.size(path) == len(objects(s3_store)[path.removeprefix("s3://")]) > 0
    assert s3_store.read(RUNS, partition).equals(rows(3))
    s3_store.write(FLAT, pa.table({"x": [1, 2, 3]}))
    assert s3_store.table_names() == ["flat_demo", "runs_demo"]
    # hive columns come back from the object keys, as strings
    assert s3_store.sql("SELECT instance, count(*) AS n FROM runs_demo GROUP BY ALL").to_pylist() == [
        {"instance": "007", "n": 3}
    ]
    assert s3_store.sql("SELECT sum(x) AS s FROM flat_demo").to_pylist() == [{"s": 6}]
    s3_store.write(RUNS, rows(1), {"model": "m2", "instance": "008"})
    assert sorted(s3_store.partitions(RUNS), key=str) == [partition, {"model": "m2", "instance": "008"}]
    # nothing went to the local root's tables
    assert not (s3_store.root / "tables").exists()


def test_replacing_a_partition_keeps_the_others_and_leaves_one_object_each(s3_store):
    s3_store.write(RUNS, rows(3), {"model": "m", "instance": "a"})
    s3_store.write(RUNS, rows(2), {"model": "m", "instance": "b"})
    s3_store.write(RUNS, rows(5, "new"), {"model": "m", "instance": "a"})
    counts = dict(s3_store.connect().execute("SELECT instance, count(*) FROM runs_demo GROUP BY ALL").fetchall())
    assert counts == {"a": 5, "b": 2}
    assert sorted(key.split("/tables/")[1] for key in objects(s3_store)) == [
        "runs_demo/model=m/instance=a/data.parquet",
        "runs_demo/model=m/instance=b/data.parquet",
    ]


def test_missing_partition_and_bad_data_are_errors_that_keep_what_is_stored(s3_store):
    with pytest.raises(StoreError, match="materialize it first"):
        s3_store.read(FLAT)
    partition = {"model": "m", "instance": "a"}
    s3_store.write(RUNS, rows(2), partition)
    with pytest.raises(StoreError, match="does not fit the declared schema"):
        s3_store.write(RUNS, pa.table({"attempt": ["x"], "text": ["x"]}), partition)
    with pytest.raises(StoreError, match="may only hold"):
        s3_store.write(RUNS, rows(1), {"model": "a/b", "instance": "x"})
    assert s3_store.read(RUNS, partition).equals(rows(2))


def test_duckdb_reads_one_version_of_an_object_replaced_while_it_is_open(s3_store):
    partition = {"model": "m", "instance": "a"}
    uri = s3_store.write(RUNS, rows(2, "old"), partition)
    filesystem = s3_store.objects.duckdb_filesystem()
    with filesystem.open(uri, "rb") as opened:
        s3_store.write(RUNS, rows(500, "new and longer"), partition)
        # DuckDB asks the size, then reads ranges: both from the body fetched at open
        assert filesystem.size(uri) == len(opened.read())
        opened.seek(0)
        assert pa.BufferReader(opened.read()).size() == filesystem.size(uri)
    assert filesystem.size(uri) < len(objects(s3_store)[uri.removeprefix("s3://")])


def test_catalog_file_needs_the_store_filesystem_and_then_serves_views(s3_store):
    s3_store.write(FLAT, pa.table({"x": [1, 2, 3]}))
    path = s3_store.write_catalog()
    with duckdb.connect(str(path), read_only=True) as con:
        s3_store.register_filesystem(con)
        assert con.execute("SELECT sum(x) FROM flat_demo").fetchone() == (6,)
        s3_store.write(FLAT, pa.table({"x": [10]}))
        assert con.execute("SELECT sum(x) FROM flat_demo").fetchone() == (10,)


def test_no_credential_reaches_anything_the_store_wrote(s3_store):
    s3_store.write(RUNS, rows(2), {"model": "m", "instance": "a"})
    s3_store.write(FLAT, pa.table({"x": [1]}))
    s3_store.write_catalog()
    written = list(objects(s3_store).values()) + [f.read_bytes() for f in s3_store.root.rglob("*") if f.is_file()]
    assert written and s3_store.root.joinpath("catalog.duckdb").exists()
    for blob in written:
        assert ACCESS_KEY.encode() not in blob and SECRET_KEY.encode() not in blob


def test_credentials_in_the_uri_are_refused_without_echoing_them(tmp_path):
    with pytest.raises(StoreError, match="AWS_ACCESS_KEY_ID") as error:
        Store(tmp_path, tables_uri=f"s3://{ACCESS_KEY}:{SECRET_KEY}@bucket/tables")
    assert SECRET_KEY not in str(error.value)
    with pytest.raises(StoreError, match="only s3://"):
        Store(tmp_path, tables_uri="ftp://host/tables")


def _write_many(model: str, n: int) -> None:
    store = Store()  # everything from the environment, as in a run pod
    for i in range(n):
        for version in range(3):  # replace each partition several times
            store.write(RUNS, rows(4, f"v{version}"), {"model": model, "instance": f"i{i:03d}"})


def test_two_processes_write_different_partitions_while_a_reader_queries(s3_store):
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(model, 12)) for model in ("m1", "m2")]
    for writer in writers:
        writer.start()
    seen = set()
    while any(w.is_alive() for w in writers):
        if s3_store.table_names():
            seen.update(
                s3_store.connect()
                .execute("SELECT count(*), count(DISTINCT text) FROM runs_demo GROUP BY model, instance")
                .fetchall()
            )
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    # the reader saw partitions mid-write, and every one it saw was one whole version
    assert seen == {(4, 1)}
    assert s3_store.connect().execute(
        "SELECT model, count(DISTINCT instance), count(*) FROM runs_demo GROUP BY model ORDER BY model"
    ).fetchall() == [("m1", 12, 48), ("m2", 12, 48)]


def test_an_asset_writes_to_object_storage_through_the_store_resource(s3_store, bucket):
    resources = {
        "store": StoreResource(root=str(s3_store.root), tables_uri=f"s3://{bucket}/trajhub/tables"),
        "project": ProjectResource(),
    }
    result = materialize([tasks], resources=resources, instance=DagsterInstance.ephemeral())
    assert result.success
    assert s3_store.sql("SELECT count(*) AS n FROM tasks").to_pylist() == [{"n": 8}]


def test_instance_lengths_read_every_models_partition_on_object_storage(s3_store):
    """rule_rewards' median length across models, with the merged partitions on S3."""
    from trajhub_assets.rewards.assets import instance_lengths
    from trajhub_assets.rewards.rules import trajectory_lengths
    from trajhub_assets_tests.test_rules import _run_of, _stored

    written = _stored(s3_store, "m-a", *_run_of("a0", 2, "continuation")) + _stored(s3_store, "m-b", *_run_of("b0", 5))
    assert instance_lengths(s3_store, "i") == trajectory_lengths(written) == {"a0": 5, "b0": 5}
    written += _stored(s3_store, "m-c", *_run_of("c0", 1))
    assert instance_lengths(s3_store, "i") == trajectory_lengths(written)
