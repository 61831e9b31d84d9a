"""CliScaffold: an agent CLI run in the sandbox once per user query, continuing its session
(claudecode.py, kilo.py, droid.py)."""

from __future__ import annotations

import abc
import logging
import time

from trajhub_assets.sandbox.base import SandboxTimeout
from trajhub_assets.scaffolds import AgentRun, Endpoint, Scaffold, Turn, clients, user_queries

log = logging.getLogger(__name__)


class CliScaffold(Scaffold):
    """An agent CLI run once per user query inside the sandbox, continuing its session."""

    client: clients.Client  # every CLI has one (its registry entry)

    def install(self) -> None:
        clients.install(self.client)

    def version(self) -> str:
        return clients.version(self.client)

    @abc.abstractmethod
    def prepare(
        self, sandbox, task: dict, endpoint: Endpoint, model_route: str, sampling: dict
    ) -> tuple[list[str], dict[str, str]]:
        """Place the client and its settings in the sandbox: (argv prefix, environment)."""

    @abc.abstractmethod
    def turn_argv(self, task: dict, model_route: str, query: str, index: int, session_id: str | None) -> list[str]:
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
                    return self._stopped(
                        sandbox, turn, stderr, version, f"turn {index + 1} of {len(queries)} timed out"
                    )
                if result.returncode != 0 or turn.error:
                    detail = clients.redact("\n".join(x for x in (stderr.strip(), turn.error) if x), endpoint.api_key)
                    log.error(
                        "run %s: %s exited with %s on turn %d of %d: %s",
                        sandbox.run_id,
                        self.name,
                        result.returncode,
                        index + 1,
                        len(queries),
                        clients.tail(detail, 1000),
                    )
                    return AgentRun(
                        result.returncode,
                        turn.stop_reason or "error",
                        clients.tail(detail),
                        turn.final_answer,
                        version,
                        False,
                    )
        except SandboxTimeout as error:
            return self._stopped(sandbox, turn, stderr, version, str(error))
        return AgentRun(0, turn.stop_reason or "completed", clients.tail(stderr), turn.final_answer, version, False)

    def _stopped(self, sandbox, turn: Turn, stderr: str, version: str, why: str) -> AgentRun:
        log.error("run %s: %s stopped: %s", sandbox.run_id, self.name, why)
        return AgentRun(
            None, "timeout", clients.tail(f"{stderr.strip()}\n[trajhub] {why}"), turn.final_answer, version, True
        )
