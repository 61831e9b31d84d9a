"""The trajectory reward: configured weights over outcome, rule score, mean step reward and
checklist pass rate, stored with its components.

    reward = Σ_c w_c · x_c / Σ_c w_c   over the components c that are known

Components: `outcome` is 1.0 when the task's tests all pass after the run (from the
counts, else from the test command's exit code) and 0.0 otherwise: binary, because a
share of passing tests pays an agent for tests that passed before it started.
`rules` is 1 minus the rule penalties per main-agent step (the negative values of the
run's rule hits, summed, over its step count), floored at 0: 1.0 for a run no rule held
against. `step` is the judge's mean step reward, `checklist` its CSR (omitted checks failed). A
component that is unknown (no tests, a judge error) is left out and the others' weights
renormalized; `components` names the ones used, so a missing part is visible rather than
a silent 0. With the default weights summing to 1 and all components known, the reward
is the plain weighted sum.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pyarrow as pa

from trajhub_assets.config import RewardConfig
from trajhub_assets.rewards.schema import COMPONENTS, TRAJECTORY_REWARDS
from trajhub_assets.versions import trajectory_reward_version


def outcome_score(outcome: Mapping | None) -> float | None:
    """1.0 if the tests all passed after the run, 0.0 if not, None when no test ran."""
    if not outcome:
        return None
    total = outcome.get("tests_total")
    if total:
        return float((outcome.get("tests_passed") or 0) == total and not outcome.get("tests_failed"))
    code = outcome.get("test_exit_code")
    return None if code is None else float(code == 0)


def rule_score(summary_rows: Iterable[Mapping]) -> float | None:
    """1 - (rule penalties per main-agent step), floored at 0, from one run's RULE_SUMMARY rows;
    None without rows (the rules did not score the run)."""
    rows = list(summary_rows)
    if not rows:
        return None
    penalty = -sum(min(row["value"], 0.0) for row in rows)
    return max(0.0, 1.0 - penalty / max(rows[0]["n_steps"], 1))


def trajectory_reward(values: Mapping[str, float | None], weights: Mapping[str, float]) -> dict:
    """{components, reward}: the weighted mean over the known components (None if none is)."""
    used = [c for c in COMPONENTS if values.get(c) is not None and weights.get(c, 0.0) > 0]
    total = sum(weights[c] for c in used)
    reward = sum(weights[c] * values[c] for c in used) / total if used else None
    return {"components": used, "reward": reward}


def trajectory_rewards(
    judge_summary: pa.Table | Iterable[dict],
    rule_summary: pa.Table | Iterable[dict],
    outcomes: Mapping[str, Mapping | None],
    rewards: RewardConfig,
) -> pa.Table:
    """TRAJECTORY_REWARDS for one partition from its JUDGE_SUMMARY and RULE_SUMMARY rows and
    its outcomes by run_id; every run that any of them knows gets a row."""
    judged = {r["run_id"]: r for r in _rows(judge_summary)}
    ruled: dict[str, list[dict]] = {}
    for row in _rows(rule_summary):
        ruled.setdefault(row["run_id"], []).append(row)
    weights, version = rewards.trajectory_weights, trajectory_reward_version(rewards)
    out = []
    for run_id in dict.fromkeys([*judged, *ruled, *outcomes]):
        judge = judged.get(run_id, {})
        values = {
            "outcome": outcome_score(outcomes.get(run_id)),
            "rules": rule_score(ruled.get(run_id, [])),
            "step": judge.get("mean_step_reward"),
            "checklist": judge.get("csr"),
        }
        attempt = judge.get("attempt", next((r["attempt"] for r in ruled.get(run_id, [])), None))
        out.append(
            {
                "run_id": run_id,
                "attempt": attempt,
                "outcome": values["outcome"],
                "rule_score": values["rules"],
                "mean_step_reward": values["step"],
                "checklist_pass_rate": values["checklist"],
                **{f"weight_{c}": float(weights.get(c, 0.0)) for c in COMPONENTS},
                **trajectory_reward(values, weights),
                "reward_version": version,
            }
        )
    return pa.Table.from_pylist(out, schema=TRAJECTORY_REWARDS.schema)


def _rows(table: pa.Table | Iterable[dict]) -> list[dict]:
    return table.to_pylist() if isinstance(table, pa.Table) else list(table)
