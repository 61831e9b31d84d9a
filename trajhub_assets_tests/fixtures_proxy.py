"""Fixtures that start the scripted upstream LLM server and the real LiteLLM proxy.

One upstream and one proxy serve the whole session (the proxy takes ~10 s to start);
`upstream` resets the script for each test. Tests that must kill a proxy start their own
with `start_proxy`. Everything is stopped at teardown, also when a test failed.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from trajhub_assets.recording.attempts import Proxy
from trajhub_assets.recording.proxy_process import ProxyProcess, scripted_upstream_env
from trajhub_assets.recording.scripted_upstream import ScriptedUpstream


@dataclass
class RunningProxy:
    process: ProxyProcess
    home: Path  # TRAJHUB_HOME of this proxy: recordings/ and logs/ live under it
    upstream_key: str  # the key the proxy sends upstream: must never be recorded
    recordings_key: str  # the key of its /trajhub/recordings route (proxy/recordings.py)

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def master_key(self) -> str:
        return self.process.master_key

    @property
    def recordings(self) -> Path:
        return self.process.recordings_dir

    def recording(self, run_id: str) -> Path:
        return self.recordings / f"{run_id}.jsonl"

    @property
    def endpoint(self) -> Proxy:
        """Where an agent reaches this proxy from the host (the builtin agent, a local sandbox)."""
        return Proxy(self.url, self.url, self.master_key)


def _start(home: Path, upstream: ScriptedUpstream) -> RunningProxy:
    upstream_key, recordings_key = f"sk-upstream-{secrets.token_hex(16)}", secrets.token_hex(24)
    env = scripted_upstream_env(upstream.url, upstream_key) | {"TRAJHUB_RECORDINGS_KEY": recordings_key}
    process = ProxyProcess(home / "recordings", log_path=home / "logs" / "proxy.log", env=env)
    process.start()
    return RunningProxy(process, home, upstream_key, recordings_key)


@pytest.fixture(scope="session")
def scripted_upstream() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def upstream(scripted_upstream: ScriptedUpstream) -> ScriptedUpstream:
    """The session's upstream with an empty script; the test sets its own."""
    scripted_upstream.set_script([])
    return scripted_upstream


@pytest.fixture(scope="session")
def proxy(scripted_upstream: ScriptedUpstream, tmp_path_factory) -> Iterator[RunningProxy]:
    running = _start(tmp_path_factory.mktemp("trajhub_home"), scripted_upstream)
    try:
        yield running
    finally:
        running.process.stop()


@pytest.fixture
def start_proxy(scripted_upstream: ScriptedUpstream, tmp_path) -> Iterator:
    """Start a private proxy (for tests that kill it); stopped at teardown."""
    started: list[RunningProxy] = []

    def start(home: Path | None = None) -> RunningProxy:
        running = _start(home or tmp_path / f"home{len(started)}", scripted_upstream)
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in started:
            running.process.stop()
