"""The trajectory reward: configured weights over outcome, rule score, mean step reward and
checklist pass rate; unknown components are left out visibly, never counted as 0."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trajhub_assets.config import RewardConfig
from trajhub_assets.rewards.schema import TRAJECTORY_REWARDS
from trajhub_assets.rewards.trajectory import outcome_score, rule_score, trajectory_reward, trajectory_rewards

WEIGHTS = RewardConfig().trajectory_weights  # outcome 0.4, rules 0.1, step 0.25, checklist 0.25


@pytest.mark.parametrize(
    "outcome, expected",
    [
        ({"tests_passed": 4, "tests_failed": 0, "tests_total": 4, "test_exit_code": 0}, 1.0),
        ({"tests_passed": 3, "tests_failed": 1, "tests_total": 4, "test_exit_code": 1}, 0.0),
        ({"tests_passed": None, "tests_failed": None, "tests_total": None, "test_exit_code": 0}, 1.0),
        ({"tests_passed": None, "tests_failed": None, "tests_total": None, "test_exit_code": 2}, 0.0),
        ({"tests_passed": None, "tests_failed": None, "tests_total": None, "test_exit_code": None}, None),
        (None, None),
    ],
)
def test_outcome_is_all_tests_passing(outcome, expected):
    assert outcome_score(outcome) == expected


def values(outcome=None, rules=None, step=None, checklist=None) -> dict:
    return {"outcome": outcome, "rules": rules, "step": step, "checklist": checklist}


def test_all_components_known_is_the_weighted_sum():
    got = trajectory_reward(values(1.0, 0.5, 0.6, 0.8), WEIGHTS)
    assert got["components"] == ["outcome", "rules", "step", "checklist"]
    assert got["reward"] == pytest.approx(0.4 * 1.0 + 0.1 * 0.5 + 0.25 * 0.6 + 0.25 * 0.8)


def test_unknown_components_are_left_out_and_named():
    got = trajectory_reward(values(None, 1.0, 0.6, 0.8), WEIGHTS)  # a task without tests
    assert got["components"] == ["rules", "step", "checklist"]
    assert got["reward"] == pytest.approx((0.1 * 1.0 + 0.25 * 0.6 + 0.25 * 0.8) / 0.6)
    assert trajectory_reward(values(), WEIGHTS) == {"components": [], "reward": None}
    assert trajectory_reward(values(0.0, 1.0, 1.0, 1.0), {"outcome": 1.0, "rules": 0.0, "step": 0.0}) == {
        "components": ["outcome"],
        "reward": 0.0,
    }


def summary_rows(n_steps: int, *values: float) -> list[dict]:
    return [
        {"run_id": "r", "attempt": 0, "rule_id": f"rule{i}", "value": v, "n_steps": n_steps}
        for i, v in enumerate(values)
    ]


def test_rule_score_is_one_minus_the_penalty_per_step():
    assert rule_score(summary_rows(10, 0.0, 0.0, 1.0)) == 1.0  # a clean run; tests_passed's share is no penalty
    assert rule_score(summary_rows(10, -2.0, -0.5, 1.0)) == pytest.approx(0.75)
    assert rule_score(summary_rows(2, -5.0)) == 0.0  # floored
    assert rule_score(summary_rows(0, -0.5)) == 0.5  # no step: per run
    assert rule_score([]) is None


@given(
    st.one_of(st.none(), st.floats(0, 1)),
    st.one_of(st.none(), st.floats(0, 1)),
    st.one_of(st.none(), st.floats(0, 1)),
    st.one_of(st.none(), st.floats(0, 1)),
)
def test_reward_lies_between_its_components(outcome, rules, step, checklist):
    got = trajectory_reward(values(outcome, rules, step, checklist), WEIGHTS)
    used = [v for v in (outcome, rules, step, checklist) if v is not None]
    if not used:
        assert got["reward"] is None
    else:
        assert min(used) - 1e-9 <= got["reward"] <= max(used) + 1e-9


def test_partition_table_from_judge_and_rule_summaries_and_outcomes(store):
    summary = [
        {"run_id": "r1", "attempt": 0, "mean_step_reward": 0.5, "csr": 1.0},
        {"run_id": "r2", "attempt": 1, "mean_step_reward": None, "csr": None},
    ]  # judge errors
    rules = [
        {"run_id": "r1", "attempt": 0, "rule_id": "tool_error", "value": -1.0, "n_steps": 4},
        {"run_id": "r4", "attempt": 3, "rule_id": "tool_error", "value": 0.0, "n_steps": 4},
    ]
    outcomes = {
        "r1": {"tests_total": 2, "tests_passed": 2, "tests_failed": 0},
        "r2": {"tests_total": 2, "tests_passed": 1, "tests_failed": 1},
        "r3": {"tests_total": None, "test_exit_code": 0},
    }  # not judged (yet)
    table = trajectory_rewards(summary, rules, outcomes, RewardConfig())
    rows = {r["run_id"]: r for r in table.to_pylist()}
    assert rows["r1"]["rule_score"] == 0.75
    assert rows["r1"]["reward"] == pytest.approx(0.4 + 0.1 * 0.75 + 0.25 * 0.5 + 0.25)
    assert [rows["r1"][f"weight_{c}"] for c in ("outcome", "rules", "step", "checklist")] == [0.4, 0.1, 0.25, 0.25]
    assert (rows["r2"]["components"], rows["r2"]["reward"]) == (["outcome"], 0.0)
    assert (rows["r3"]["attempt"], rows["r3"]["components"], rows["r3"]["reward"]) == (None, ["outcome"], 1.0)
    assert (rows["r4"]["attempt"], rows["r4"]["components"], rows["r4"]["reward"]) == (3, ["rules"], 1.0)
    store.write(TRAJECTORY_REWARDS, table, {"model": "m", "instance": "i"})
    assert store.read(TRAJECTORY_REWARDS, {"model": "m", "instance": "i"}).num_rows == 4
