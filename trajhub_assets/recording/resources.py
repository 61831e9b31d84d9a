"""ProxyResource: the LiteLLM proxy every scaffold and the judge talk to.

With no external URL (`url`, or the project's `proxy.url`) it starts the real proxy on
first use in a run (random master key, offline cost map) and stops it when the run ends;
with one it uses that proxy, and reads each run's recordings from the directory it shares with
that proxy or, when the project names a recordings key (`proxy.recordings_key_env`), fetches
them from the proxy's /trajhub/recordings route into this machine's recordings directory.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import quote, urlparse

import httpx
from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from trajhub_assets.config import ProxyConfig
from trajhub_assets.recording.proxy_process import (
    DEFAULT_CONFIG,
    ProxyError,
    ProxyProcess,
    scripted_upstream_env,
)
from trajhub_assets.recording.routes import write_proxy_config
from trajhub_assets.recording.scripted_upstream import ScriptedUpstream
from trajhub_assets.resources import ProjectResource, StoreResource
from trajhub_assets.store import home


class ProxyResource(ConfigurableResource):
    url: str | None = None  # an external proxy; default: the project's, else start one per run
    master_key: str | None = None  # the external proxy's key (e.g. EnvVar("LITELLM_MASTER_KEY"))
    project: ProjectResource | None = None  # its `proxy:` section supplies url / master_key_env
    config_path: str = str(DEFAULT_CONFIG)
    recordings_dir: str | None = None  # default: $TRAJHUB_RECORDINGS_DIR or $TRAJHUB_HOME/recordings
    startup_timeout: float = 120.0
    # A scripted upstream already running for the config's local routes (tests).
    scripted_upstream_url: str | None = None
    # The demo environment (definitions.py): serve the `trajhub-baseline/*` routes from the
    # baseline policies for the stored tasks and the baseline judge, started with the proxy.
    scripted_baselines: bool = False
    store: StoreResource | None = None  # where the baseline policies find the tasks

    _process: ProxyProcess | None = PrivateAttr(default=None)
    _upstream: ScriptedUpstream | None = PrivateAttr(default=None)
    _host: str = PrivateAttr(default="127.0.0.1")

    def recordings(self) -> Path:
        if self.recordings_dir:
            return Path(self.recordings_dir)
        explicit = os.environ.get("TRAJHUB_RECORDINGS_DIR")
        return Path(explicit) if explicit else home() / "recordings"

    def _settings(self) -> ProxyConfig | None:
        """The project's `proxy:` section, when this resource has a project."""
        return self.project.load().proxy if self.project is not None else None

    def recording(self, run_id: str) -> Path:
        """The run's recordings file on this machine (absent: the run made no call)."""
        path = self.recordings() / f"{run_id}.jsonl"
        url, _ = self._external()
        settings = self._settings()
        if url and settings is not None and settings.recordings_key_env:
            _fetch_recording(url, os.environ.get(settings.recordings_key_env), run_id, path)
        return path

    def _external(self) -> tuple[str | None, str | None]:
        """(url, key) of an external proxy, or (None, None) to start our own."""
        if self.url:
            return self.url, self.master_key
        settings = self._settings()
        if settings is not None and settings.url:
            key = os.environ.get(settings.master_key_env) if settings.master_key_env else None
            return settings.url, self.master_key or key
        return None, None

    def _started(self) -> ProxyProcess | None:
        if self._external()[0]:
            return None
        if self._process is None:
            if self.scripted_baselines and not self.scripted_upstream_url and self._upstream is None:
                self._upstream = self._baselines().start()
            upstream = self.scripted_upstream_url or (self._upstream.url if self._upstream else None)
            env = scripted_upstream_env(upstream, f"scripted-{secrets.token_hex(8)}") if upstream else {}
            settings = self._settings()
            self._process = ProxyProcess(
                self.recordings(),
                config=self._config_file(),
                env=env,
                host=self._host,
                workers=settings.workers if settings is not None else 1,
                startup_timeout=self.startup_timeout,
            ).start()
        return self._process

    def _config_file(self) -> str:
        """The proxy config: the bundled routes, plus one per project model that names its
        own endpoint or key (trajhub_assets/recording/routes.py)."""
        if self.project is None:
            return self.config_path
        path = self.recordings().parent / "proxy" / f"litellm_config.{os.getpid()}.yaml"
        return str(write_proxy_config(self.project.load().models, path, base=self.config_path))

    def listen_on(self, host: str) -> None:
        """Have the proxy this resource starts listen on `host` (e.g. Docker's bridge gateway,
        so sandboxes reach it), restarting it if it already runs elsewhere. An external proxy
        is left as it is."""
        if self._process is not None and self._process.host != host:
            self._process.stop()
            self._process = None
        self._host = host

    def _baselines(self) -> ScriptedUpstream:
        from trajhub_assets.scaffolds.baselines import BaselinePolicies, upstream_policy
        from trajhub_assets.tasks.catalog import stored_tasks
        from trajhub_assets.tasks.schema import TASKS

        store = (self.store or StoreResource()).get()
        tasks = list(stored_tasks(store).values()) if store.exists(TASKS) else []
        return ScriptedUpstream(upstream_policy(BaselinePolicies(tasks)))

    @property
    def base_url(self) -> str:
        """Root URL: Anthropic clients (ANTHROPIC_BASE_URL) append /v1/messages themselves."""
        process = self._started()
        return (process.url if process else self._external()[0]).rstrip("/")

    @property
    def openai_base_url(self) -> str:
        """For OpenAI-style clients (OPENAI_BASE_URL), which append /chat/completions."""
        return f"{self.base_url}/v1"

    @property
    def port(self) -> int:
        parsed = urlparse(self.base_url)
        return parsed.port or (443 if parsed.scheme == "https" else 80)

    @property
    def key(self) -> str:
        """The key clients send (Authorization: Bearer / x-api-key)."""
        process = self._started()
        if process:
            return process.master_key
        url, key = self._external()
        if not key:
            raise ProxyError(
                f"ProxyResource: the external proxy {url} needs master_key (or the project's proxy.master_key_env)"
            )
        return key

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None
        if self._upstream is not None:
            self._upstream.stop()
            self._upstream = None


def _fetch_recording(url: str, key: str | None, run_id: str, path: Path) -> None:
    """Copy the proxy's file of `run_id` to `path` whole (a temporary name, then a rename)."""
    if not key:
        raise ProxyError(f"proxy.recordings_key_env: the recordings key of {url} is not set in this environment")
    address = f"{url.rstrip('/')}/trajhub/recordings/{quote(run_id, safe='')}"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    try:
        with httpx.stream("GET", address, headers={"authorization": f"Bearer {key}"}, timeout=120) as response:
            if response.status_code == 404:
                return  # the run made no call
            if response.status_code != 200:
                raise ProxyError(
                    f"{address}: HTTP {response.status_code}: {response.read()[:300].decode(errors='replace')}"
                )
            with partial.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        os.replace(partial, path)
    except httpx.HTTPError as error:
        raise ProxyError(f"{address}: the recordings of run {run_id} could not be fetched: {error}") from None
    finally:
        partial.unlink(missing_ok=True)
