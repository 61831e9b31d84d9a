"""The agent clients trajhub runs: pinned versions, host-side install, placement in a sandbox.

Every client is pinned in its scaffold's registry entry (scaffolds/__init__.py) and nowhere
else; scripts/install_clients.sh calls `main`.
`install()` is idempotent and safe to call from concurrent runs (a file lock per client):

- npm clients are the platform packages of the CLIs, which hold the native executable
  (a single-file build that needs no node): `npm install --prefix <cache>/<package>@<version>`.
  `@anthropic-ai/claude-code` itself is only a wrapper whose postinstall links the
  executable of `@anthropic-ai/claude-code-linux-<arch>`; we install that one directly.
- pip clients get a virtualenv of their own, so they never share dependencies with trajhub.

The cache is `$TRAJHUB_CLIENTS_DIR`, default `~/.cache/trajhub/clients`. With the local
sandbox backend a CLI runs from the cache; otherwise `place()` copies its executable into
the run's HOME in the sandbox (sandbox.write_file; the executables are glibc builds, so the
task image must be glibc-based, as Debian/Ubuntu images are).
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from trajhub_assets.errors import TrajhubError

log = logging.getLogger(__name__)

# The npm CLIs ship one platform package per architecture, named with this.
ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
    platform.machine().lower(), platform.machine().lower()
)


class ClientError(TrajhubError):
    """An agent client could not be installed, found or placed in a sandbox."""


@dataclass(frozen=True)
class Client:
    name: str
    kind: str  # "npm" | "pip"
    package: str
    version: str
    executable: str  # relative to the installed package (npm) or to the venv (pip)
    also: tuple[str, ...] = ()  # further pinned requirements installed with it (pip)

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}" if self.kind == "npm" else f"{self.package}=={self.version}"

    @property
    def directory(self) -> Path:
        return cache_dir() / f"{self.package.replace('/', '__')}@{self.version}"

    @property
    def path(self) -> Path:
        """The executable on the host (valid once installed)."""
        if self.kind == "npm":
            return self.directory / "node_modules" / self.package / self.executable
        return self.directory / self.executable


_INSTALLED = ".trajhub-installed"  # written last: a directory without it is a failed install


def cache_dir() -> Path:
    return Path(os.environ.get("TRAJHUB_CLIENTS_DIR") or Path.home() / ".cache" / "trajhub" / "clients")


def install(client: Client) -> Path:
    """Install `client` into the cache unless it is there; return its executable."""
    if _installed(client):
        return client.path
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / f"{client.directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent run may be installing it right now
        if _installed(client):
            return client.path
        shutil.rmtree(client.directory, ignore_errors=True)  # what a failed attempt left
        log.info("installing %s into %s", client.spec, client.directory)
        try:
            if client.kind == "npm":
                _run(
                    [
                        "npm",
                        "install",
                        "--prefix",
                        str(client.directory),
                        "--no-save",
                        "--no-package-lock",
                        "--ignore-scripts",
                        "--no-audit",
                        "--no-fund",
                        "--loglevel=error",
                        client.spec,
                    ],
                    client,
                )
            else:
                _run([sys.executable, "-m", "venv", str(client.directory)], client)
                _run(
                    [
                        str(client.directory / "bin" / "pip"),
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                        client.spec,
                        *client.also,
                    ],
                    client,
                )
            if not os.access(client.path, os.X_OK):
                raise ClientError(f"{client.spec} installed, but {client.path} is not an executable")
        except BaseException:
            shutil.rmtree(client.directory, ignore_errors=True)
            raise
        (client.directory / _INSTALLED).write_text(_requirements(client))
    return client.path


def _requirements(client: Client) -> str:
    return "\n".join((client.spec, *client.also)) + "\n"


def _installed(client: Client) -> bool:
    marker = client.directory / _INSTALLED
    return marker.exists() and marker.read_text() == _requirements(client)


def _run(argv: list[str], client: Client) -> None:
    try:
        result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=1200)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ClientError(f"installing {client.spec}: {argv[0]} failed: {error}") from error
    if result.returncode != 0:
        raise ClientError(
            f"installing {client.spec}: `{' '.join(argv[:3])} ...` exited with "
            f"{result.returncode}:\n{tail(result.stderr or result.stdout, 2000)}"
        )


@functools.cache
def version(client: Client) -> str:
    """What the installed client says its version is (`--version`, or the package metadata)."""
    path = install(client)
    if client.kind == "npm":
        argv = [str(path), "--version"]
    else:
        argv = [str(path), "-c", f"import importlib.metadata as m; print(m.version({client.package!r}))"]
    # An empty HOME: a CLI must not read or write the user's own settings to say its version.
    home = cache_dir() / ".version-home"
    home.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        argv,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)},
    )
    if result.returncode != 0 or not result.stdout.strip():
        raise ClientError(
            f"{client.spec}: `{path.name} --version` exited with {result.returncode}: "
            f"{tail(result.stderr or result.stdout, 1000)}"
        )
    said = result.stdout.strip().splitlines()[-1].strip()
    if client.version not in said:
        raise ClientError(
            f"{client.spec}: the installed client says it is {said!r}; remove {client.directory} and install again"
        )
    return said


def place(sandbox, client: Client, home: str) -> str:
    """The client's executable as the sandbox sees it: the cached one when the sandbox is
    local (same file system), else a copy in `home`/bin (see `agent_home`)."""
    host_path = install(client)
    if sandbox.backend == "local":
        return str(host_path)
    target = f"{home}/bin/{host_path.name}"
    upload = f"{target}.upload"
    sandbox.write_file(upload, host_path.read_bytes())
    # Uploaded files belong to root and are not executable; a copy made by the sandbox's own
    # user is its own to chmod, whoever that user is.
    result = sandbox.exec(["sh", "-c", 'cp "$0" "$1" && chmod 755 "$1" && rm -f "$0"', upload, target], timeout=300)
    if not result.success:
        raise ClientError(f"{client.spec}: installing {target} in the sandbox failed: {tail(result.stderr, 1000)}")
    return target


def agent_home(sandbox, name: str) -> str:
    """A HOME of the run's own, next to (never inside) the workspace: it stays out of the diff,
    keeps a CLI away from the host user's settings and sessions, and goes with the sandbox.
    Where the workspace's parent is not writable (a non-root image user), under /tmp."""
    parent = PurePosixPath(sandbox.workspace).parent / f".trajhub-{name}-home"
    fallback = f"/tmp/trajhub-{name}-home-{sandbox.run_id[:12]}"
    # bin/ made by the sandbox's user: place() has the user copy an executable into it.
    script = 'mkdir -p "$0/bin" 2>/dev/null && echo "$0" || { mkdir -p "$1/bin" && echo "$1"; }'
    result = sandbox.exec(["sh", "-c", script, str(parent), fallback], timeout=60)
    if not result.success:
        raise ClientError(f"cannot create a HOME for {name} in the sandbox: {result.stderr}")
    return result.stdout.strip()


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def tail(text: str, chars: int = 4000) -> str:
    """The end of a client's output, without terminal colour codes."""
    text = _ANSI.sub("", text).strip()
    return text if len(text) <= chars else "[...]\n" + text[-chars:]


def redact(text: str, *secrets: str) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text
