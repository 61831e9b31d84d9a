"""The trajectory reward: configured weights over outcome, mean step reward and checklist
pass rate; unknown components are left out visibly, never counted as 0."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trajhub_assets.config import RewardConfig
from trajhub_assets.rewards.schema import TRAJECTORY_REWARDS
from trajhub_assets.rewards.trajectory import outcome_score, trajectory_reward, trajectory_rewards

WEIGHTS = RewardConfig().trajectory_weights  # outcome 0.5, step 0.25, checklist 0.25


@pytest.mark.parametrize("outcome, expected", [
    ({"tests_passed": 4, "tests_failed": 0, "tests_total": 4, "test_exit_code": 0}, 1.0),
    ({"tests_passed": 3, "tests_failed": 1, "tests_total": 4, "test_exit_code": 1}, 0.0),
    ({"tests_passed": None, "tests_failed": None, "tests_total": None, "test_exit_code": 0}, 1.0),
    ({"tests_passed": None, "tests_failed": None, "tests_total": None, "test_exit_code": 2}, 0.0),
    ({"tests_passed": None, "tests_failed": None, "tests_total": None, "test_exit_code": None}, None),
    (None, None),
])
def test_outcome_is_all_tests_passing(outcome, expected):
    assert outcome_score(outcome) == expected


def test_all_components_known_is_the_weighted_sum():
    got = trajectory_reward(1.0, 0.6, 0.8, WEIGHTS)
    assert got["components"] == ["outcome", "step", "checklist"]
    assert got["reward"] == pytest.approx(0.5 * 1.0 + 0.25 * 0.6 + 0.25 * 0.8)


def test_unknown_components_are_left_out_and_named():
    got = trajectory_reward(None, 0.6, 0.8, WEIGHTS)  # a task without tests
    assert got["components"] == ["step", "checklist"]
    assert got["reward"] == pytest.approx((0.25 * 0.6 + 0.25 * 0.8) / 0.5)
    assert trajectory_reward(None, None, None, WEIGHTS) == {"components": [], "reward": None}
    assert trajectory_reward(0.0, 1.0, 1.0, {"outcome": 1.0, "step": 0.0, "checklist": 0.0}) == \
        {"components": ["outcome"], "reward": 0.0}


@given(st.one_of(st.none(), st.floats(0, 1)), st.one_of(st.none(), st.floats(0, 1)),
       st.one_of(st.none(), st.floats(0, 1)))
def test_reward_lies_between_its_components(outcome, step, checklist):
    got = trajectory_reward(outcome, step, checklist, WEIGHTS)
    used = [v for v in (outcome, step, checklist) if v is not None]
    if not used:
        assert got["reward"] is None
    else:
        assert min(used) - 1e-9 <= got["reward"] <= max(used) + 1e-9


def test_partition_table_from_judge_summary_and_outcomes(store):
    summary = [{"run_id": "r1", "attempt": 0, "mean_step_reward": 0.5, "csr": 1.0},
               {"run_id": "r2", "attempt": 1, "mean_step_reward": None, "csr": None}]  # judge errors
    outcomes = {"r1": {"tests_total": 2, "tests_passed": 2, "tests_failed": 0},
                "r2": {"tests_total": 2, "tests_passed": 1, "tests_failed": 1},
                "r3": {"tests_total": None, "test_exit_code": 0}}  # not judged (yet)
    table = trajectory_rewards(summary, outcomes, RewardConfig())
    rows = {r["run_id"]: r for r in table.to_pylist()}
    assert rows["r1"]["reward"] == pytest.approx(0.5 + 0.25 * 0.5 + 0.25)
    assert (rows["r1"]["weight_outcome"], rows["r1"]["weight_step"], rows["r1"]["weight_checklist"]) == \
        (0.5, 0.25, 0.25)
    assert (rows["r2"]["components"], rows["r2"]["reward"]) == (["outcome"], 0.0)
    assert (rows["r3"]["attempt"], rows["r3"]["components"], rows["r3"]["reward"]) == (None, ["outcome"], 1.0)
    store.write(TRAJECTORY_REWARDS, table, {"model": "m", "instance": "i"})
    assert store.read(TRAJECTORY_REWARDS, {"model": "m", "instance": "i"}).num_rows == 3
