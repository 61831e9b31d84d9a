"""Kilo Code CLI (`kilo`, an OpenCode fork) in run mode, one invocation per user query.

    kilo run --format json --auto --agent code -m trajhub/<route> [-c] -- <query>

Its whole configuration comes from KILO_CONFIG_CONTENT: one custom provider `trajhub`
(the AI SDK's openai-compatible provider, bundled in the binary, so nothing is fetched)
whose baseURL is the proxy's /v1 and whose `headers` carry the run id; only that provider
is enabled, and the main and small (title) model are both the route. A task's system
prompt is appended to Kilo's own through `instructions` (a file in the run's HOME):
Kilo has no flag that replaces its prompt. temperature/top_p go on the `code` agent,
max_tokens on the model's output limit. Later queries add `-c` (continue the last
session; the run has a HOME of its own). One turn costs Kilo ~15 s of start-up CPU.
"""

from __future__ import annotations

import json
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

PROVIDER = "trajhub"
AGENT = "code"  # Kilo's default primary agent
FIXED_ENV = {
    # Kilo retries a failing model call without end by default; the other clients stop after 10.
    "KILO_SESSION_RETRY_LIMIT": "10",
    # Traffic that is not the agent's own model calls: off.
    "KILO_DISABLE_AUTOUPDATE": "1",
    "KILO_DISABLE_MODELS_FETCH": "1",  # models.dev catalog: unreachable offline, and not needed
    "KILO_DISABLE_SHARE": "1",
    "KILO_DISABLE_SESSION_INGEST": "1",
    "KILO_DISABLE_LSP_DOWNLOAD": "1",
    "KILO_DISABLE_CODEBASE_INDEXING": "1",
    "KILO_TELEMETRY_LEVEL": "off",
    "KILO_NO_DAEMON": "1",
}


class Kilo(CliScaffold):
    def prepare(
        self, sandbox, task: dict, endpoint: Endpoint, model_route: str, sampling: dict
    ) -> tuple[list[str], dict[str, str]]:
        home = clients.agent_home(sandbox, self.name)
        kilo = clients.place(sandbox, self.client, home)
        model = f"{PROVIDER}/{model_route}"
        config = {
            "$schema": "https://kilo.ai/config.json",
            "provider": {
                PROVIDER: {
                    "npm": "@ai-sdk/openai-compatible",
                    "name": "trajhub proxy",
                    "options": {
                        "baseURL": endpoint.base_url_sandbox + "/v1",
                        "apiKey": endpoint.api_key,
                        "headers": {RUN_HEADER: endpoint.run_id},
                    },
                    "models": {model_route: {"name": model_route, "temperature": True, "tool_call": True}},
                }
            },
            "enabled_providers": [PROVIDER],
            "model": model,
            "small_model": model,
            "autoupdate": False,
            "share": "disabled",
        }
        agent = {key: sampling[key] for key in ("temperature", "top_p") if sampling.get(key) is not None}
        if agent:
            config["agent"] = {AGENT: agent}
        if sampling.get("max_tokens"):
            config["provider"][PROVIDER]["models"][model_route]["limit"] = {
                "context": 0,
                "output": int(sampling["max_tokens"]),
            }  # 0: Kilo's "unknown" default
        ignored = sorted(k for k, v in sampling.items() if v is not None and k not in agent and k != "max_tokens")
        if ignored:
            log.warning(
                "run %s: kilo-dev has no setting for %s; set them on the proxy route",
                sandbox.run_id,
                ", ".join(ignored),
            )
        if task.get("system_prompt"):
            path = f"{home}/trajhub-system-prompt.md"
            sandbox.write_file(path, task["system_prompt"])
            config["instructions"] = [path]
        env = {"HOME": home, "KILO_CONFIG_CONTENT": json.dumps(config), **FIXED_ENV}
        return [kilo, "run", "--format", "json", "--auto", "--agent", AGENT, "-m", model], env

    def turn_argv(self, task: dict, model_route: str, query: str, index: int, session_id: str | None) -> list[str]:
        return (["-c"] if index else []) + ["--", query]

    def parse(self, stdout: str) -> Turn:
        turn, texts = Turn(), []
        for event in json_lines(stdout):
            turn.session_id = event.get("sessionID") or turn.session_id
            part = event.get("part") or {}
            kind = event.get("type")
            if kind == "step_start":
                texts = []  # the answer is the text of the last step
            elif kind == "text":
                texts.append(part.get("text") or "")
            elif kind == "step_finish":
                turn.stop_reason = part.get("reason") or turn.stop_reason
            elif kind == "error":
                error = event.get("error") or {}
                message = (error.get("data") or {}).get("message") if isinstance(error, dict) else None
                turn.error = f"{error.get('name', 'error')}: {message}" if message else json.dumps(error)
                turn.stop_reason = "error"
        turn.final_answer = "".join(texts).strip()
        if not turn.stop_reason:
            turn.error = turn.error or "no step_finish event in kilo's output"
        return turn
