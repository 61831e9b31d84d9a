"""Factory's Droid CLI in exec mode, one invocation per user query; no Factory login.

    droid exec --settings <home>/trajhub-settings.json -o stream-json --skip-permissions-unsafe
               -m custom:trajhub-0 [--append-system-prompt <task's>] [--fork <session id>] -- <query>

The settings file holds one customModel: provider `generic-chat-completion-api` (OpenAI
chat completions) at the proxy's /v1, the route as its model, the run id in its
`extraHeaders`, sampling in its `extraArgs` (merged into every request body). Droid names
custom models `custom:<displayName>-<index>`. The API key is not in the file: the
settings file reads it from the environment (`${TRAJHUB_PROXY_KEY}`). A task's system
prompt is appended (Droid has no flag that replaces its prompt).

Later queries continue the conversation with `--fork <previous turn's session id>`: the
fork copies the local transcript into a new session and goes on from it. (`-s <id>` would
resume in place, but it first fetches the session from Factory's servers and fails
offline; `--input-format stream-json` needs a live stdin, which a sandbox exec has not.)

Droid runs each shell command under a supervisor script (`factory-execute-supervisor`, in
the binary) whose watcher checks every 2 s that Droid still owns it with `ps -o ppid= -p $$`,
and SIGKILLs the command's process group as soon as that fails. Where the image has no `ps`
(no procps: the demo image, many slim images) it fails at once, and most commands came back
"terminated by signal: SIGKILL". Droid puts `$HOME/.factory/bin` first on its commands' PATH,
so when the sandbox has no `ps`, a stand-in there answers that one question from /proc.
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

MODEL_ID = "custom:trajhub-0"
# Factory's servers (telemetry, cloud session sync, feature flags, usage reports): the run
# needs none of them (no login, local sessions). Pointed at a closed local port, each call
# fails at once; left alone, each costs a DNS timeout where the resolver does not answer (a
# sandbox's internal network): ~100 s a run.
NOWHERE = "http://127.0.0.1:9"
QUIET_ENV = {
    **{
        name: NOWHERE
        for name in (
            "FACTORY_API_BASE_URL",
            "FACTORY_API_BASE_URL_EU",
            "FACTORY_APP_BASE_URL",
            "FACTORY_TELEMETRY_INGEST_BASE_URL",
            "FACTORY_RELAY_BASE_URL",
            "FACTORY_WORKOS_BASE_URL",
        )
    },
    "FACTORY_DROID_AUTO_UPDATE_ENABLED": "false",
    "FACTORY_DISABLE_KEYRING": "1",
}

# Only what Droid's supervisor asks; anything else fails as a missing `ps` would.
PS_STAND_IN = r"""#!/bin/sh
# trajhub: this image has no ps; Droid's command supervisor asks it `ps -o ppid= -p PID`.
if [ "$1 $2 $3" = "-o ppid= -p" ] && [ -r "/proc/$4/stat" ]; then
  stat=$(cat "/proc/$4/stat")
  set -- ${stat##*") "}
  echo "$2"
  exit 0
fi
echo "ps: command not found" >&2
exit 127
"""
INSTALL_PS = 'command -v ps >/dev/null || { mkdir -p "$0" && printf %s "$1" > "$0/ps" && chmod 755 "$0/ps"; }'


class Droid(CliScaffold):
    def prepare(
        self, sandbox, task: dict, endpoint: Endpoint, model_route: str, sampling: dict
    ) -> tuple[list[str], dict[str, str]]:
        home = clients.agent_home(sandbox, self.name)
        droid = clients.place(sandbox, self.client, home)
        result = sandbox.exec(["sh", "-c", INSTALL_PS, f"{home}/.factory/bin", PS_STAND_IN], timeout=60)
        if not result.success:
            raise clients.ClientError(
                f"droid: cannot place a `ps` stand-in in {home}/.factory/bin: {clients.tail(result.stderr, 1000)}"
            )
        model = {
            "model": model_route,
            "displayName": "trajhub",
            "baseUrl": endpoint.base_url_sandbox + "/v1",
            "apiKey": "${TRAJHUB_PROXY_KEY}",
            "provider": "generic-chat-completion-api",
            "extraHeaders": {RUN_HEADER: endpoint.run_id},
        }
        if sampling.get("max_tokens"):
            model["maxOutputTokens"] = int(sampling["max_tokens"])
        extra = {k: v for k, v in sampling.items() if v is not None and k != "max_tokens"}
        if extra:
            model["extraArgs"] = extra
        settings = f"{home}/trajhub-settings.json"
        sandbox.write_file(settings, json.dumps({"customModels": [model]}, indent=2))
        argv = [droid, "exec", "--settings", settings, "-o", "stream-json", "--skip-permissions-unsafe", "-m", MODEL_ID]
        if task.get("system_prompt"):
            argv += ["--append-system-prompt", task["system_prompt"]]
        return argv, {"HOME": home, "TRAJHUB_PROXY_KEY": endpoint.api_key, **QUIET_ENV}

    def turn_argv(self, task: dict, model_route: str, query: str, index: int, session_id: str | None) -> list[str]:
        return (["--fork", session_id] if index and session_id else []) + ["--", query]

    def parse(self, stdout: str) -> Turn:
        turn = Turn()
        for event in json_lines(stdout):
            turn.session_id = event.get("session_id") or turn.session_id
            kind = event.get("type")
            if kind == "completion":
                turn.final_answer = event.get("finalText") or ""
                turn.stop_reason = "completed"
            elif kind == "error":
                turn.error = str(event.get("message") or event.get("error") or event)[:4000]
                turn.stop_reason = "error"
        if not turn.stop_reason:
            turn.error = turn.error or "no completion event in droid's output"
        return turn
