"""The blocking checks, each on real data that passes and on a copy broken the way it guards against."""

import copy

import pyarrow as pa
import pytest
from dagster import AssetKey

from trajhub_assets import checks
from trajhub_assets.definitions import defs
from trajhub_assets.interchange.minivela import read_minivela
from trajhub_assets.merge.merge import merge_calls
from trajhub_assets.pairs.schema import PREFERENCE_PAIRS
from trajhub_assets.recording.schema import RAW_CALLS, RUNS
from trajhub_assets.rewards.schema import JUDGE_STEPS, JUDGE_SUMMARY, RULE_STEPS, RULE_SUMMARY, TRAJECTORY_REWARDS
from trajhub_assets_tests.shared_data import MINIVELA


@pytest.fixture(scope="module")
def conversations():
    calls = read_minivela(MINIVELA / "raw_benchmark-md-emoji-test-001.jsonl", run_id="mv-run")
    return merge_calls(calls, run_id="mv-run", model="m", instance="i", attempt=0)


def table(spec, rows):
    return pa.Table.from_pylist([{f: None for f in spec.schema.names} | row for row in rows], schema=spec.schema)


def test_every_check_is_blocking_and_attached_to_its_asset():
    graph = defs.resolve_asset_graph()
    wanted = {
        "raw_trajectories": {"every_run_has_calls", "no_credentials"},
        "merged_trajectories": {"generation_flags_consistent", "no_orphan_tool_results"},
        "rule_rewards": {"rule_values_in_range", "every_rule_hit_has_evidence"},
        "judge_rewards": {"judge_values_in_range"},
        "trajectory_rewards": {"reward_values_in_range"},
        "preference_pairs": {"margin_respected"},
    }
    for asset, names in wanted.items():
        specs = [
            graph.get(key).check_spec if hasattr(graph.get(key), "check_spec") else None
            for key in graph.get(AssetKey(asset)).check_keys
        ]
        assert {key.name for key in graph.get(AssetKey(asset)).check_keys} == names
        assert all(spec is None or spec.blocking for spec in specs)


def test_runs_without_calls_fail_unless_the_run_says_why():
    runs = table(RUNS, [{"run_id": "a"}, {"run_id": "b", "error": "sandbox did not start"}, {"run_id": "c"}])
    calls = table(RAW_CALLS, [{"run_id": "a"}, {"run_id": "a"}])
    result = checks.every_run_has_calls(runs, calls)
    assert not result.passed
    assert result.metadata["problems"].value == 1 and result.metadata["failed_before_first_call"].value == 1
    assert "c: no recorded call" in result.metadata["first_problems"].value
    ok = checks.every_run_has_calls(runs.slice(0, 2), calls)
    assert ok.passed


def test_a_credential_anywhere_fails_and_is_shown_masked():
    key = "sk-ant-api03-" + "A1b2C3d4" * 5
    runs = table(RUNS, [{"run_id": "a", "agent_stderr_tail": f"curl -H 'x-api-key: {key}'"}])
    result = checks.no_credentials({"runs": runs})
    assert not result.passed
    shown = result.metadata["first_problems"].value
    assert "agent_stderr_tail" in shown and key not in shown
    assert checks.no_credentials({"runs": table(RUNS, [{"run_id": "a", "diff": "+x = 1"}])}).passed


def test_generation_flags_and_tool_results_of_a_real_merge_pass(conversations):
    assert checks.generation_flags_consistent(conversations).passed
    assert checks.no_orphan_tool_results(conversations).passed


def test_a_user_message_flagged_as_generation_fails(conversations):
    broken = copy.deepcopy(conversations)
    user = next(i for i, m in enumerate(broken[0]["messages"]) if m["role"] == "user")
    broken[0]["messages"][user]["generation"] = True
    result = checks.generation_flags_consistent(broken)
    assert not result.passed
    assert f"message {user}: a user message flagged as a generation" in result.metadata["first_problems"].value


def test_a_tool_result_with_no_call_before_it_fails(conversations):
    broken = copy.deepcopy(conversations)
    messages = next(c for c in broken if c["meta"]["kind"] == "main")["messages"]
    tool = next(i for i, m in enumerate(messages) if m["role"] == "tool")
    messages[tool]["tool_call_id"] = "toolu_never_called"
    result = checks.no_orphan_tool_results(broken)
    assert not result.passed and "toolu_never_called" in result.metadata["first_problems"].value


def test_rule_values_and_evidence():
    good = table(
        RULE_STEPS,
        [
            {
                "run_id": "a",
                "rule_id": "tool_error",
                "rule_version": "1",
                "value": -1.0,
                "conversation_id": "c",
                "step_index": 3,
                "snippet": "exit 1",
            },
            {"run_id": "a", "rule_id": "tests_passed", "rule_version": "1", "value": 0.5, "detail": "1/2 passed"},
        ],
    )
    summary = table(
        RULE_SUMMARY,
        [
            {
                "run_id": "a",
                "rule_id": "tool_error",
                "rule_version": "1",
                "hits": 1,
                "value": -1.0,
                "n_steps": 4,
                "ruleset_version": "x",
            }
        ],
    )
    assert checks.rule_values_in_range(good, summary).passed
    assert checks.every_rule_hit_has_evidence(good).passed
    bad = table(
        RULE_STEPS,
        [
            {
                "run_id": "a",
                "rule_id": "tool_error",
                "rule_version": "1",
                "value": -3.0,
                "conversation_id": "c",
                "step_index": None,
            }
        ],
    )
    assert not checks.rule_values_in_range(bad, summary).passed
    evidence = checks.every_rule_hit_has_evidence(bad)
    assert not evidence.passed and "without its step or a quote" in evidence.metadata["first_problems"].value


def test_judge_values_in_range():
    rubric = [{"criterion": "goal_progress", "score": 4, "reward": 0.75, "weight": 0.3, "reason": "ok"}]
    steps = table(
        JUDGE_STEPS,
        [
            {
                "run_id": "a",
                "conversation_id": "c",
                "step_index": 0,
                "message_index": 1,
                "rubric": rubric,
                "step_reward": 0.75,
            }
        ],
    )
    summary = table(JUDGE_SUMMARY, [{"run_id": "a", "csr": 1.0, "isr": 0.0, "mean_step_reward": 0.75}])
    assert checks.judge_values_in_range(steps, summary).passed
    over = table(
        JUDGE_STEPS,
        [
            {
                "run_id": "a",
                "conversation_id": "c",
                "step_index": 0,
                "message_index": 1,
                "rubric": [rubric[0] | {"reward": 1.5}],
                "step_reward": 0.75,
            }
        ],
    )
    result = checks.judge_values_in_range(over, summary)
    assert not result.passed and "rubric_reward = 1.5" in result.metadata["first_problems"].value


def test_trajectory_rewards_in_range():
    weights = {"weight_outcome": 0.4, "weight_rules": 0.1, "weight_step": 0.25, "weight_checklist": 0.25}
    rewards = table(TRAJECTORY_REWARDS, [{"run_id": "a", **weights, "components": ["step"], "reward": 0.8}])
    assert checks.trajectory_rewards_in_range(rewards).passed
    bad = table(
        TRAJECTORY_REWARDS, [{"run_id": "a", **weights, "components": ["rules"], "rule_score": -0.5, "reward": 0.8}]
    )
    result = checks.trajectory_rewards_in_range(bad)
    assert not result.passed and "rule_score = -0.5" in result.metadata["first_problems"].value


def test_margin_respected():
    def pair(basis, chosen, rejected, margin):
        return {
            "pair_id": f"{basis}{chosen}",
            "kind": "trajectory",
            "instance_id": "i",
            "basis": basis,
            "chosen_reward": chosen,
            "rejected_reward": rejected,
            "margin": margin,
        }

    pairs = table(PREFERENCE_PAIRS, [pair("reward", 0.9, 0.5, 0.4), pair("tie:shorter", 0.5, 0.5, 0.0)])
    assert checks.margin_respected(pairs, 0.05).passed
    narrow = table(PREFERENCE_PAIRS, [pair("reward", 0.52, 0.5, 0.02)])
    result = checks.margin_respected(narrow, 0.05)
    assert not result.passed and "min_margin 0.05" in result.metadata["first_problems"].value
    inconsistent = table(PREFERENCE_PAIRS, [pair("reward", 0.9, 0.5, 0.3)])
    assert not checks.margin_respected(inconsistent, 0.05).passed
