"""Branch points: where the config says to branch, at most so many per run and in all."""

from __future__ import annotations

from trajhub_assets.branching.points import BranchPoint, branch_points, even_steps, first_divergence
from trajhub_assets.config import BranchingConfig
from trajhub_assets.rewards.rules import build_run
from trajhub_assets_tests.test_rules import assistant, call, conversation, result


def run(run_id: str, commands: list[str]) -> list:
    """The main steps of a run that runs each command in turn, then answers."""
    messages = []
    for n, command in enumerate(commands):
        messages += [assistant("", call(f"{run_id}-{n}", "shell", command=command)), result(f"{run_id}-{n}")]
    messages.append(assistant("done"))
    return build_run([conversation(*messages, run_id=run_id, conversation_id=f"{run_id}-main")]).main_steps


def judged(run_id: str, rewards: dict[int, float]) -> list[dict]:
    return [
        {"conversation_id": f"{run_id}-main", "step_index": step, "step_reward": reward}
        for step, reward in rewards.items()
    ]


A = run("a", ["ls", "cat x.py", "pytest", "edit"])
B = run("b", ["ls", "cat x.py", "rm -rf build", "edit"])  # shares 2 steps with a
C = run("c", ["pwd", "ls"])  # differs from both at its first step


def test_low_rewards_come_lowest_first_then_rule_penalties_and_step_zero_is_never_a_point():
    config = BranchingConfig(points=["low_reward"], max_per_run=3, low_reward_below=0.5)
    rules = {"a": [{"conversation_id": "a-main", "step_index": 1, "rule_id": "repeated_tool_call", "value": -1.0}]}
    points = branch_points({"a": A}, {"a": judged("a", {0: 0.0, 2: 0.4, 3: 0.1, 4: 0.9})}, rules, config)
    assert [(p.step, p.reason.split(":")[0]) for p in points] == [
        (3, "low_reward"),
        (2, "low_reward"),
        (1, "low_reward"),
    ]
    assert "0.10 < 0.5" in points[0].reason and "repeated_tool_call" in points[2].reason


def test_divergence_is_the_longest_shared_prefix_and_a_run_that_shares_none_has_no_point():
    assert first_divergence(A, {"b": B, "c": C})[0] == 2
    assert "run b" in first_divergence(A, {"b": B, "c": C})[1]
    assert first_divergence(C, {"a": A, "b": B}) is None
    points = branch_points({"a": A, "b": B, "c": C}, {}, {}, BranchingConfig(points=["divergence"]))
    assert points == [BranchPoint("a", 2, points[0].reason), BranchPoint("b", 2, points[1].reason)]


def test_budgets_per_run_and_in_all_spread_over_the_runs():
    config = BranchingConfig(points=["even"], max_per_run=2)
    assert [s for s, _ in even_steps(5, 2)] == [2, 3] and even_steps(1, 2) == []
    points = branch_points({"a": A, "b": B, "c": C}, {}, {}, config)
    assert [(p.run_id, p.step) for p in points] == [("a", 2), ("b", 2), ("c", 1), ("a", 3), ("b", 3), ("c", 2)]
    spent = branch_points({"a": A, "b": B, "c": C}, {}, {}, config, budget=3)
    assert [(p.run_id, p.step) for p in spent] == [("a", 2), ("b", 2), ("c", 1)]  # one each, not a's two first
    assert branch_points({"a": A}, {}, {}, config, budget=0) == []


def test_points_follow_the_configured_preference_without_repeating_a_step():
    config = BranchingConfig(points=["divergence", "low_reward", "even"], max_per_run=2)
    points = branch_points({"a": A, "b": B}, {"a": judged("a", {2: 0.0, 4: 0.2})}, {}, config)
    assert [(p.step, p.reason.split(":")[0]) for p in points if p.run_id == "a"] == [
        (2, "divergence"),
        (4, "low_reward"),
    ]


def test_a_step_judged_twice_alike_is_one_point():
    # the same reward twice for one step, from two judge models: rows equal in what ranks them
    rows = [row | {"judge_model": model} for model in ("j1", "j2") for row in judged("a", {2: 0.1})]
    points = branch_points({"a": A}, {"a": rows}, {}, BranchingConfig(points=["low_reward"], max_per_run=2))
    assert [p.step for p in points] == [2]
