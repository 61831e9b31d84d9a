"""One code-version policy: each asset's version is a hash of what decides its output, so a
change to any one of those marks exactly the assets it decides stale."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from trajhub_assets.config import load_config
from trajhub_assets.definitions import build_definitions
from trajhub_assets.resources import ProjectResource
from trajhub_assets.versions import code_versions, source_digest

BASE = load_config()


def changed(section: str, **values):
    return BASE.model_copy(update={section: getattr(BASE, section).model_copy(update=values)})


@pytest.mark.parametrize(
    "config, stale",
    [
        (changed("rewards", forbidden_commands=["git push --force"]), {"rule_rewards"}),
        (changed("judge", model="openai/gpt-5-mini"), {"judge_rewards"}),
        (changed("judge", prompt_version="v2"), {"judge_rewards"}),
        (changed("judge", rubric_weights={"goal_progress": 1.0}), {"judge_rewards"}),
        (changed("judge", max_steps_per_request=1, checklist_per_category=True), {"judge_rewards"}),
        (changed("judge", max_concurrent=9, timeout_s=5), set()),  # how, not what: nothing stale
        (changed("judge", max_cost_per_run_usd=1.0), set()),  # a budget stops judging; it judges nothing else
        (changed("rewards", trajectory_weights={"outcome": 1.0}), {"trajectory_rewards"}),
        (changed("release", min_margin=0.2), {"preference_pairs"}),
        (changed("release", max_pairs_per_instance=3), {"preference_pairs"}),
        (changed("release", pair_candidates_per_run=2), {"preference_pairs"}),
        (changed("release", name="other"), {"hf_dataset_release"}),
        (changed("sandbox", max_concurrent=7), set()),
    ],
)
def test_a_config_change_versions_exactly_the_assets_it_decides(config, stale):
    before, after = code_versions(BASE), code_versions(config)
    assert {name for name in before if before[name] != after[name]} == stale


@pytest.mark.parametrize(
    "module, stale",
    [
        ("merge.normalize", {"merged_trajectories"}),
        ("rewards.judge", {"judge_rewards"}),
        ("rewards.trajectory", {"trajectory_rewards"}),
        ("pairs.pairs", {"preference_pairs"}),
        ("release.release", {"hf_dataset_release"}),
    ],
)
def test_a_code_change_versions_exactly_the_assets_it_decides(module, stale, monkeypatch, tmp_path):
    before = code_versions(BASE)
    source = Path(importlib.import_module(f"trajhub_assets.{module}").__file__)
    edited = tmp_path / source.name
    edited.write_text(source.read_text() + "\n# an edit\n")
    real = source_digest

    def digest_with_edit(*modules):
        if module not in modules:
            return real(*modules)
        module_file = importlib.import_module(f"trajhub_assets.{module}")
        monkeypatch.setattr(module_file, "__file__", str(edited))
        try:
            return real(*modules)
        finally:
            monkeypatch.setattr(module_file, "__file__", str(source))

    monkeypatch.setattr("trajhub_assets.versions.source_digest", digest_with_edit)
    after = code_versions(BASE)
    assert {name for name in before if before[name] != after[name]} == stale


def test_a_rule_change_versions_rule_rewards(monkeypatch):
    before = code_versions(BASE)
    monkeypatch.setattr("trajhub_assets.rewards.rules.RULESET_VERSION", "another-ruleset")
    after = code_versions(BASE)
    assert {name for name in before if before[name] != after[name]} == {"rule_rewards"}


def test_the_code_location_carries_the_versions_of_its_project(tmp_path):
    config = tmp_path / "project.yaml"
    config.write_text(BASE.resolve("project.yaml").read_text().replace("prompt_version: v1", "prompt_version: v9"))
    graph = build_definitions(ProjectResource(path=str(config))).resolve_asset_graph()
    ours = {key.to_user_string(): graph.get(key).code_version for key in graph.get_all_asset_keys()}
    other = load_config(config)
    assert ours == {name: code_versions(other).get(name) for name in ours}
    assert ours["judge_rewards"] != code_versions(BASE)["judge_rewards"]


def test_dagster_sees_a_changed_version_and_automation_recomputes_only_that():
    """Two evaluations of the automation conditions, the second with the judge's prompt version
    changed: code_version_changed (part of FOLLOW_INPUTS) requests judge_rewards and no other."""
    from dagster import AutomationCondition, Definitions, asset, evaluate_automation_conditions

    def location(config):
        versions = code_versions(config)

        def make(name):
            @asset(
                name=name, code_version=versions[name], automation_condition=AutomationCondition.code_version_changed()
            )
            def _asset():
                return None

            return _asset

        return Definitions(assets=[make("judge_rewards"), make("trajectory_rewards"), make("rule_rewards")])

    instance = DagsterInstance.ephemeral()
    first = evaluate_automation_conditions(defs=location(BASE), instance=instance)
    assert first.total_requested == 0
    second = evaluate_automation_conditions(
        defs=location(changed("judge", prompt_version="v2")), instance=instance, cursor=first.cursor
    )
    requested = {
        name
        for name in ("judge_rewards", "trajectory_rewards", "rule_rewards")
        if second.get_num_requested(AssetKey(name))
    }
    assert requested == {"judge_rewards"}
