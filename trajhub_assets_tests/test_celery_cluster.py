"""The Celery profile (trajhub_assets/deploy/celery/) run for real on this machine.

Redis (broker and result backend), PostgreSQL (Dagster's storage), an S3 API server (the
tables), one recording proxy and two `dagster-celery` workers, each a process with its own
working directory, DAGSTER_HOME and TRAJHUB_HOME; they share only those services and the
proxy (each worker fetches its runs' recordings from the proxy's /trajhub/recordings route). The
launching machine is a third such process: `trajhub run` with TRAJHUB_EXECUTOR=celery, the
README's command. The demo's two deterministic baselines over its 8 tasks are run once so and
once by `trajhub run` on one machine, and the two stores must hold the same data.

TRAJHUB_CLUSTER_SANDBOX=local runs the sandboxes as local processes (where Docker is busy);
the default is the profile's: one Docker engine for every worker.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml
from dagster import AssetKey, DagsterInstance

from trajhub_assets.config import DEFAULT_CONFIG, load_config
from trajhub_assets.deploy import CELERY_DIR, CELERY_SETTINGS
from trajhub_assets.jobs import RECORD_AND_SCORE_ASSETS
from trajhub_assets.lineage import WRITTEN_BY
from trajhub_assets.partitions import run_key
from trajhub_assets.recording.proxy_process import ProxyProcess, scripted_upstream_env
from trajhub_assets.recording.schema import RUNS
from trajhub_assets.recording.scripted_upstream import ScriptedUpstream
from trajhub_assets.scaffolds.baselines import BaselinePolicies, upstream_policy
from trajhub_assets.store import Store
from trajhub_assets.tasks.catalog import load_catalog, table_to_records, tasks_to_table

pytestmark = pytest.mark.cluster

BIN = Path(sys.executable).parent
BACKEND = os.environ.get("TRAJHUB_CLUSTER_SANDBOX", "docker")
MODELS = ("careful", "hasty")
S3_KEYS = {"AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "AKIATESTCLUSTER", "AWS_SECRET_ACCESS_KEY": "not-a-secret"}


def write_project(path: Path, proxy_url: str | None) -> Path:
    """deploy/celery/project.yaml with the demo's tasks, two baselines and judge, and the
    sandbox backend of this test; proxy_url None: a proxy of its own (one machine)."""
    project = yaml.safe_load((CELERY_DIR / "project.yaml").read_text())
    project["tasks"] = [{"path": str(DEFAULT_CONFIG.parent / "tasks/demo/tasks.jsonl")}]
    project["models"] = [
        {"name": f"baseline/{name}", "route": f"trajhub-baseline/{name}", "scaffold": "builtin"} for name in MODELS
    ]
    project["judge"] = {"model": "baseline/judge"}
    project["sandbox"] |= {"backend": BACKEND, "cpus": 1, "memory": "1g", "timeout_s": 300}
    project["proxy"] = project["proxy"] | {"url": proxy_url} if proxy_url else {}  # keys: as the profile names them
    project["release"] |= {"name": "cluster-demo", "min_margin": 0.01}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(project))
    return path


def clean_environ() -> dict[str, str]:
    """This process's environment without any trajhub, Dagster or S3 setting; the venv's
    commands first (dagster-celery starts `celery`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAJHUB_", "DAGSTER_", "AWS_"))}
    return env | {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}


@pytest.fixture(scope="module")
def services(redis, postgres, s3_server, tmp_path_factory, request):
    """The cluster's shared services, and the environment every process of it gets."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's line per request
    bucket = f"trajhub-{uuid.uuid4().hex[:8]}"
    pafs.S3FileSystem(endpoint_override=s3_server, allow_bucket_creation=True, **_s3_credentials()).create_dir(bucket)
    shared = tmp_path_factory.mktemp("proxy")
    host = "127.0.0.1"
    if BACKEND == "docker":
        request.getfixturevalue("docker_engine")
        from trajhub_assets.sandbox.docker import bridge_gateway

        host = bridge_gateway(None)  # sandboxes reach the proxy at host.docker.internal
    config = load_config(write_project(shared / "project.yaml", "http://unused"))
    upstream = ScriptedUpstream(
        upstream_policy(BaselinePolicies(table_to_records(tasks_to_table(load_catalog(config)))))
    ).start()
    recordings_key = secrets.token_hex(24)
    env = scripted_upstream_env(upstream.url, "sk-upstream-cluster") | {"TRAJHUB_RECORDINGS_KEY": recordings_key}
    proxy = ProxyProcess(shared / "recordings", env=env, host=host).start()
    try:
        yield {
            "proxy_url": proxy.url,
            "recordings": proxy.recordings_dir,
            "env": {
                "TRAJHUB_EXECUTOR": "celery",
                "TRAJHUB_CELERY_BROKER": f"{redis.url}/0",
                "TRAJHUB_CELERY_BACKEND": f"{redis.url}/1",
                **postgres,
                "TRAJHUB_TABLES_URI": f"s3://{bucket}/tables",
                "AWS_ENDPOINT_URL": s3_server,
                **S3_KEYS,
                "LITELLM_MASTER_KEY": proxy.master_key,
                "TRAJHUB_RECORDINGS_KEY": recordings_key,  # each worker fetches its runs' recordings
            },
            "redis": redis,
        }
    finally:
        proxy.stop()
        upstream.stop()


def _s3_credentials() -> dict:
    return {"access_key": S3_KEYS["AWS_ACCESS_KEY_ID"], "secret_key": S3_KEYS["AWS_SECRET_ACCESS_KEY"]}


def node(services, workdir: Path) -> dict[str, str]:
    """The environment of one process of the cluster, with its own directories and its own
    copies of dagster.yaml and the project file."""
    (workdir / "dagster").mkdir(parents=True, exist_ok=True)
    shutil.copy(CELERY_DIR / "dagster.yaml", workdir / "dagster" / "dagster.yaml")
    project = write_project(workdir / "project.yaml", services["proxy_url"])
    return (
        clean_environ()
        | services["env"]
        | {
            "DAGSTER_HOME": str(workdir / "dagster"),
            "TRAJHUB_HOME": str(workdir / "home"),
            "TRAJHUB_CONFIG": str(project),
        }
    )


class Worker:
    """`dagster-celery worker start`, as deploy/celery's README steps start one: one step at a
    time (solo pool), so the step runs in the worker's own process."""

    def __init__(self, name: str, workdir: Path, env: dict[str, str]):
        self.name, self.workdir, self.env = name, workdir, env
        self.log = workdir / "worker.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> Worker:
        command = [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app"]
        settings = self.env.get("TRAJHUB_CELERY_SETTINGS") or str(CELERY_SETTINGS)
        command += ["-y", settings, "-n", self.name, "--", "--pool=solo"]
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                command, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 120
        while f"{self.name}@" not in self.log.read_text() or " ready." not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"worker {self.name} did not start: {self.log.read_text()[-3000:]}")
            time.sleep(0.5)
        return self

    @property
    def pid(self) -> int:
        """The celery process under `dagster-celery worker start`: where its steps run."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        assert len(children) == 1, f"worker {self.name}: expected one celery process, found {children}"
        return int(children[0])

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)


@contextmanager
def workers(services, root: Path, count: int, extra: dict[str, str] | None = None):
    started = []
    try:
        for number in range(1, count + 1):
            workdir = root / f"worker{number}"
            started.append(Worker(f"worker{number}", workdir, node(services, workdir) | (extra or {})).start())
        yield started
    finally:
        for worker in started:
            worker.stop()


def trajhub(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([str(BIN / "trajhub"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"trajhub {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


@contextmanager
def environment(env: dict[str, str]):
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield


# -- the two runs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def single_machine(tmp_path_factory):
    """`trajhub run` on one machine: its own proxy, SQLite, local tables."""
    root = tmp_path_factory.mktemp("single")
    env = clean_environ() | {
        "TRAJHUB_HOME": str(root / "home"),
        "TRAJHUB_CONFIG": str(write_project(root / "p.yaml", None)),
    }
    started = time.monotonic()
    trajhub(env, "run", cwd=root)
    return {"store": Store(root / "home", tables_uri=""), "seconds": time.monotonic() - started}


@pytest.fixture(scope="module")
def cluster(services, tmp_path_factory):
    """`trajhub run` with TRAJHUB_EXECUTOR=celery from a launching machine, two workers."""
    root = tmp_path_factory.mktemp("cluster")
    launcher = node(services, root / "launcher")
    with workers(services, root, 2) as started:
        pids = {worker.pid: worker.name for worker in started}
        begun = time.monotonic()
        trajhub(launcher, "run", cwd=root / "launcher")
        seconds = time.monotonic() - begun
        logs = {worker.name: worker.log.read_text() for worker in started}
    with environment(services["env"] | {"DAGSTER_HOME": launcher["DAGSTER_HOME"]}):
        store = Store(root / "launcher" / "home")
        instance = DagsterInstance.from_config(launcher["DAGSTER_HOME"])
        yield {"store": store, "instance": instance, "pids": pids, "logs": logs, "seconds": seconds, "root": root}
        instance.dispose()


def materializations(instance: DagsterInstance, asset: str) -> list:
    return list(instance.fetch_materializations(AssetKey(asset), limit=10_000).records)


def test_steps_ran_on_both_workers_and_each_partition_once(cluster):
    instance, pids = cluster["instance"], cluster["pids"]
    partitions = {run_key(p["model"], p["instance"]) for p in cluster["store"].partitions(RUNS)}
    assert len(partitions) == len(MODELS) * 8
    ran_on = Counter()
    for asset in RECORD_AND_SCORE_ASSETS:
        records = materializations(instance, asset)
        made = Counter(r.partition_key for r in records)
        assert set(made) == partitions, asset
        assert set(made.values()) == {1}, f"{asset}: a partition materialized more than once: {made}"
        for record in records:
            host, pid = record.asset_materialization.metadata["batch_worker"].value.rsplit(":", 1)
            assert int(pid) in pids, f"{asset} ran in {host}:{pid}, not in a worker {pids}"
            ran_on[pids[int(pid)]] += 1
    assert set(ran_on) == {"worker1", "worker2"}, f"steps ran on {dict(ran_on)} only"
    for name, log in cluster["logs"].items():
        assert "Task execute_plan" in log and "succeeded" in log, f"{name} ran no step:\n{log[-2000:]}"


# What differs between any two runs of the same deterministic baselines: ids drawn at random
# (the run id's nonce, call ids, the upstream's tool-call ids), clocks and durations (columns,
# and unittest's "Ran 9 tests in 0.004s"), and the content hashes over those (blob keys, the
# judge's input hash, pair ids). Those are masked; every other value must be equal.
MASKS = [
    (re.compile(r"(~\d+)~[0-9a-f]{8}\b"), r"\1"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<uuid>"),
    (re.compile(r"\bcall_[0-9a-f]{12}\b"), "call_<id>"),
    (re.compile(r" in \d+\.\d+s\b"), " in <t>s"),
    (re.compile(r"\bat 0x[0-9a-f]+"), "at 0x<address>"),  # a Python object's repr in a traceback
    (re.compile(r"\bchatcmpl-scripted-\d+"), "chatcmpl-<n>"),  # the scripted upstream counts its replies
    (re.compile(r"/tmp/trajhub-[^/\s\"']+"), "<workspace>"),  # a local sandbox's directory
    (re.compile(r'"(created|\w+_at|\w*time\w*|\w+_ms|\w+_s|\w+_ns)": ?-?[\d.]+(e-?\d+)?'), r'"\1": <t>'),  # clocks
    (re.compile(r'"recorded_by": ?"[^"]*"'), '"recorded_by": <process>'),  # the proxy's host:pid
]
VOLATILE = re.compile(
    r"(^|_)(ts|at|time|timestamp|started|ended|seconds|latency|duration|ms|s)$|_at$|_time|elapsed"
    r"|(^|_)(hash|sha256|ref|refs|nonce)$|^pair_id$"
)


def _plain(value):
    if isinstance(value, str):
        for pattern, replacement in MASKS:
            value = pattern.sub(replacement, value)
        return value
    if isinstance(value, dict):
        return tuple(sorted((k, _plain(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value


def normalized(store: Store, table: str) -> dict[str, list]:
    """Each lasting column of the table: its values, in the order of the sorted rows."""
    data = store.sql(f"SELECT * FROM {table}")
    columns = sorted(c for c in data.column_names if not VOLATILE.search(c))
    rows = sorted(tuple(repr(_plain(row[c])) for c in columns) for row in data.select(columns).to_pylist())
    return {c: [row[i] for row in rows] for i, c in enumerate(columns)}


def test_the_store_holds_what_a_single_machine_run_holds(cluster, single_machine):
    mine, theirs = cluster["store"], single_machine["store"]
    assert mine.objects is not None and theirs.objects is None  # S3 against local files
    assert set(mine.table_names()) == set(theirs.table_names())
    differ = {}
    for table in sorted(theirs.table_names()):
        a, b = normalized(mine, table), normalized(theirs, table)
        for column in sorted(set(a) | set(b)):
            only_mine = sorted((Counter(a.get(column, [])) - Counter(b.get(column, []))).elements())
            only_theirs = sorted((Counter(b.get(column, [])) - Counter(a.get(column, []))).elements())
            if only_mine or only_theirs:
                differ[f"{table}.{column}"] = f"{len(only_mine)} values only here, {len(only_theirs)} only there: " + (
                    _first_difference(only_mine[0], only_theirs[0]) if only_mine and only_theirs else ""
                )
    assert not differ, f"columns that differ from the single-machine run's: {differ}"


def _first_difference(x: str, y: str) -> str:
    at = next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y)))
    return f"{x[max(0, at - 80) : at + 80]!r} != {y[max(0, at - 80) : at + 80]!r}"


def test_every_call_is_recorded_and_stored(cluster, services):
    runs = every_call_stored(cluster["store"], services["recordings"])
    assert len(runs) == len(MODELS) * 8
    # Each from the proxy, by the worker that made the run, into its own home.
    fetched = {path.stem: path for path in cluster["root"].glob("worker*/home/recordings/*.jsonl")}
    assert set(fetched) == set(runs)
    for run_id, path in fetched.items():
        assert path.read_bytes() == (services["recordings"] / path.name).read_bytes(), run_id


def every_call_stored(store: Store, recordings: Path) -> dict[str, list[dict]]:
    """Each stored run's recorded calls, once each asserted stored."""
    stored = Counter(store.sql("SELECT run_id FROM raw_calls").column("run_id").to_pylist())
    calls = {}
    for run_id in store.sql("SELECT run_id FROM runs").column("run_id").to_pylist():
        calls[run_id] = [json.loads(line) for line in (recordings / f"{run_id}.jsonl").read_text().splitlines()]
        assert stored[run_id] == len(calls[run_id]) > 0, run_id
    return calls


def test_the_release_is_the_one_a_single_machine_builds_from_the_same_store(cluster, single_machine, tmp_path):
    from trajhub_assets.release.assets import release_inputs
    from trajhub_assets.release.release import build_release

    (record,) = materializations(cluster["instance"], "hf_dataset_release")
    version = record.asset_materialization.metadata["version"].value
    config = load_config(write_project(tmp_path / "p.yaml", None))
    rebuilt = build_release(release_inputs(cluster["store"], config), config.release, tmp_path)
    assert rebuilt.version == version


# -- faults and throughput, each on a bucket of its own ---------------------------------


def fresh_bucket(services) -> dict[str, str]:
    bucket = f"trajhub-{uuid.uuid4().hex[:8]}"
    endpoint = services["env"]["AWS_ENDPOINT_URL"]
    pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True, **_s3_credentials()).create_dir(bucket)
    return {"TRAJHUB_TABLES_URI": f"s3://{bucket}/tables"}


def start_trajhub(env: dict[str, str], *args: str, cwd: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    path = cwd / f"trajhub-{args[0]}-{uuid.uuid4().hex[:6]}.log"
    with path.open("w") as log:
        process = subprocess.Popen(
            [str(BIN / "trajhub"), *args], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
        )
    process.log_path = path
    return process


def ended(process: subprocess.Popen, timeout: float) -> int:
    """Its exit code; a process still running after `timeout` is killed and the test fails."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"{process.args} hung for {timeout} s:\n{process.log_path.read_text()[-5000:]}")


def finished(process: subprocess.Popen, timeout: float = 1200) -> None:
    returncode = ended(process, timeout)
    assert returncode == 0, f"{process.args}: exit {returncode}\n{process.log_path.read_text()[-5000:]}"


@dataclass
class Underway:
    """A backfill started from a launcher, its run's raw_trajectories started on a worker."""

    instance: DagsterInstance
    launcher: dict[str, str]
    workers: list[Worker]
    backfill: subprocess.Popen
    run_id: str
    pid: int  # of the worker running raw_trajectories
    before: set[str]  # the runs there were before it


@contextmanager
def backfill_underway(services, root: Path, model: str, extra: dict[str, str]):
    """Two workers, the catalog loaded, then `trajhub backfill --model <model> --no-release`
    until a worker starts its raw_trajectories; in the launcher's environment."""
    launcher = node(services, root / "launcher") | extra
    with workers(services, root, 2, extra) as started:
        trajhub(launcher, "run", "--catalog-only", cwd=root / "launcher")
        with environment(services["env"] | extra | {"DAGSTER_HOME": launcher["DAGSTER_HOME"]}):
            instance = DagsterInstance.from_config(launcher["DAGSTER_HOME"])
            before = {run.run_id for run in instance.get_runs()}
            backfill = start_trajhub(launcher, "backfill", "--model", model, "--no-release", cwd=root / "launcher")
            run_id, pid = step_started(instance, "raw_trajectories", started, before)
            try:
                yield Underway(instance, launcher, started, backfill, run_id, pid, before)
            finally:
                instance.dispose()


def test_a_worker_killed_mid_step_leaves_the_step_to_the_other(services, tmp_path):
    """SIGKILL of the worker running raw_trajectories: its step's message was never acknowledged,
    so Redis hands it to the other worker after the visibility timeout (30 s here, in a copy of
    celery.yaml), which runs the step again; the run succeeds and the store holds every
    partition once, whole, with every call of the runs it keeps."""
    settings = yaml.safe_load(CELERY_SETTINGS.read_text())
    # Redelivered 30 s after it was taken, looked for every 5 s (kombu's default sweep: 100 s).
    transport = settings["execution"]["config"]["config_source"]["broker_transport_options"]
    transport |= {"visibility_timeout": 30, "unacked_restore_interval": 5, "unacked_restore_throttle": 1}
    (tmp_path / "celery.yaml").write_text(yaml.safe_dump(settings))
    extra = fresh_bucket(services) | {"TRAJHUB_CELERY_SETTINGS": str(tmp_path / "celery.yaml")}
    with backfill_underway(services, tmp_path, "baseline/careful", extra) as underway:
        victim = next(w for w in underway.workers if w.pid == underway.pid)
        survivor = next(w for w in underway.workers if w is not victim)
        wait_for_sandboxes(underway.pid)  # well into the step: sandboxes started, calls recorded
        victim.stop(signal.SIGKILL)  # its pid is gone from /proc now: underway.pid names it
        finished(underway.backfill)
        assert not sandboxes_of(underway.pid), "the killed worker's sandboxes were left behind"
        assert underway.instance.get_run_by_id(underway.run_id).is_success
        records = [r for r in materializations(underway.instance, "raw_trajectories") if r.run_id == underway.run_id]
        assert len(records) == 8 and len({r.partition_key for r in records}) == 8
        workers_of = {r.asset_materialization.metadata["batch_worker"].value.rsplit(":", 1)[1] for r in records}
        assert workers_of == {str(survivor.pid)}
        assert len(every_call_stored(Store(tmp_path / "launcher" / "home"), services["recordings"])) == 8
        assert "Task execute_plan" in survivor.log.read_text()


def sandboxes_of(pid: int) -> list[str]:
    """The Docker sandboxes the process `pid` of this host made (none with local sandboxes)."""
    if BACKEND != "docker":
        return []
    from trajhub_assets.sandbox.docker import LABEL_HOST, LABEL_PID, connect

    client = connect()
    try:
        found = client.containers.list(all=True, filters={"label": [f"{LABEL_PID}={pid}"]})
        return [c.name for c in found if c.labels.get(LABEL_HOST) == socket.gethostname()]
    finally:
        client.close()


def wait_for_sandboxes(pid: int, timeout: float = 120) -> None:
    """Until the step in `pid` runs sandboxes (Docker), or for 3 s (local sandboxes)."""
    if BACKEND != "docker":
        time.sleep(3)
        return
    deadline = time.monotonic() + timeout
    while not sandboxes_of(pid):
        if time.monotonic() > deadline:
            pytest.fail(f"the step in {pid} started no sandbox in {timeout} s")
        time.sleep(0.5)


def step_started(
    instance: DagsterInstance, step: str, started: list[Worker], before: set[str], timeout: float = 300
) -> tuple[str, int]:
    """The run (not one of `before`) and the worker pid of the first start of `step`."""
    from dagster import DagsterEventType

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in (r for r in instance.get_runs(limit=10) if r.run_id not in before):
            for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_START):
                if entry.step_key == step:
                    return run.run_id, entry.dagster_event.pid
        time.sleep(0.5)
    pytest.fail(f"no worker started {step} in {timeout} s: " + "; ".join(w.log.read_text()[-500:] for w in started))


def test_throughput_of_one_and_two_workers_on_the_same_backfill(services, tmp_path, capsys):
    """Both models backfilled at once (two `trajhub backfill` runs), once with one worker and once
    with two: the wall-clock ratio. On 2 cores the two workers share the CPUs with the proxy,
    the sandboxes and the launchers, so this shows Celery's overhead as much as any speedup."""
    seconds = {}
    for count in (1, 2):
        extra = fresh_bucket(services)
        launchers = {m: node(services, tmp_path / f"{count}" / m) | extra for m in MODELS}
        with workers(services, tmp_path / f"{count}", count, extra):
            trajhub(launchers[MODELS[0]], "run", "--catalog-only", cwd=tmp_path / f"{count}" / MODELS[0])
            begun = time.monotonic()
            running = [
                start_trajhub(
                    env, "backfill", "--model", f"baseline/{m}", "--no-release", cwd=tmp_path / f"{count}" / m
                )
                for m, env in launchers.items()
            ]
            for process in running:
                finished(process)
            seconds[count] = time.monotonic() - begun
    with capsys.disabled():
        print(
            f"\ncelery_backfill {len(MODELS)} models x 8 instances: 1_worker_s={seconds[1]:.1f} "
            f"2_workers_s={seconds[2]:.1f} speedup_2_vs_1={seconds[1] / seconds[2]:.2f} (cores: {os.cpu_count()})"
        )
    assert seconds[1] > 0 and seconds[2] > 0


def test_redis_restarted_mid_run_then_a_rerun_finishes_the_rest(services, tmp_path):
    """Redis (no persistence) restarted while raw_trajectories runs: the messages and results it
    held are gone. The run either completes (the worker stores its result in the new Redis) or
    fails saying why; `trajhub backfill --missing` then runs what is left, and every partition
    ends up stored once per run that kept it."""
    with backfill_underway(services, tmp_path, "baseline/hasty", fresh_bucket(services)) as underway:
        time.sleep(2)
        services["redis"].restart()
        returncode = ended(underway.backfill, 900)
        out = underway.backfill.log_path.read_text()
        if returncode != 0:
            run = underway.instance.get_run_by_id(underway.run_id)
            assert run.is_failure and f"record_and_score failed (run {underway.run_id})" in out, out[-3000:]
        rerun = trajhub(
            underway.launcher, "backfill", "--model", "baseline/hasty", "--missing", "--no-release", cwd=tmp_path
        )
        hasty = {run_key("baseline__hasty", i) for i in instances(Store(tmp_path / "launcher" / "home"))}
        assert len(hasty) == 8
        for asset in RECORD_AND_SCORE_ASSETS:
            assert hasty <= underway.instance.get_materialized_partitions(AssetKey(asset)), asset
    print(f"redis restart: the first run {'completed' if returncode == 0 else 'failed'}; {rerun.stdout[-300:]}")


def instances(store: Store) -> list[str]:
    return store.sql("SELECT instance_id FROM tasks").column("instance_id").to_pylist()


def test_a_second_run_of_the_same_partitions_waits_then_replaces_them_whole(services, tmp_path):
    """Two launchers backfill one model; the second starts while the first runs raw_trajectories.
    Its run waits until the first's has ended (it says for which run), then runs the same
    partitions: every table then holds the second's runs only, each partition whole (the same
    run ids in the runs, the calls, the conversations and every reward table)."""
    extra = fresh_bucket(services)
    with backfill_underway(services, tmp_path, "baseline/careful", extra) as first:
        second_launcher = node(services, tmp_path / "launcher2") | extra
        second = start_trajhub(
            second_launcher, "backfill", "--model", "baseline/careful", "--no-release", cwd=tmp_path / "launcher2"
        )
        finished(first.backfill)
        finished(second)
        said = second.log_path.read_text()
        assert f"record_and_score waits: run {first.run_id} (record_and_score, STARTED)" in said, said[-3000:]
        runs = [r for r in first.instance.get_runs() if r.run_id not in first.before]
        [then] = [r for r in runs if r.job_name == "record_and_score" and r.run_id != first.run_id]
        then = first.instance.get_run_record_by_id(then.run_id)
        assert then.start_time >= first.instance.get_run_record_by_id(first.run_id).end_time
        assert then.dagster_run.is_success
        store = Store(tmp_path / "launcher" / "home")
        calls = every_call_stored(store, services["recordings"])
        assert len(calls) == 8
        for table in RUN_TABLES:
            assert set(store.sql(f"SELECT DISTINCT run_id FROM {table}").column("run_id").to_pylist()) == set(calls)
        for run, recorded in calls.items():
            assert min(r["started_at"] for r in recorded) >= then.start_time, f"{run} is the first launcher's"


# The tables of one run partition whose rows name their run (message_blobs' rows are content).
RUN_TABLES = [t for t, asset in WRITTEN_BY.items() if asset in RECORD_AND_SCORE_ASSETS and t != "message_blobs"]
