"""What the Dagster UI shows of the rewards: hits per rule, rewards per run and per model.

Apart from rules.py and trajectory.py, whose code is their assets' code version: how a
result is shown decides none of it.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

REWARDS_SHOWN = ("run_id", "attempt", "outcome", "rule_score", "mean_step_reward", "checklist_pass_rate", "reward")


def hits_per_rule(summary: pa.Table) -> list[dict]:
    """A partition's RULE_SUMMARY per rule: hits, runs hit and summed value (rules that never
    fired too: that they did not is worth seeing)."""
    by_rule: dict[str, dict] = {}
    for row in summary.to_pylist():
        rule = by_rule.setdefault(row["rule_id"], {"rule": row["rule_id"], "hits": 0, "runs_hit": 0, "value": 0.0})
        rule.update(
            hits=rule["hits"] + row["hits"],
            runs_hit=rule["runs_hit"] + (row["hits"] > 0),
            value=round(rule["value"] + row["value"], 6),
        )
    return sorted(by_rule.values(), key=lambda r: (-r["hits"], r["rule"]))


def reward_stats(rewards: Iterable[tuple[str, float | None]]) -> list[dict]:
    """Per model, from (model, reward) pairs: runs, runs with a reward, and its mean, min
    and max (None where no run has one)."""
    by_model: dict[str, list[float | None]] = {}
    for model, reward in rewards:
        by_model.setdefault(model, []).append(reward)
    stats = []
    for model, values in by_model.items():
        known = [v for v in values if v is not None]
        stats.append(
            {
                "model": model,
                "runs": len(values),
                "rewarded": len(known),
                "reward_mean": round(sum(known) / len(known), 4) if known else None,
                "reward_min": round(min(known), 4) if known else None,
                "reward_max": round(max(known), 4) if known else None,
            }
        )
    return stats


def rewards_preview(table: pa.Table) -> list[dict]:
    """One row per run of a TRAJECTORY_REWARDS table: the components and the reward."""
    return [{c: round(r[c], 4) if isinstance(r[c], float) else r[c] for c in REWARDS_SHOWN} for r in table.to_pylist()]
