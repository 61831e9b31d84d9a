"""The sandbox interface every backend implements, and what is collected after a run.

Like Inspect AI's SandboxEnvironment: a few methods (exec, read_file, write_file,
cleanup) and a context manager. Scaffolds and assets only see `Sandbox`; whether it is
a Docker container or a local temporary directory is configuration.

One clock rules a sandbox: `Limits.run_timeout` counts from start to the end of
`collect_outcome` (agent and tests together). Every exec timeout is cut to the time
left; once it is spent, each call raises SandboxTimeout.
"""

from __future__ import annotations

import abc
import logging
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Self

from trajhub_assets.errors import RecordError, TrajhubError

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """trajhub's cache on this host ($TRAJHUB_CACHE): the demo image's root file system, locks."""
    return Path(os.environ.get("TRAJHUB_CACHE") or Path.home() / ".cache" / "trajhub")


class SandboxError(TrajhubError):
    """A sandbox could not be started, used or removed."""


class SandboxTimeout(SandboxError):
    """The run's wall-clock limit is spent; the sandbox no longer runs commands."""


@dataclass(frozen=True)
class Limits:
    cpus: float = 2.0
    memory: str = "4g"  # Docker syntax; swap is not allowed beyond it
    pids: int = 512
    run_timeout: float = 1800.0  # whole sandbox life, agent and tests
    exec_timeout: float = 600.0  # default for one exec
    output_bytes: int = 1_000_000  # per stream and exec; the middle is dropped past it


@dataclass(frozen=True)
class ExecResult:
    returncode: int  # 128+N when killed by signal N, as a shell reports it
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float

    @property
    def success(self) -> bool:
        return self.returncode == 0 and not self.timed_out


class CappedBuffer:
    """Keeps the first and last half of `limit` bytes: heads show the command, tails the verdict."""

    def __init__(self, limit: int):
        self.half, self.head, self.tail, self.dropped = limit // 2, bytearray(), bytearray(), 0

    def write(self, data: bytes) -> None:
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        self.tail += data
        if len(self.tail) > self.half:
            excess = len(self.tail) - self.half
            self.dropped += excess
            del self.tail[:excess]

    def text(self) -> str:
        middle = f"\n[trajhub: {self.dropped} bytes of output dropped]\n" if self.dropped else ""
        return self.head.decode(errors="replace") + middle + self.tail.decode(errors="replace")


# Run inside the workspace by every backend: the initial state becomes a commit so the
# final diff is one command. Caches that tests leave behind are excluded from the diff.
GIT_BASELINE = (
    "git init -q . && "
    "printf '__pycache__/\\n*.pyc\\n.pytest_cache/\\n' >> .git/info/exclude && "
    "git add -A && "
    "git -c user.name=trajhub -c user.email=trajhub@localhost -c commit.gpgsign=false "
    "commit -q --no-verify --allow-empty -m 'trajhub: initial workspace'"
)
# Staging makes new files part of the diff; --binary keeps the patch appliable.
GIT_DIFF = "git add -A && git diff --cached --binary HEAD"


def task_field(task: dict, field: str) -> str:
    value = task.get(field)
    if not isinstance(value, str) or not value:
        raise RecordError(
            "the sandbox needs this field",
            source=task.get("source", "task record"),
            record_id=task.get("instance_id"),
            field=field,
        )
    return value


class Sandbox(abc.ABC):
    """One run's isolated workspace. Use as `with make_sandbox(...) as sandbox:`."""

    backend: str

    def __init__(self, task: dict, *, run_id: str | None = None, limits: Limits = Limits()):
        self.task = task
        self.instance_id = task_field(task, "instance_id")
        self.run_id = run_id or uuid.uuid4().hex
        self.limits = limits
        self.workspace = ""  # absolute path of the workspace inside the sandbox, set by start()
        self.has_git_baseline = False
        self._started_at: float | None = None

    # -- what each backend provides ------------------------------------------------
    @abc.abstractmethod
    def _start(self) -> None:
        """Create the sandbox with the workspace in place and set `self.workspace`.

        Must leave nothing behind when it raises. Calls `self._start_clock()` when the
        sandbox begins to run.
        """

    @abc.abstractmethod
    def _exec(self, argv: list[str], *, timeout: float, cwd: str, env: dict[str, str]) -> ExecResult: ...

    @abc.abstractmethod
    def _read_file(self, path: str) -> bytes: ...

    @abc.abstractmethod
    def _write_file(self, path: str, contents: bytes) -> None: ...

    @abc.abstractmethod
    def cleanup(self) -> None:
        """Remove the sandbox and everything it started. Safe to call twice."""

    # -- the interface -------------------------------------------------------------
    def start(self) -> Self:
        self._start()
        try:
            baseline = self.exec(GIT_BASELINE, timeout=120)
        except BaseException:
            self.cleanup()
            raise
        self.has_git_baseline = baseline.success
        if not baseline.success:
            log.warning(
                "run %s: no git baseline in %s (%s); no diff will be recorded",
                self.run_id,
                self.workspace,
                (baseline.stderr or baseline.stdout)[-300:],
            )
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.cleanup()
        except Exception:
            if exc is None:
                raise
            log.exception("run %s: cleanup failed while handling %r", self.run_id, exc)

    def exec(
        self,
        cmd: str | list[str],
        *,
        timeout: float | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> ExecResult:
        """Run a command; a string runs with `sh -c`. Relative cwd is taken from the workspace.

        A command still running at its timeout is killed with its children and comes back
        with timed_out=True; its output so far is kept.
        """
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        timeout = min(timeout or self.limits.exec_timeout, self._time_left())
        return self._exec(argv, timeout=timeout, cwd=self.resolve(cwd or "."), env=env or {})

    def read_file(self, path: str, *, text: bool = True) -> str | bytes:
        """Raises FileNotFoundError when the file is not there."""
        self._time_left()
        data = self._read_file(self.resolve(path))
        return data.decode() if text else data

    def write_file(self, path: str, contents: str | bytes) -> None:
        """Creates missing parent directories."""
        self._time_left()
        self._write_file(self.resolve(path), contents.encode() if isinstance(contents, str) else contents)

    def resolve(self, path: str) -> str:
        return str(PurePosixPath(self.workspace, path))  # an absolute path wins

    @property
    def seconds(self) -> float:
        return 0.0 if self._started_at is None else time.monotonic() - self._started_at

    @property
    def timed_out(self) -> bool:
        return self._started_at is not None and self.seconds >= self.limits.run_timeout

    def _start_clock(self) -> None:
        self._started_at = time.monotonic()

    def _time_left(self) -> float:
        if self._started_at is None:
            raise SandboxError(f"run {self.run_id}: sandbox used before start() (use it as a context manager)")
        left = self.limits.run_timeout - self.seconds
        if left <= 0:
            raise SandboxTimeout(
                f"run {self.run_id} ({self.instance_id}): wall-clock limit of {self.limits.run_timeout:g}s reached"
            )
        return left


# -- after the agent stops -----------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    instance_id: str
    run_id: str
    backend: str
    diff: str | None  # git diff of the workspace against its initial state, new files included
    diff_exit_code: int | None
    test_command: str | None
    test_exit_code: int | None
    tests_passed: int | None  # counts parsed from unittest / pytest summaries; None: none found
    tests_failed: int | None  # failures + errors
    tests_total: int | None  # passed + failed; skipped tests are not counted
    test_output_tail: str | None
    test_seconds: float | None
    test_timed_out: bool
    run_seconds: float  # sandbox start to the end of collection
    timed_out: bool  # the run's wall clock or the test command's timeout ran out
    error: str | None

    @property
    def resolved(self) -> bool:
        return self.test_exit_code == 0 and not self.timed_out and bool(self.tests_total) and self.tests_failed == 0

    def to_dict(self) -> dict:
        return asdict(self)


OUTPUT_TAIL_CHARS = 4000

_UNITTEST_RAN = re.compile(r"^Ran (\d+) tests? in ", re.M)
_UNITTEST_VERDICT = re.compile(r"^(?:OK|FAILED)(?: \(([^)]*)\))?\s*$", re.M)
_PYTEST_SUMMARY = re.compile(r"^=*\s*((?:\d+ [a-z]+(?:, )?)+) in [\d.]+s\b.*$", re.M)
_PYTEST_NO_TESTS = re.compile(r"^=*\s*no tests ran in [\d.]+s", re.M)


def parse_test_counts(output: str) -> tuple[int, int, int] | None:
    """(passed, failed, total) from unittest and pytest summaries, summed over every run seen."""
    passed = failed = 0
    found = False
    for ran, verdict in zip(_UNITTEST_RAN.finditer(output), _UNITTEST_VERDICT.finditer(output), strict=False):
        found = True
        counts = {
            k.strip(): int(v)
            for k, v in (part.split("=") for part in (verdict.group(1) or "").split(",") if "=" in part)
        }
        bad = counts.get("failures", 0) + counts.get("errors", 0) + counts.get("unexpected successes", 0)
        total = int(ran.group(1)) - counts.get("skipped", 0)
        passed, failed = passed + total - bad, failed + bad
    for summary in _PYTEST_SUMMARY.finditer(output):
        found = True
        counts = {word: int(n) for n, word in re.findall(r"(\d+) ([a-z]+)", summary.group(1))}
        passed += counts.get("passed", 0) + counts.get("xfailed", 0)
        failed += counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    found = found or bool(_PYTEST_NO_TESTS.search(output))
    return (passed, failed, passed + failed) if found else None


def collect_outcome(sandbox: Sandbox, task: dict, *, test_timeout: float = 600.0) -> Outcome:
    """Take the final diff, then run the task's test command (when it has one)."""
    diff = diff_exit_code = test_exit_code = test_output = test_seconds = None
    counts = None
    test_timed_out, error = False, None
    test_command = task.get("test_command") or None
    try:
        if sandbox.has_git_baseline:
            result = sandbox.exec(GIT_DIFF, timeout=120)
            diff_exit_code = result.returncode
            if result.success:
                diff = result.stdout
            else:
                error = f"git diff failed: {result.stderr[-500:]}"
        if test_command:
            # A fresh bytecode cache: a .pyc left by an earlier run can look current after
            # a same-size edit in the same second, and tests would run the old code.
            pycache = sandbox.resolve(f"../.trajhub-pycache-{uuid.uuid4().hex[:8]}")
            # One stream keeps the order of the runner's lines; braces keep `a; b` whole.
            result = sandbox.exec(
                f"{{ {test_command}\n}} 2>&1", timeout=test_timeout, env={"PYTHONPYCACHEPREFIX": pycache}
            )
            test_exit_code, test_seconds = result.returncode, result.seconds
            test_timed_out = result.timed_out
            test_output = result.stdout[-OUTPUT_TAIL_CHARS:]
            counts = parse_test_counts(result.stdout)
    except SandboxTimeout as timeout:
        error = str(timeout)
    passed, failed, total = counts or (None, None, None)
    return Outcome(
        instance_id=sandbox.instance_id,
        run_id=sandbox.run_id,
        backend=sandbox.backend,
        diff=diff,
        diff_exit_code=diff_exit_code,
        test_command=test_command,
        test_exit_code=test_exit_code,
        tests_passed=passed,
        tests_failed=failed,
        tests_total=total,
        test_output_tail=test_output,
        test_seconds=test_seconds,
        test_timed_out=test_timed_out,
        run_seconds=sandbox.seconds,
        timed_out=test_timed_out or sandbox.timed_out,
        error=error,
    )
