"""The local backend: subprocesses in a temporary copy of the workspace.

For machines without a Docker engine. It isolates nothing: commands run as the
current user, see the whole file system and network, and have no CPU, memory or
process limits. Only timeouts are enforced (each command runs in its own process
group, killed whole). The environment is reduced to a few variables so that host
secrets do not end up in an agent's context.
"""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path, PurePosixPath

from trajhub_assets.errors import RecordError
from trajhub_assets.sandbox.base import CappedBuffer, ExecResult, Sandbox, task_field

log = logging.getLogger(__name__)

PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TERM", "USER", "TMPDIR")


class LocalSandbox(Sandbox):
    backend = "local"

    def __init__(self, task: dict, **kwargs):
        super().__init__(task, **kwargs)
        self._root: Path | None = None
        self._groups: set[int] = set()  # process groups started; killed at cleanup

    def _start(self) -> None:
        source = Path(task_field(self.task, "workspace_source"))
        if not source.is_dir():
            raise RecordError(
                f"{source} is not a directory",
                source=self.task.get("source", "task record"),
                record_id=self.instance_id,
                field="workspace_source",
            )
        log.warning(
            "run %s (%s): LOCAL sandbox, weak isolation: commands run as user %r on this "
            "machine with no CPU, memory, process or network limits; use the docker "
            "backend for agents you do not trust",
            self.run_id,
            self.instance_id,
            getpass.getuser(),
        )
        self._root = Path(tempfile.mkdtemp(prefix=f"trajhub-{self.run_id[:12]}-"))
        try:
            name = PurePosixPath(task_field(self.task, "workspace_abs_path")).name or "workspace"
            workspace = self._root / name
            shutil.copytree(source, workspace, symlinks=True)
        except BaseException:
            self.cleanup()
            raise
        self.workspace = str(workspace)
        self._start_clock()

    def _exec(self, argv, *, timeout, cwd, env) -> ExecResult:
        full_env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ} | env
        started = time.monotonic()
        # Files, not pipes: a background child holding stdout cannot make us wait.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                process = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env=full_env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
            except OSError as error:  # no such program or directory: what a shell says
                return ExecResult(127, "", f"{argv[0]}: {error}", False, time.monotonic() - started)
            self._groups.add(process.pid)
            try:
                returncode, timed_out = process.wait(timeout), False
            except subprocess.TimeoutExpired:
                _kill_group(process.pid)
                returncode, timed_out = process.wait(), True
            if not _group_alive(process.pid):
                self._groups.discard(process.pid)  # nothing left to kill at cleanup
            return ExecResult(
                128 - returncode if returncode < 0 else returncode,
                _read_capped(out, self.limits.output_bytes),
                _read_capped(err, self.limits.output_bytes),
                timed_out,
                time.monotonic() - started,
            )

    def _read_file(self, path: str) -> bytes:
        return Path(path).read_bytes()

    def _write_file(self, path: str, contents: bytes) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(contents)

    def cleanup(self) -> None:
        for group in self._groups:
            _kill_group(group)
        self._groups.clear()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None


def _kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _read_capped(file, limit: int) -> str:
    file.seek(0)
    buffer = CappedBuffer(limit)
    while chunk := file.read(1 << 16):
        buffer.write(chunk)
    return buffer.text()
