"""Sandboxes for runs: one interface (exec, read_file, write_file, cleanup), two backends.

    with make_sandbox(task, backend="docker", run_id=run_id, limits=Limits(...)) as sandbox:
        sandbox.exec("python3 -m pytest -q", timeout=300)
        outcome = collect_outcome(sandbox, task)

The Docker backend isolates (see sandbox/docker.py for what exactly); the local one
does not, and says so in the log.
"""

from trajhub_assets.sandbox.base import (
    ExecResult,
    Limits,
    Outcome,
    Sandbox,
    SandboxError,
    SandboxTimeout,
    collect_outcome,
    parse_test_counts,
)
from trajhub_assets.sandbox.docker import DockerSandbox, docker_available, remove_orphans
from trajhub_assets.sandbox.local import LocalSandbox

BACKENDS = {"docker": DockerSandbox, "local": LocalSandbox}


def make_sandbox(task: dict, *, backend: str = "docker", **options) -> Sandbox:
    """An unstarted sandbox for `task`; `options` go to the backend (run_id, limits, and for
    docker: network, docker_host). Start it with `with` or `.start()`."""
    if backend not in BACKENDS:
        raise SandboxError(f"sandbox backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "local":  # the same call works for both; these mean nothing locally
        options.pop("network", None)
        options.pop("docker_host", None)
    return BACKENDS[backend](task, **options)


__all__ = [
    "BACKENDS",
    "DockerSandbox",
    "ExecResult",
    "Limits",
    "LocalSandbox",
    "Outcome",
    "Sandbox",
    "SandboxError",
    "SandboxTimeout",
    "collect_outcome",
    "docker_available",
    "make_sandbox",
    "parse_test_counts",
    "remove_orphans",
]
