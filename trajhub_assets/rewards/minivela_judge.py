"""mini-vela's checklist judge output (results/test_scores.json) → JUDGE_CHECKS rows.

The file is {"results": [{instance_id, success, eval_result {category: {description,
checks: [{check_id, description, check_type, reasoning, result}]}}, detailed_results,
reward, binary_reward}], "summary": {...}}. mini-vela's reward is the share of checks
passed and binary_reward 1 when all pass. We recompute both under our rule (CSR, ISR):
given the task records, a check of the task's checklist that the judge left out counts
as failed; without them, the checks the file lists are the checklist.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from trajhub_assets.errors import RecordError
from trajhub_assets.rewards.judge import check_row, checklist_metrics

JUDGE_MODEL = PROMPT_VERSION = "mini-vela"


@dataclass
class MinivelaJudged:
    instance_id: str
    rows: list[dict]  # JUDGE_CHECKS rows
    reported_reward: float | None  # mini-vela's own numbers, to compare with ours
    reported_binary: int | None

    @property
    def metrics(self) -> dict:
        return checklist_metrics(self.rows)


def read_minivela_judge(path: str | os.PathLike, tasks: Mapping[str, dict] | None = None) -> list[MinivelaJudged]:
    try:
        with open(path, encoding="utf-8") as f:
            scores = json.load(f)
    except ValueError as error:
        raise RecordError(f"not JSON: {error}", source=str(path)) from error
    return minivela_judged(scores, source=str(path), tasks=tasks)


def minivela_judged(
    scores: dict, *, source: str = "mini-vela judge", tasks: Mapping[str, dict] | None = None
) -> list[MinivelaJudged]:
    """One entry per judged instance; `tasks` maps instance_id → task record."""
    results = scores.get("results") if isinstance(scores, dict) else None
    if not isinstance(results, list):
        raise RecordError("expected a list", source=source, field="results")
    judged = []
    for n, result in enumerate(results):
        instance_id = result.get("instance_id")
        if not instance_id:
            raise RecordError("missing", source=source, field=f"results[{n}].instance_id")
        evaluated = result.get("eval_result") or {}
        if not isinstance(evaluated, dict):
            raise RecordError(
                "expected an object of categories",
                source=source,
                record_id=instance_id,
                field=f"results[{n}].eval_result",
            )
        verdicts = _verdicts(evaluated, source, instance_id, n)
        task = (tasks or {}).get(instance_id)
        checklist = task["checklist"] if task is not None else evaluated
        error = None if result.get("success", True) else f"mini-vela judge failed: {result.get('error')}"
        rows = [
            check_row(
                instance_id,
                None,
                category,
                check,
                verdicts.get((category, check["check_id"])),
                error,
                judge_model=JUDGE_MODEL,
                prompt_version=PROMPT_VERSION,
            )
            for category, group in checklist.items()
            for check in group.get("checks") or []
        ]
        judged.append(MinivelaJudged(instance_id, rows, result.get("reward"), result.get("binary_reward")))
    return judged


def _verdicts(evaluated: dict, source: str, instance_id: str, n: int) -> dict[tuple[str, str], dict]:
    verdicts = {}
    for category, group in evaluated.items():
        for j, check in enumerate(group.get("checks") or []):
            field = f"results[{n}].eval_result.{category}.checks[{j}]"
            if check.get("result") not in ("success", "fail"):
                raise RecordError(
                    f"result must be 'success' or 'fail', got {check.get('result')!r}",
                    source=source,
                    record_id=instance_id,
                    field=f"{field}.result",
                )
            if not check.get("check_id"):
                raise RecordError("missing", source=source, record_id=instance_id, field=f"{field}.check_id")
            verdicts[(category, check["check_id"])] = {"result": check["result"], "reason": check.get("reasoning")}
    return verdicts
