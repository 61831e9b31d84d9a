"""The whole asset graph through Dagster, on two demo tasks, in Docker, through the real
proxy: the two baseline policies (scripted, served behind the proxy) run with the builtin
agent, and everything downstream is computed from what was recorded."""

import json
import subprocess
import sys
import textwrap

import pytest
import yaml
from dagster import DagsterInstance

from trajhub_assets.config import load_config
from trajhub_assets.definitions import environment, environment_resources
from trajhub_assets.jobs import build_pairs_job, record_and_score_job, release_job
from trajhub_assets.orchestration import prepare, run_stage
from trajhub_assets.partitions import instances_partitions, run_partitions
from trajhub_assets.resources import ProjectResource, StoreResource
from trajhub_assets.store import Store
from trajhub_assets.tasks.catalog import load_catalog

TASKS = ("demo-lru-eviction", "demo-semver-prerelease")


def write_project(tmp_path, backend: str = "docker", instances=TASKS) -> str:
    demo = {item.record["instance_id"]: item.record for item in load_catalog(load_config())}
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(demo[i]) + "\n" for i in instances))
    config = tmp_path / "project.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "tasks": [{"path": str(tasks)}],
                "models": [
                    {"name": f"baseline/{p}", "route": f"trajhub-baseline/{p}", "scaffold": "builtin"}
                    for p in ("careful", "hasty")
                ],
                "sandbox": {"backend": backend, "timeout_s": 300, "max_concurrent": 2, "cpus": 1, "memory": "1g"},
                "judge": {"model": "baseline/judge"},
                "release": {"min_margin": 0.01},
            }
        )
    )
    return str(config)


def resources(tmp_path, config: str) -> dict:
    project = ProjectResource(path=config)
    return environment_resources(
        project,
        environment(project.load()),
        StoreResource(root=str(tmp_path / "home")),
        recordings_dir=str(tmp_path / "home/recordings"),
    )


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, docker_engine):
    tmp_path = tmp_path_factory.mktemp("pipeline")
    res = resources(tmp_path, write_project(tmp_path))
    instance = DagsterInstance.ephemeral()
    prepare(instance, res)
    keys = run_partitions.get_partition_keys(dynamic_partitions_store=instance)
    per_run = run_stage(instance, record_and_score_job, keys, resources=res)
    run_stage(
        instance,
        build_pairs_job,
        instances_partitions.get_partition_keys(dynamic_partitions_store=instance),
        resources=res,
    )
    release = run_stage(instance, release_job, resources=res)
    return {
        "release": release,
        "store": Store(tmp_path / "home"),
        "keys": keys,
        "per_run": per_run,
        "instance": instance,
        "res": res,
        "home": tmp_path / "home",
    }


def test_one_batched_run_covered_every_partition(pipeline):
    assert len(pipeline["keys"]) == 4
    materialized = pipeline["per_run"].asset_materializations_for_node("raw_trajectories")
    assert len(materialized) == 4  # one Dagster run, four partitions


def test_each_partition_shows_its_own_counts_and_the_batch_its_totals(pipeline):
    store, counts = pipeline["store"], {}
    for m in pipeline["per_run"].asset_materializations_for_node("raw_trajectories"):
        model, instance = m.partition.split("|")[1], m.partition.split("|")[0]  # keys are instance|model
        where = [model, instance]
        runs = store.sql("SELECT count(*) AS n FROM runs WHERE model = ? AND instance = ?", where).to_pylist()
        calls = store.sql("SELECT count(*) AS n FROM raw_calls WHERE model = ? AND instance = ?", where).to_pylist()
        counts[m.partition] = (m.metadata["runs"].value, m.metadata["calls"].value)
        assert counts[m.partition] == (runs[0]["n"], calls[0]["n"])
        assert sorted(r.data["run_id"] for r in m.metadata["runs_table"].records) == sorted(
            r["run_id"]
            for r in store.sql("SELECT run_id FROM runs WHERE model = ? AND instance = ?", where).to_pylist()
        )
        assert m.metadata["batch_runs"].value == store.sql("SELECT count(*) AS n FROM runs").to_pylist()[0]["n"]
    assert len(set(counts.values())) > 1  # careful and hasty make different numbers of calls
    for m in pipeline["per_run"].asset_materializations_for_node("rule_rewards"):
        assert sum(r.data["hits"] for r in m.metadata["hits_per_rule"].records) == m.metadata["rule_hits"].value


def test_every_blocking_check_ran_and_passed(pipeline):
    evaluations = pipeline["per_run"].get_asset_check_evaluations()
    assert {(e.asset_key.to_user_string(), e.check_name) for e in evaluations} == {
        ("raw_trajectories", "every_run_has_calls"),
        ("raw_trajectories", "no_credentials"),
        ("merged_trajectories", "generation_flags_consistent"),
        ("merged_trajectories", "no_orphan_tool_results"),
        ("rule_rewards", "rule_values_in_range"),
        ("rule_rewards", "every_rule_hit_has_evidence"),
        ("judge_rewards", "judge_values_in_range"),
        ("trajectory_rewards", "reward_values_in_range"),
    }
    assert all(e.passed for e in evaluations)


def test_a_sample_of_the_release_replays_exactly(pipeline):
    [check] = pipeline["release"].get_asset_check_evaluations()
    assert check.check_name == "sampled_runs_reproduce" and check.passed
    replays = pipeline["store"].sql("SELECT fidelity, reproduced FROM replays").to_pylist()
    assert len(replays) == 2 and all(r["fidelity"] == 1.0 and r["reproduced"] for r in replays)


def test_runs_record_outcome_and_diff(pipeline):
    runs = {
        r["model"]: r
        for r in pipeline["store"].sql("SELECT * FROM runs WHERE instance = 'demo-lru-eviction'").to_pylist()
    }
    careful, hasty = runs["baseline__careful"], runs["baseline__hasty"]
    assert careful["error"] is None and careful["backend"] == "docker"
    assert careful["resolved"] and careful["tests_failed"] == 0 and careful["tests_total"] > 0
    assert "move_to_end" in careful["diff"] and "lrucache/cache.py" in careful["diff"]
    assert careful["scaffold_version"] == "1" and careful["stop_reason"] == "finished"
    assert "CHANGELOG.md" not in hasty["diff"]  # the hasty baseline writes one file only


def test_the_recorded_calls_hold_what_the_agent_saw(pipeline):
    store = pipeline["store"]
    calls = store.sql("SELECT run_id, count(*) AS n, min(status) AS status FROM raw_calls GROUP BY run_id").to_pylist()
    assert len(calls) == 4 and all(c["n"] >= 4 and c["status"] == "ok" for c in calls)
    (careful,) = [
        c
        for c in store.sql(
            "SELECT * EXCLUDE (model, instance) FROM merged_trajectories "
            "WHERE model = 'baseline__careful' AND instance = 'demo-lru-eviction'"
        ).to_pylist()
    ]
    assert careful["kind"] == "main"
    tool_results = [m["content"] for m in careful["messages"] if m["role"] == "tool"]
    # the first test run failed, the one after the fix passed: the agent saw both, in order
    test_outputs = [t for t in tool_results if "Ran " in t]
    assert "FAILED" in test_outputs[0] and test_outputs[-1].rstrip().endswith("OK")
    assert any("class LRUCache" in t for t in tool_results)  # a file read in the sandbox
    generated = [m for m in careful["messages"] if m["role"] == "assistant"]
    assert generated and all(m["generation"] for m in generated)


def test_rules_and_judge_separate_the_baselines(pipeline):
    store = pipeline["store"]
    fired = {(r["model"], r["rule_id"]) for r in store.sql("SELECT * FROM rule_steps").to_pylist()}
    assert ("baseline__hasty", "repeated_tool_call") in fired
    assert ("baseline__hasty", "edit_unread_file") in fired
    assert ("baseline__careful", "repeated_tool_call") not in fired
    rewards = {
        (r["model"], r["instance"]): r["reward"] for r in store.sql("SELECT * FROM trajectory_rewards").to_pylist()
    }
    for task in TASKS:
        assert rewards[("baseline__careful", task)] > rewards[("baseline__hasty", task)]


def test_pairs_prefer_the_careful_baseline(pipeline):
    pairs = pipeline["store"].sql("SELECT * FROM preference_pairs WHERE kind = 'trajectory'").to_pylist()
    assert {p["instance_id"] for p in pairs} == set(TASKS)
    assert all(p["chosen_model"] == "baseline/careful" for p in pairs)
    assert all(p["chosen"][0]["role"] == "assistant" for p in pairs)


def test_release_and_no_credentials_anywhere(pipeline):
    releases = list((pipeline["home"] / "releases").glob("*/*/manifest.json"))
    assert len(releases) == 1
    # the proxy's master keys all start so; the release's own secret scan ran too
    hits = subprocess.run(["grep", "-rIl", "sk-trajhub-", str(pipeline["home"])], capture_output=True, text=True)
    assert hits.stdout == ""


def test_judge_rematerialization_calls_the_judge_zero_times(pipeline):
    result = run_stage(
        pipeline["instance"],
        record_and_score_job,
        pipeline["keys"],
        resources=pipeline["res"],
        selection=["judge_rewards"],
    )
    requests = {m.metadata["judge_requests"].value for m in result.asset_materializations_for_node("judge_rewards")}
    assert requests == {0}


CONCURRENT = textwrap.dedent("""
    import sys
    from dagster import DagsterInstance, MultiPartitionKey, materialize
    from trajhub_assets.definitions import defs
    from trajhub_assets_tests.test_pipeline import resources
    from pathlib import Path
    tmp, config, model = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    key = MultiPartitionKey({"model": model, "instance": "demo-lru-eviction"})
    result = materialize(list(defs.assets), selection=["raw_trajectories"], partition_key=key,
                         instance=DagsterInstance.get(), resources=resources(tmp, config))
    sys.exit(0 if result.success else 1)
""")


def test_two_partitions_materialize_concurrently_without_mixing_calls(tmp_path, docker_engine, monkeypatch):
    config = write_project(tmp_path, instances=("demo-lru-eviction",))
    res = resources(tmp_path, config)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    instance = DagsterInstance.get()
    prepare(instance, res)
    processes = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT, str(tmp_path), config, model])
        for model in ("baseline__careful", "baseline__hasty")
    ]
    assert [p.wait(timeout=600) for p in processes] == [0, 0]
    store = Store(tmp_path / "home")
    rows = store.sql("SELECT model, run_id FROM raw_calls").to_pylist()
    assert {r["model"] for r in rows} == {"baseline__careful", "baseline__hasty"}
    assert all(r["run_id"].startswith(r["model"] + "~") for r in rows)


def test_with_branching_enabled_trajhub_run_branches_scores_pairs_and_releases_the_branches(tmp_path, docker_engine):
    """run_pipeline (what `trajhub run` does) on a project whose config turns branching on for
    the explorer: the branch_and_score stage runs after scoring, in Docker, and the release's
    branch configs hold exactly the stored branch pairs, its card the stored branches' figures."""
    from trajhub_assets.branching.accounting import store_accounting
    from trajhub_assets.jobs import STAGE_TAG
    from trajhub_assets.orchestration import run_pipeline
    from trajhub_assets.release.release import BRANCH_CONFIGS

    config = yaml.safe_load(open(write_project(tmp_path, instances=("demo-csv-quoting", "demo-retry-backoff"))))
    config["models"].append(
        {
            "name": "baseline/explorer",
            "route": "trajhub-baseline/explorer",
            "scaffold": "builtin",
            "sampling": {"extra": {"seed": 7}},
        }
    )
    config["branching"] = {
        "enabled": True,
        "models": ["baseline/explorer"],
        "points": ["even"],
        "samples": 3,
        "max_per_run": 1,
    }
    (tmp_path / "project.yaml").write_text(yaml.safe_dump(config))
    res = resources(tmp_path, str(tmp_path / "project.yaml"))
    instance = DagsterInstance.ephemeral()
    run_ids = run_pipeline(instance, resources=res)
    stages = [instance.get_run_by_id(run_id).tags[STAGE_TAG] for run_id in run_ids]
    assert stages.index("branch_and_score") == stages.index("record_and_score") + 1
    store = Store(tmp_path / "home")
    branches = store.sql("SELECT * FROM branch_runs").to_pylist()
    assert {r["model"] for r in store.sql("SELECT DISTINCT model FROM branch_runs").to_pylist()} == {
        "baseline__explorer"
    }
    assert len(branches) == 2 * 3 and all(r["backend"] == "docker" and r["error"] is None for r in branches)
    pairs = store.sql("SELECT kind, count(*) AS n FROM branch_pairs GROUP BY kind").to_pylist()
    (manifest,) = (tmp_path / "home" / "releases").glob("*/*/manifest.json")
    rows = json.loads(manifest.read_text())["rows"]
    released = {k: v for k, v in rows.items() if k.startswith("branch_")}
    assert released == {BRANCH_CONFIGS[p["kind"]]: p["n"] for p in pairs}  # none released when none made
    card = (manifest.parent / "README.md").read_text()
    figures = store_accounting(store)
    assert f"Branches: {figures['points']} branch points of {figures['runs_branched']} recorded runs" in card
    assert figures["continuations"] == 6 and figures["refused"] == 0
