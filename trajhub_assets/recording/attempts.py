"""One attempt of one (model, instance): a sandbox, a scaffold, the outcome.

The agent's calls go through the proxy, which records them under the attempt's run id;
this module only starts the run and describes how it ended. A run that fails (the
agent crashed, the sandbox would not start, the clock ran out) is a row with its error,
not an exception: the other attempts of the batch go on, and the calls recorded so far
are kept.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass

from trajhub_assets.config import ModelConfig, SandboxConfig
from trajhub_assets.errors import TrajhubError
from trajhub_assets.recording.run_id import make_run_id
from trajhub_assets.recording.schema import RUNS
from trajhub_assets.sandbox import Limits, collect_outcome, make_sandbox
from trajhub_assets.scaffolds import Endpoint, make_scaffold

log = logging.getLogger(__name__)

# The agent gets the run's budget less what the tests may need afterwards.
TEST_BUDGET_SHARE = 0.25


@dataclass(frozen=True)
class Proxy:
    """Where the agent's client sends its calls."""

    url_from_host: str
    url_from_sandbox: str
    key: str


def run_attempt(
    task: dict, model: ModelConfig, attempt: int, proxy: Proxy, sandbox: SandboxConfig, run_id: str | None = None
) -> dict:
    """Run `task` once with `model`'s scaffold; return its `runs` row. `run_id`: a given
    id (a replay's), else a new one."""
    run_id = run_id or make_run_id(model.key, task["instance_id"], attempt)
    row = {field: None for field in RUNS.schema.names} | {
        "run_id": run_id,
        "attempt": attempt,
        "model_name": model.name,
        "route": model.route,
        "scaffold": model.scaffold,
        "backend": sandbox.backend,
        "started_at": time.time(),
        "test_command": task.get("test_command"),
        "timed_out": False,
        "resolved": False,
    }
    started = time.monotonic()
    try:
        scaffold = make_scaffold(model.scaffold)
        row["scaffold_version"] = scaffold.version()
        limits = Limits(cpus=sandbox.cpus, memory=sandbox.memory, pids=sandbox.pids, run_timeout=sandbox.timeout_s)
        with make_sandbox(
            task,
            backend=sandbox.backend,
            run_id=run_id,
            limits=limits,
            network=sandbox.network,
            docker_host=sandbox.docker_host,
        ) as box:
            endpoint = Endpoint(
                base_url_host=proxy.url_from_host,
                base_url_sandbox=proxy.url_from_sandbox if sandbox.backend == "docker" else proxy.url_from_host,
                api_key=proxy.key,
                run_id=run_id,
            )
            agent = scaffold.run(
                box, task, endpoint, model.route, _sampling(model), timeout=sandbox.timeout_s * (1 - TEST_BUDGET_SHARE)
            )
            row |= {
                "stop_reason": agent.stop_reason,
                "agent_exit_code": agent.exit_code,
                "agent_stderr_tail": agent.stderr_tail,
                "final_answer": agent.final_answer,
                "scaffold_version": agent.version,
                "timed_out": agent.timed_out,
            }
            outcome = collect_outcome(box, task)
            row |= {
                key: getattr(outcome, key)
                for key in ("test_exit_code", "tests_passed", "tests_failed", "tests_total", "test_output_tail", "diff")
            }
            row |= {
                "resolved": outcome.resolved,
                "timed_out": row["timed_out"] or outcome.timed_out,
                "error": _crash(model.scaffold, agent) or outcome.error,
            }
    except TrajhubError as error:
        log.error("run %s failed: %s", run_id, error)
        row["error"] = f"{type(error).__name__}: {error}"
    except Exception as error:  # a bug or a client crash: still a row, with where it happened
        log.exception("run %s failed", run_id)
        row["error"] = "".join(traceback.format_exception_only(error)).strip()
    row["run_seconds"] = time.monotonic() - started
    return row


def _crash(scaffold: str, agent) -> str | None:
    """Why the agent crashed (it exited non-zero), or None. Its calls and the tests that ran
    afterwards are still kept; a timeout is an outcome (`timed_out`), not a crash."""
    if agent.exit_code in (0, None):
        return None
    last = (agent.stderr_tail or "").strip().splitlines()[-1:] or ["no output on stderr"]
    return f"the agent ({scaffold}) exited with {agent.exit_code}: {last[0][:500]}"


def _sampling(model: ModelConfig) -> dict:
    params = {k: v for k, v in model.sampling.model_dump(exclude={"extra"}).items() if v is not None}
    return params | model.sampling.extra


RUNS_SHOWN = ("run_id", "attempt", "stop_reason", "resolved", "tests_passed", "tests_total", "error")


def runs_summary(rows: list[dict], usages: list[dict]) -> dict:
    """What one partition's runs came to: counts, and tokens and cost from each run's
    recording_usage."""
    return {
        "runs": len(rows),
        "failed": sum(r["error"] is not None for r in rows),
        "resolved": sum(bool(r["resolved"]) for r in rows),
        "tokens_in": int(sum(u.get("tokens_in", 0) for u in usages)),
        "tokens_out": int(sum(u.get("tokens_out", 0) for u in usages)),
        "cost_usd": round(sum(u.get("cost_usd", 0.0) for u in usages), 6),
    }


def runs_preview(rows: list[dict]) -> list[dict]:
    """One row per run for the UI: how it stopped, its tests, its error."""
    return [{column: row[column] for column in RUNS_SHOWN} for row in rows]
