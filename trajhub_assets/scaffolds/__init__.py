"""Scaffolds: the agents trajhub runs, each behind the same three methods.

    scaffold = make_scaffold("claudecode")
    scaffold.install()  # host side, idempotent
    agent_run = scaffold.run(sandbox, task, endpoint, model_route, sampling, timeout)

A scaffold runs the task's user queries as successive turns of one conversation, with its
client pointed at the recording proxy and the run id attached to every request
(`x-trajhub-run: <run_id>`). It never knows which sandbox backend it runs in, beyond
`clients.place()` skipping the copy for the local one.

A failed agent is data: `AgentRun` with its exit code and the tail of its stderr (and
the error the client printed), logged at ERROR. A scaffold that cannot start at all (a
client that does not install, a task without queries) raises.
"""

from __future__ import annotations

import abc
import json
import logging
import time
from dataclasses import dataclass, field

import openai

from trajhub_assets.errors import RecordError
from trajhub_assets.recording.run_id import RUN_HEADER
from trajhub_assets.sandbox.base import SandboxTimeout
from trajhub_assets.scaffolds import builtin, clients

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    base_url_host: str  # the proxy's root URL (no /v1) as seen from the host
    base_url_sandbox: str  # the same proxy as seen from inside the sandbox
    api_key: str = field(repr=False)
    run_id: str


@dataclass(frozen=True)
class AgentRun:
    exit_code: int | None  # None: the agent was stopped before it exited (timeout)
    stop_reason: str
    stderr_tail: str
    final_answer: str
    version: str
    timed_out: bool


def user_queries(task: dict) -> list[str]:
    queries = task.get("user_query")
    if isinstance(queries, str):
        queries = [queries]
    if not queries or not all(isinstance(q, str) and q.strip() for q in queries):
        raise RecordError("needs a non-empty list of non-empty strings",
                          source=task.get("source", "task record"),
                          record_id=task.get("instance_id"), field="user_query")
    return queries


class Scaffold(abc.ABC):
    name: str

    @abc.abstractmethod
    def install(self) -> None:
        """Make the client available on the host (idempotent)."""

    @abc.abstractmethod
    def version(self) -> str:
        """The client's own version string, recorded with every run."""

    @abc.abstractmethod
    def run(self, sandbox, task: dict, endpoint: Endpoint, model_route: str, sampling: dict,
            timeout: float) -> AgentRun:
        """Run every user query of `task` in `sandbox`; `timeout` bounds the whole agent."""


@dataclass
class Turn:
    """What a CLI's output says about one turn."""

    final_answer: str = ""
    stop_reason: str = ""
    session_id: str | None = None
    error: str = ""  # an error the client reported in its output (e.g. an API error)


def json_lines(stdout: str):
    """The JSON objects of a CLI's line-delimited output; other lines are skipped."""
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # e.g. a line cut by the sandbox's output cap


class CliScaffold(Scaffold):
    """An agent CLI run once per user query inside the sandbox, continuing its session."""

    client: clients.Client

    def install(self) -> None:
        clients.install(self.client)

    def version(self) -> str:
        return clients.version(self.client)

    @abc.abstractmethod
    def prepare(self, sandbox, task: dict, endpoint: Endpoint, model_route: str,
                sampling: dict) -> tuple[list[str], dict[str, str]]:
        """Place the client and its settings in the sandbox: (argv prefix, environment)."""

    @abc.abstractmethod
    def turn_argv(self, task: dict, model_route: str, query: str, index: int,
                  session_id: str | None) -> list[str]:
        """Arguments after the prefix for the `index`-th user query (0-based)."""

    @abc.abstractmethod
    def parse(self, stdout: str) -> Turn: ...

    def run(self, sandbox, task, endpoint, model_route, sampling, timeout) -> AgentRun:
        queries = user_queries(task)
        version = self.version()
        deadline = time.monotonic() + timeout
        turn, stderr = Turn(stop_reason="no_turn"), ""
        try:
            prefix, env = self.prepare(sandbox, task, endpoint, model_route, dict(sampling or {}))
            for index, query in enumerate(queries):
                left = deadline - time.monotonic()
                if left <= 0:
                    return self._stopped(sandbox, turn, stderr, version, "the agent's timeout ran out")
                argv = prefix + self.turn_argv(task, model_route, query, index, turn.session_id)
                result = sandbox.exec(argv, timeout=left, env=env)
                previous, turn = turn, self.parse(result.stdout)
                turn.session_id = turn.session_id or previous.session_id
                stderr = clients.redact(result.stderr, endpoint.api_key)
                if result.timed_out:
                    return self._stopped(sandbox, turn, stderr, version,
                                         f"turn {index + 1} of {len(queries)} timed out")
                if result.returncode != 0 or turn.error:
                    detail = clients.redact("\n".join(x for x in (stderr.strip(), turn.error) if x),
                                            endpoint.api_key)
                    log.error("run %s: %s exited with %s on turn %d of %d: %s", sandbox.run_id,
                              self.name, result.returncode, index + 1, len(queries),
                              clients.tail(detail, 1000))
                    return AgentRun(result.returncode, turn.stop_reason or "error",
                                    clients.tail(detail), turn.final_answer, version, False)
        except SandboxTimeout as error:
            return self._stopped(sandbox, turn, stderr, version, str(error))
        return AgentRun(0, turn.stop_reason or "completed", clients.tail(stderr), turn.final_answer,
                        version, False)

    def _stopped(self, sandbox, turn: Turn, stderr: str, version: str, why: str) -> AgentRun:
        log.error("run %s: %s stopped: %s", sandbox.run_id, self.name, why)
        return AgentRun(None, "timeout", clients.tail(f"{stderr.strip()}\n[trajhub] {why}"),
                        turn.final_answer, version, True)


class Builtin(Scaffold):
    """The builtin agent (scaffolds/builtin.py): a loop on the host, acting through the sandbox."""

    name = "builtin"

    def install(self) -> None:
        pass  # nothing outside this package

    def version(self) -> str:
        return builtin.VERSION

    def run(self, sandbox, task, endpoint, model_route, sampling, timeout) -> AgentRun:
        user_queries(task)
        client = openai.OpenAI(base_url=endpoint.base_url_host + "/v1", api_key=endpoint.api_key,
                               default_headers={RUN_HEADER: endpoint.run_id}, timeout=timeout)
        try:
            result = builtin.run_agent(sandbox, task, client, model_route, sampling=sampling or None)
        except SandboxTimeout as error:
            log.error("run %s: builtin agent stopped: %s", sandbox.run_id, error)
            return AgentRun(None, "timeout", str(error), "", self.version(), True)
        except openai.APIError as error:  # the model call failed: the agent's crash
            log.error("run %s: builtin agent failed: %s", sandbox.run_id, error)
            return AgentRun(1, "error", clients.tail(f"{type(error).__name__}: {error}"), "",
                            self.version(), False)
        return AgentRun(0, result.stop_reason, "", result.final_answer, self.version(), False)


# The scaffolds import the types above, so they are imported (and registered) last.
from trajhub_assets.scaffolds.claudecode import ClaudeCode
from trajhub_assets.scaffolds.droid import Droid
from trajhub_assets.scaffolds.kilo import Kilo
from trajhub_assets.scaffolds.mini_swe_agent import MiniSweAgent

SCAFFOLDS: dict[str, type[Scaffold]] = {
    scaffold.name: scaffold for scaffold in (ClaudeCode, Kilo, Droid, MiniSweAgent, Builtin)}


def make_scaffold(name: str) -> Scaffold:
    if name not in SCAFFOLDS:
        raise KeyError(f"unknown scaffold {name!r}; known: {', '.join(SCAFFOLDS)}")
    return SCAFFOLDS[name]()


__all__ = [
    "RUN_HEADER",
    "SCAFFOLDS",
    "AgentRun",
    "Builtin",
    "CliScaffold",
    "Endpoint",
    "Scaffold",
    "Turn",
    "json_lines",
    "make_scaffold",
    "user_queries",
]
