"""Claude Code (the `claude` CLI) in print mode, one invocation per user query.

    claude -p --output-format stream-json --verbose --model <route>
           --dangerously-skip-permissions [--system-prompt <task's>] [-c] -- <query>

Later queries add `-c` (continue the most recent conversation in this directory: the run
has a HOME of its own, so that is this run's conversation). Every model the CLI may pick
(main, small/fast, the opus/sonnet/haiku aliases, subagents) is the proxy route, so every
call lands on the route being measured. The run id rides on every request through
ANTHROPIC_CUSTOM_HEADERS. As root, `--dangerously-skip-permissions` needs IS_SANDBOX=1.

Claude Code has no sampling flags: `max_tokens` becomes CLAUDE_CODE_MAX_OUTPUT_TOKENS; set
temperature/top_p on the proxy route (its litellm_params) instead.
"""

from __future__ import annotations

import logging

from trajhub_assets.scaffolds import (
    RUN_HEADER,
    Endpoint,
    Turn,
    clients,
    json_lines,
)
from trajhub_assets.scaffolds.cli_scaffold import CliScaffold

log = logging.getLogger(__name__)

# Traffic that is not the agent's own model calls: off, so the proxy sees only the run.
QUIET_ENV = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",  # telemetry, error reports, updates
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
    "CLAUDE_CODE_DISABLE_TERMINAL_TITLE": "1",
}


class ClaudeCode(CliScaffold):
    def prepare(
        self, sandbox, task: dict, endpoint: Endpoint, model_route: str, sampling: dict
    ) -> tuple[list[str], dict[str, str]]:
        home = clients.agent_home(sandbox, self.name)
        claude = clients.place(sandbox, self.client, home)
        env = {
            "HOME": home,
            "IS_SANDBOX": "1",
            "ANTHROPIC_BASE_URL": endpoint.base_url_sandbox,
            "ANTHROPIC_AUTH_TOKEN": endpoint.api_key,  # sent as `Authorization: Bearer`
            "ANTHROPIC_CUSTOM_HEADERS": f"{RUN_HEADER}: {endpoint.run_id}",
            "ANTHROPIC_MODEL": model_route,
            "ANTHROPIC_SMALL_FAST_MODEL": model_route,
            "ANTHROPIC_DEFAULT_OPUS_MODEL": model_route,
            "ANTHROPIC_DEFAULT_SONNET_MODEL": model_route,
            "ANTHROPIC_DEFAULT_HAIKU_MODEL": model_route,
            "CLAUDE_CODE_SUBAGENT_MODEL": model_route,
            **QUIET_ENV,
        }
        if sampling.get("max_tokens"):
            env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] = str(sampling["max_tokens"])
        ignored = sorted(k for k, v in sampling.items() if v is not None and k != "max_tokens")
        if ignored:
            log.warning(
                "run %s: claudecode has no flag for %s; set them on the proxy route", sandbox.run_id, ", ".join(ignored)
            )
        return [claude], env

    def turn_argv(self, task: dict, model_route: str, query: str, index: int, session_id: str | None) -> list[str]:
        argv = [
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--model",
            model_route,
            "--dangerously-skip-permissions",
        ]
        if task.get("system_prompt"):
            argv += ["--system-prompt", task["system_prompt"]]
        return argv + (["-c"] if index else []) + ["--", query]  # a query may start with "-"

    def parse(self, stdout: str) -> Turn:
        turn = Turn()
        for event in json_lines(stdout):
            turn.session_id = event.get("session_id") or turn.session_id
            if event.get("type") == "result":
                turn.final_answer = event.get("result") or ""
                turn.stop_reason = event.get("terminal_reason") or event.get("subtype") or ""
                if event.get("is_error"):
                    turn.error = turn.final_answer or f"claude reported an error ({turn.stop_reason})"
        if not turn.stop_reason:
            turn.error = "no result event in claude's output"
        return turn
