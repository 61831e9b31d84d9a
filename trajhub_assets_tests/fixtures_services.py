"""Fixtures that start the services of a cluster on loopback: PostgreSQL (Dagster's storage),
Redis (the Celery broker) and an S3 API server (moto's). Debian's postgresql and redis-server
are installed by scripts/test.sh; a missing one fails the test that needs it, saying so.
Each is stopped at teardown, also when a test failed.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from moto.server import ThreadedMotoServer

PG_PASSWORD = "pg-" + os.urandom(8).hex()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _binary(name: str, pattern: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(pattern), reverse=True)), None)
    if found is None:
        pytest.fail(f"{name} is missing: scripts/test.sh installs it (apt-get install postgresql redis-server)")
    return found


def _postgres_binary(name: str) -> str:
    return _binary(name, f"/usr/lib/postgresql/*/bin/{name}")


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on loopback with password auth and a `dagster` database; the
    DAGSTER_PG_* environment Dagster's instance (deploy/dagster.yaml) reads."""
    user = "postgres" if os.geteuid() == 0 else None  # postgres refuses to run as root
    workdir = Path(tempfile.mkdtemp(prefix="trajhub-pg-"))
    password_file = workdir / "password"
    password_file.write_text(PG_PASSWORD + "\n")
    if user:
        for path in (workdir, password_file):
            shutil.chown(path, user)
    init = subprocess.run(
        [
            _postgres_binary("initdb"),
            "-D",
            str(workdir / "data"),
            "-U",
            "dagster",
            f"--pwfile={password_file}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
        ],
        user=user,
        capture_output=True,
        text=True,
    )
    assert init.returncode == 0, f"initdb failed: {init.stderr[-2000:]}"
    port = free_port()
    log = workdir / "postgres.log"
    server = subprocess.Popen(
        [
            _postgres_binary("postgres"),
            "-D",
            str(workdir / "data"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-k",
            str(workdir),
            "-c",
            "max_connections=200",  # every Dagster process and Celery worker holds a few
        ],
        user=user,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(
                    host="127.0.0.1",
                    port=port,
                    user="dagster",
                    password=PG_PASSWORD,
                    dbname="postgres",
                    autocommit=True,
                ) as con:
                    con.execute("CREATE DATABASE dagster")
                break
            except psycopg.OperationalError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"PostgreSQL did not start: {log.read_text()[-2000:]}")
                time.sleep(0.1)
        yield {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(port),
            "DAGSTER_PG_DB": "dagster",
            "DAGSTER_PG_USERNAME": "dagster",
            "DAGSTER_PG_PASSWORD": PG_PASSWORD,
        }
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)


class RedisServer:
    """redis-server on loopback, without persistence; `restart` keeps its port (a broker that
    went away and came back, empty)."""

    def __init__(self, workdir: Path):
        self.workdir, self.port = workdir, free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        command = [_binary("redis-server", "/usr/bin/redis-server"), "--bind", "127.0.0.1", "--port", str(self.port)]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        log = (self.workdir / "redis.log").open("a")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as con:
                    con.sendall(b"PING\r\n")
                    if con.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start: {(self.workdir / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3_server():
    """A real S3 API server on loopback (moto's); its address, for AWS_ENDPOINT_URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
