"""Run ids: which (model, instance, attempt) an LLM call belongs to.

A run id is `f"{model_key}~{instance_id}~{attempt}~{nonce}"`: "~" never appears in model
keys or instance ids, and the nonce (8 hex chars) keeps two runs of the same attempt
apart. Every request carries it, so the proxy attributes concurrent runs without any
shared "current run" state: header `x-trajhub-run` (Claude Code: ANTHROPIC_CUSTOM_HEADERS),
else a litellm tag `trajhub_run=<id>`, else body `metadata.trajhub_run`.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from trajhub_assets.errors import RecordError

RUN_HEADER = "x-trajhub-run"
RUN_TAG_PREFIX = "trajhub_run="
_KEY = re.compile(r"^[A-Za-z0-9._:@+-]+$")  # partition keys (see partitions.py)
_NONCE = re.compile(r"^[0-9a-f]{8}$")


@dataclass(frozen=True)
class RunId:
    model_key: str
    instance: str
    attempt: int
    nonce: str

    def __str__(self) -> str:
        return f"{self.model_key}~{self.instance}~{self.attempt}~{self.nonce}"


def make_run_id(model_key: str, instance_id: str, attempt: int) -> str:
    for name, value in (("model_key", model_key), ("instance_id", instance_id)):
        if not _KEY.match(value):
            raise RecordError(
                "may only hold letters, digits and . _ : @ + -", source="run id", record_id=value, field=name
            )
    if not isinstance(attempt, int) or attempt < 0:
        raise RecordError(f"must be an integer >= 0, got {attempt!r}", source="run id", field="attempt")
    return str(RunId(model_key, instance_id, attempt, secrets.token_hex(4)))


def parse_run_id(run_id: str) -> RunId:
    parts = run_id.split("~")
    if (
        len(parts) != 4
        or not _KEY.match(parts[0])
        or not _KEY.match(parts[1])
        or not parts[2].isdigit()
        or not _NONCE.match(parts[3])
    ):
        raise RecordError(
            "expected <model_key>~<instance_id>~<attempt>~<8 hex nonce>", source="run id", record_id=run_id
        )
    return RunId(parts[0], parts[1], int(parts[2]), parts[3])


def rows_by_partition(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Rows with a `run_id`, grouped by their run's (model key, instance)."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        run = parse_run_id(row["run_id"])
        grouped.setdefault((run.model_key, run.instance), []).append(row)
    return grouped


def run_headers(run_id: str) -> dict[str, str]:
    """Extra headers for OpenAI/Anthropic-style clients."""
    return {RUN_HEADER: run_id}


def claude_code_env(run_id: str) -> dict[str, str]:
    """Claude Code sends ANTHROPIC_CUSTOM_HEADERS ("Name: value" lines) on every request."""
    return {"ANTHROPIC_CUSTOM_HEADERS": f"{RUN_HEADER}: {run_id}"}
