"""The trajectory reward: configured weights over outcome, mean step reward and checklist
pass rate, stored with its components.

    reward = Σ_c w_c · x_c / Σ_c w_c   over the components c that are known

Components: `outcome` is 1.0 when the task's tests all pass after the run (from the
counts, else from the test command's exit code) and 0.0 otherwise: binary, because a
share of passing tests pays an agent for tests that passed before it started.
`step` is the judge's mean step reward, `checklist` its CSR (omitted checks failed). A
component that is unknown (no tests, a judge error) is left out and the others' weights
renormalized; `components` names the ones used, so a missing part is visible rather than
a silent 0. With the default weights summing to 1 and all components known, the reward
is the plain weighted sum.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pyarrow as pa

from trajhub_assets.config import RewardConfig
from trajhub_assets.rewards.schema import TRAJECTORY_REWARDS

COMPONENTS = ("outcome", "step", "checklist")


def outcome_score(outcome: Mapping | None) -> float | None:
    """1.0 if the tests all passed after the run, 0.0 if not, None when no test ran."""
    if not outcome:
        return None
    total = outcome.get("tests_total")
    if total:
        return float((outcome.get("tests_passed") or 0) == total and not outcome.get("tests_failed"))
    code = outcome.get("test_exit_code")
    return None if code is None else float(code == 0)


def trajectory_reward(outcome: float | None, mean_step_reward: float | None,
                      checklist_pass_rate: float | None, weights: Mapping[str, float]) -> dict:
    """{components, reward}: the weighted mean over the known components (None if none is)."""
    values = {"outcome": outcome, "step": mean_step_reward, "checklist": checklist_pass_rate}
    used = [c for c in COMPONENTS if values[c] is not None and weights.get(c, 0.0) > 0]
    total = sum(weights[c] for c in used)
    reward = sum(weights[c] * values[c] for c in used) / total if used else None
    return {"components": used, "reward": reward}


def trajectory_rewards(judge_summary: pa.Table | Iterable[dict], outcomes: Mapping[str, Mapping | None],
                       rewards: RewardConfig) -> pa.Table:
    """TRAJECTORY_REWARDS for one partition from its JUDGE_SUMMARY rows and outcomes by
    run_id; a run with an outcome but no judge row is scored on its outcome alone."""
    rows = judge_summary.to_pylist() if isinstance(judge_summary, pa.Table) else list(judge_summary)
    runs = [(r["run_id"], r.get("attempt"), r.get("mean_step_reward"), r.get("csr")) for r in rows]
    judged = {r[0] for r in runs}
    runs += [(run_id, None, None, None) for run_id in outcomes if run_id not in judged]
    weights = rewards.trajectory_weights
    out = []
    for run_id, attempt, step, checklist in runs:
        outcome = outcome_score(outcomes.get(run_id))
        out.append({"run_id": run_id, "attempt": attempt, "outcome": outcome, "mean_step_reward": step,
                    "checklist_pass_rate": checklist,
                    **{f"weight_{c}": float(weights.get(c, 0.0)) for c in COMPONENTS},
                    **trajectory_reward(outcome, step, checklist, weights)})
    return pa.Table.from_pylist(out, schema=TRAJECTORY_REWARDS.schema)
