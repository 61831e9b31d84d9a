"""The real LiteLLM proxy (proxy/start_proxy.py) as a subprocess on a free port.

It listens on loopback unless given another address (sandboxes reach the host on Docker's
bridge gateway), with a random master key and litellm's offline cost map; its recordings
go to `recordings_dir` (TRAJHUB_RECORDINGS_DIR) and its own log to `log_path`. Stopping
it ends its whole process group, which it leads. `workers` > 1 runs it as that many uvicorn
worker processes; ProxyReplicas runs several proxies behind one round-robin address.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self

import httpx

from trajhub_assets.errors import TrajhubError

log = logging.getLogger(__name__)

PROXY_DIR = Path(__file__).resolve().parents[2] / "proxy"
DEFAULT_CONFIG = PROXY_DIR / "litellm_config.yaml"


class ProxyError(TrajhubError):
    """The proxy could not be started or did not become healthy."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def scripted_upstream_env(upstream_url: str, upstream_key: str) -> dict[str, str]:
    """Environment for the config's `scripted-*` routes."""
    return {
        "TRAJHUB_SCRIPTED_UPSTREAM_URL": upstream_url,
        "TRAJHUB_SCRIPTED_UPSTREAM_V1_URL": f"{upstream_url}/v1",
        "TRAJHUB_SCRIPTED_UPSTREAM_KEY": upstream_key,
    }


class ProxyProcess:
    def __init__(
        self,
        recordings_dir: str | os.PathLike,
        *,
        config: str | os.PathLike = DEFAULT_CONFIG,
        env: dict[str, str] | None = None,
        log_path: str | os.PathLike | None = None,
        host: str = "127.0.0.1",
        workers: int = 1,
        master_key: str | None = None,
        startup_timeout: float = 120.0,
    ):
        self.recordings_dir = Path(recordings_dir)
        self.config = Path(config)
        self.extra_env = dict(env or {})
        self.log_path = Path(log_path) if log_path else self.recordings_dir.parent / "logs" / "proxy.log"
        self.host = host
        self.workers = workers
        self.startup_timeout = startup_timeout
        self.master_key = master_key or f"sk-trajhub-{secrets.token_hex(16)}"
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ProxyProcess:
        self.port = free_port(self.host)
        self.recordings_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = dict(
            os.environ,
            **self.extra_env,
            LITELLM_MASTER_KEY=self.master_key,
            LITELLM_LOCAL_MODEL_COST_MAP="True",
            TRAJHUB_RECORDINGS_DIR=str(self.recordings_dir),
        )
        command = [
            sys.executable,
            str(PROXY_DIR / "start_proxy.py"),
            "--config",
            str(self.config),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--num_workers",
            str(self.workers),
        ]
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        log.info("started LiteLLM proxy pid %s on %s (log %s)", self.process.pid, self.url, self.log_path)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ProxyError(
                    f"the proxy exited with code {self.process.returncode} during startup; "
                    f"last log lines:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/health/liveliness", timeout=2).status_code == 200 and self._workers_up():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise ProxyError(
            f"the proxy was not healthy after {self.startup_timeout:.0f}s; last log lines:\n{self.log_tail()}"
        )

    def _workers_up(self) -> bool:
        """Whether every worker has started: one answering is enough for health, not for load."""
        if self.workers == 1:
            return True
        with open(self.log_path, "rb") as log_file:
            log_file.seek(self._log_start)
            return log_file.read().count(b"Application startup complete") >= self.workers

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)  # the proxy leads its own session
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown code runs."""
        if self.process is not None and self.process.poll() is None:
            self._signal(signal.SIGKILL)
            self.process.wait(15)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ProxyReplicas:
    """Several proxies, one master key, recording into one directory, behind one address
    (front.py, a round-robin TCP front, as a subprocess). `url` and `master_key` are what a
    client uses, as with one ProxyProcess."""

    def __init__(
        self,
        recordings_dir: str | os.PathLike,
        replicas: int = 2,
        *,
        log_dir: str | os.PathLike,
        host: str = "127.0.0.1",
        **options,
    ):
        self.log_dir = Path(log_dir)
        self.host = host
        self.master_key = key = f"sk-trajhub-{secrets.token_hex(16)}"
        self.replicas = [
            ProxyProcess(recordings_dir, log_path=self.log_dir / f"proxy{i}.log", host=host, master_key=key, **options)
            for i in range(replicas)
        ]
        self.recordings_dir = self.replicas[0].recordings_dir
        self.port = 0
        self.front: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ProxyReplicas:
        try:
            with ThreadPoolExecutor(len(self.replicas)) as pool:  # each takes seconds to start
                list(pool.map(ProxyProcess.start, self.replicas))
            self.port = free_port(self.host)
            backends = [f"{r.host}:{r.port}" for r in self.replicas]
            with open(self.log_dir / "front.log", "ab") as log_file:
                command = [sys.executable, "-m", "trajhub_assets.recording.front", "--host", self.host]
                self.front = subprocess.Popen(
                    [*command, "--port", str(self.port), *backends],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            self._wait_front()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_front(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.front.poll() is not None:
                raise ProxyError(f"the front exited ({self.front.returncode}); see {self.log_dir / 'front.log'}")
            try:
                if httpx.get(f"{self.url}/health/liveliness", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise ProxyError(f"the front on {self.url} did not answer in {timeout:.0f}s")

    def stop(self) -> None:
        try:
            if self.front is not None and self.front.poll() is None:
                self.front.terminate()
                try:
                    self.front.wait(15)
                except subprocess.TimeoutExpired:  # CI saw one outlive SIGTERM by 15 s, under load
                    self.front.kill()
                    self.front.wait(15)
        finally:
            for replica in self.replicas:
                replica.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
