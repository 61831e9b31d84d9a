"""Branch points: which main steps of an instance's recorded runs to branch, within budget.

A point is a main step k >= 1 of a run (rules.build_run's main_steps: step 0 has no recorded
prefix, and resampling it is just another run). The config's `branching.points` says where
to look, in order of preference:
- low_reward: a step the judge rewarded below `low_reward_below` (lowest first), or a step a
  rule penalised (earliest first);
- divergence: the step where the run and another run of its instance first differ, after a
  prefix they share (runs that differ from their first step share nothing to branch from);
- even: `max_per_run` steps spread evenly over the run.
Each run gets at most `max_per_run` points, the first found; over the runs at most a budget
(what is left of `max_per_release`), taken round-robin (every run's first point, then every run's second) in
run id order, so a budget spreads over the runs rather than spending itself on the first.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass

from trajhub_assets.config import BranchingConfig
from trajhub_assets.pairs.pairs import message_key
from trajhub_assets.rewards.rules import Step


@dataclass(frozen=True)
class BranchPoint:
    run_id: str
    step: int  # the main step resampled; steps before it are the recorded prefix
    reason: str


def _step_number(steps: list[Step]) -> dict[tuple[str, int], int]:
    """(conversation id, its step index) -> main step number."""
    return {(s.conversation_id, s.index): number for number, s in enumerate(steps)}


def low_reward_steps(
    steps: list[Step], judge_rows: Iterable[Mapping], rule_rows: Iterable[Mapping], below: float
) -> list[tuple[int, str]]:
    """(main step, why) of the steps scored low: judged below `below` (lowest first), then penalised by a rule."""
    number = _step_number(steps)
    judged = sorted(
        (row["step_reward"], number[key])
        for row in judge_rows
        if row.get("step_reward") is not None
        and row["step_reward"] < below
        and (key := (row["conversation_id"], row["step_index"])) in number
    )
    found = [(step, f"low_reward: judge step reward {reward:.2f} < {below:g}") for reward, step in judged]
    penalised = sorted(
        (number[key], row["rule_id"])
        for row in rule_rows
        if row.get("value") is not None
        and row["value"] < 0
        and (key := (row.get("conversation_id"), row.get("step_index"))) in number
    )
    found += [(step, f"low_reward: rule {rule} fired") for step, rule in penalised]
    return found


def first_divergence(steps: list[Step], others: Mapping[str, list[Step]]) -> tuple[int, str] | None:
    """(main step, why) where the run first differs from another run after a shared prefix:
    the longest such prefix among the others."""
    keys = [message_key(s.message) for s in steps]
    best = None
    for run_id, other in sorted(others.items()):
        other_keys = [message_key(s.message) for s in other]
        shared = next((i for i, (a, b) in enumerate(zip(keys, other_keys, strict=False)) if a != b), None)
        if shared and shared < len(keys) and (best is None or shared > best[0]):
            best = (shared, f"divergence: differs from run {run_id} at this step, after {shared} shared steps")
    return best


def even_steps(n_steps: int, count: int) -> list[tuple[int, str]]:
    steps = dict.fromkeys(round((i + 1) * n_steps / (count + 1)) for i in range(count))
    return [(step, f"even: {i + 1} of {count}") for i, step in enumerate(steps) if 1 <= step < n_steps]


def branch_points(
    runs: Mapping[str, list[Step]],
    judge_rows: Mapping[str, list[Mapping]],
    rule_rows: Mapping[str, list[Mapping]],
    config: BranchingConfig,
    *,
    peers: Mapping[str, list[Step]] | None = None,
    skip: Container[tuple[str, int]] = (),
    budget: int | None = None,
) -> list[BranchPoint]:
    """The branch points of runs (run id -> main steps; their judge_steps and rule_steps rows
    by run id): at most `config.max_per_run` per run and `budget` in all (what is left of
    `config.max_per_release`; None: no limit). `peers`: the instance's other runs, which
    divergence compares with too; `skip`: (run, step) already branched, which count against
    their run's share and are not returned."""
    everyone = {**(peers or {}), **runs}
    chosen: dict[str, list[BranchPoint]] = {}
    for run_id, steps in sorted(runs.items()):
        found: list[tuple[int, str]] = []
        for kind in config.points:
            if kind == "low_reward":
                found += low_reward_steps(
                    steps, judge_rows.get(run_id, []), rule_rows.get(run_id, []), config.low_reward_below
                )
            elif kind == "divergence":
                point = first_divergence(steps, {r: s for r, s in everyone.items() if r != run_id})
                found += [point] if point else []
            else:
                found += even_steps(len(steps), config.max_per_run)
        points: dict[int, str] = {}
        for step, reason in found:
            if 1 <= step < len(steps) and step not in points and len(points) < config.max_per_run:
                points[step] = reason
        new = [(step, reason) for step, reason in points.items() if (run_id, step) not in skip]
        chosen[run_id] = [BranchPoint(run_id, step, reason) for step, reason in new]
    rounds = max((len(p) for p in chosen.values()), default=0)
    spread = [points[i] for i in range(rounds) for points in chosen.values() if i < len(points)]
    return spread if budget is None else spread[:budget]
