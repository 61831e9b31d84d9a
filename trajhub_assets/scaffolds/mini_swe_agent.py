"""mini-swe-agent (PyPI `mini-swe-agent`): its own agent loop and `mini.yaml` config, our sandbox.

The agent runs on the host in a virtualenv of its own (the client of its registry entry), started as
`python -c <_driver's source>`. It talks to the proxy through litellm as
`openai/<route>` with `api_base=<proxy>/v1` and `extra_headers={"x-trajhub-run": <run id>}`
(its model_kwargs), sampling merged into the same kwargs. Each bash action it takes is
sent to this process as one JSON line on its stdout and run with `sandbox.exec`; the
result goes back on its stdin. So it needs nothing inside the task's image, and works
with every sandbox backend.

User queries: the first is the task of mini's instance template; each later one is
appended as a plain user message after the agent submitted, and the loop goes on.
Stops: mini's own (Submitted, LimitsExceeded, ...), with STEP_LIMIT model calls over the
whole run (mini.yaml sets no step limit, and its cost limit cannot count a proxy route's
cost, so it is off).
"""

from __future__ import annotations

import inspect
import json
import logging
import subprocess
import tempfile
import threading
import time

from trajhub_assets.sandbox.base import SandboxTimeout
from trajhub_assets.scaffolds import (
    RUN_HEADER,
    AgentRun,
    Endpoint,
    Scaffold,
    clients,
    user_queries,
)

log = logging.getLogger(__name__)

STEP_LIMIT = 100
COMMAND_TIMEOUT = 120  # seconds per bash action, as the builtin agent's


def _driver() -> None:  # pragma: no cover - runs in the client's own interpreter
    """The agent process: stdlib and minisweagent only (it runs in mini-swe-agent's venv)."""
    import json
    import os
    import sys

    import yaml
    from minisweagent import __version__, package_dir
    from minisweagent.agents.default import DefaultAgent
    from minisweagent.environments.local import LocalEnvironment
    from minisweagent.models.litellm_model import LitellmModel

    rpc = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol keeps the real stdout;
    os.dup2(2, 1)  # anything else that prints (litellm does) goes to stderr
    spec = json.loads(sys.stdin.readline())

    def call(message: dict) -> dict:
        rpc.write(json.dumps(message) + "\n")
        line = sys.stdin.readline()
        if not line:
            raise SystemExit("trajhub: the scaffold closed the channel")
        return json.loads(line)

    class SandboxEnvironment(LocalEnvironment):
        def execute(self, action, cwd="", *, timeout=None):
            output = call(
                {
                    "exec": action.get("command", ""),
                    "cwd": cwd or self.config.cwd,
                    "timeout": timeout or self.config.timeout,
                    "env": self.config.env,
                }
            )
            self._check_finished(output)  # raises Submitted on COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT
            return output

    class FollowUpAgent(DefaultAgent):
        """run() again continues the conversation, with the new query as a plain user message."""

        history = None

        def run(self, task="", **kwargs):
            self.history = [m for m in self.messages if m.get("role") != "exit"] or None
            return super().run(task, **kwargs)

        def add_messages(self, *messages):
            if self.history is not None and not self.messages:  # run() has just reset them
                self.messages.extend(self.history)
                self.history = None
                messages = (self.model.format_message(role="user", content=self.extra_template_vars["task"]),)
            return super().add_messages(*messages)

    config = yaml.safe_load((package_dir / "config" / "mini.yaml").read_text())
    agent_config = config["agent"] | {"step_limit": spec["step_limit"], "cost_limit": 0}
    if spec["system_prompt"]:
        agent_config["system_template"] = "{% raw %}" + spec["system_prompt"] + "{% endraw %}"
    model = LitellmModel(
        **(
            config["model"]
            | {
                "model_name": spec["model_name"],
                "cost_tracking": "ignore_errors",
                "model_kwargs": config["model"].get("model_kwargs", {}) | spec["model_kwargs"],
            }
        )
    )
    environment = SandboxEnvironment(
        **(config["environment"] | {"cwd": spec["cwd"], "timeout": spec["command_timeout"]})
    )
    agent = FollowUpAgent(model, environment, **agent_config)
    result = {}
    for query in spec["queries"]:
        result = agent.run(query)
        if result.get("exit_status") != "Submitted":
            break
    said = [m.get("content") for m in agent.messages if m.get("role") == "assistant" and m.get("content")]
    rpc.write(
        json.dumps(
            {
                "done": {
                    "exit_status": result.get("exit_status", ""),
                    "version": __version__,
                    "steps": agent.n_calls,
                    "final_answer": (result.get("submission") or "").strip() or (said[-1] if said else ""),
                }
            }
        )
        + "\n"
    )


class MiniSweAgent(Scaffold):
    def install(self) -> None:
        clients.install(self.client)

    def version(self) -> str:
        return clients.version(self.client)

    def run(
        self, sandbox, task: dict, endpoint: Endpoint, model_route: str, sampling: dict, timeout: float
    ) -> AgentRun:
        queries, version = user_queries(task), self.version()
        deadline = time.monotonic() + timeout
        spec = {
            "queries": queries,
            "system_prompt": task.get("system_prompt") or "",
            "model_name": f"openai/{model_route}",
            "model_kwargs": {k: v for k, v in (sampling or {}).items() if v is not None}
            | {
                "api_base": endpoint.base_url_host + "/v1",
                "api_key": endpoint.api_key,
                "extra_headers": {RUN_HEADER: endpoint.run_id},
            },
            "cwd": sandbox.workspace,
            "command_timeout": COMMAND_TIMEOUT,
            "step_limit": STEP_LIMIT,
        }
        config_dir = clients.cache_dir() / "mini-swe-agent-config"  # empty: no user .env is read
        config_dir.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(config_dir),
            "MSWEA_SILENT_STARTUP": "1",
            "MSWEA_GLOBAL_CONFIG_DIR": str(config_dir),
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
        source = inspect.getsource(_driver) + "\n_driver()\n"
        expired = threading.Event()
        with tempfile.TemporaryFile() as stderr:
            agent = subprocess.Popen(
                [str(clients.install(self.client)), "-c", source],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
            watchdog = threading.Timer(timeout, lambda: (expired.set(), agent.kill()))
            watchdog.start()
            try:
                done, why = self._serve(agent, sandbox, spec, deadline)
            except BaseException:
                agent.kill()
                raise
            finally:
                watchdog.cancel()
                returncode = agent.wait()
            stderr.seek(0)
            stderr_text = clients.redact(stderr.read().decode(errors="replace"), endpoint.api_key)
        answer = (done or {}).get("final_answer", "")
        if why or expired.is_set():
            why = why or f"the agent's timeout of {timeout:g}s ran out"
            log.error("run %s: mini-swe-agent stopped: %s", sandbox.run_id, why)
            return AgentRun(None, "timeout", clients.tail(f"{stderr_text}\n[trajhub] {why}"), answer, version, True)
        if returncode != 0 or done is None:
            log.error(
                "run %s: mini-swe-agent exited with %s: %s", sandbox.run_id, returncode, clients.tail(stderr_text, 1000)
            )
            return AgentRun(
                returncode, "error", clients.tail(stderr_text or "no result from the agent"), answer, version, False
            )
        return AgentRun(0, done["exit_status"], clients.tail(stderr_text), answer, version, False)

    def _serve(self, agent, sandbox, spec: dict, deadline: float) -> tuple[dict | None, str]:
        """Answer the agent's commands until it ends: (its result, why it was stopped)."""
        done = None
        try:
            agent.stdin.write(json.dumps(spec) + "\n")
            agent.stdin.flush()
            for line in agent.stdout:
                message = json.loads(line)
                if "done" in message:
                    done = message["done"]
                    continue
                agent.stdin.write(json.dumps(self._exec(sandbox, message, deadline)) + "\n")
                agent.stdin.flush()
        except BrokenPipeError:
            pass  # the agent died; its exit code and stderr say why
        except SandboxTimeout as error:
            agent.kill()
            return done, str(error)
        return done, ""

    @staticmethod
    def _exec(sandbox, request: dict, deadline: float) -> dict:
        """One bash action, answered the way mini's LocalEnvironment would (stderr into stdout)."""
        command, timeout = request["exec"], float(request["timeout"])
        left = deadline - time.monotonic()
        if left <= 0:
            raise SandboxTimeout(f"run {sandbox.run_id}: the agent's timeout ran out")
        result = sandbox.exec(
            f"{{ {command}\n}} 2>&1", cwd=request["cwd"], env=request["env"], timeout=min(timeout, left)
        )
        if result.timed_out:
            return {
                "output": result.stdout,
                "returncode": -1,
                "exception_info": f"An error occurred while executing the command: Command "
                f"'{command}' timed out after {timeout:g} seconds",
            }
        return {"output": result.stdout + result.stderr, "returncode": result.returncode, "exception_info": ""}
