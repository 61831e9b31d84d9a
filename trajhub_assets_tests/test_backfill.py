"""Adding a model and backfilling it, as the README tells a user to; and a cancelled run
giving its pool slot back."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml
from dagster import AssetKey, DagsterInstance, RunsFilter

from trajhub_assets.partitions import run_key
from trajhub_assets_tests.test_cli import trajhub
from trajhub_assets_tests.test_pipeline import write_project

INSTANCES = ("demo-lru-eviction", "demo-semver-prerelease")


@pytest.fixture(scope="module")
def added_model(tmp_path_factory):
    """A project that ran `careful` on three tasks; then `hasty` is added to its config."""
    tmp_path = tmp_path_factory.mktemp("backfill")
    config = write_project(tmp_path, backend="local", instances=INSTANCES)
    project = yaml.safe_load(open(config))
    hasty = project["models"].pop()
    project["release"]["replay_sample"] = 0  # replay has tests of its own
    with open(config, "w") as f:
        yaml.safe_dump(project, f)
    env = {
        **os.environ,
        "TRAJHUB_HOME": str(tmp_path / "home"),
        "TRAJHUB_CONFIG": config,
        "DAGSTER_HOME": str(tmp_path / "home/dagster"),
    }
    trajhub("run", env=env)
    project["models"].append(hasty)
    with open(config, "w") as f:
        yaml.safe_dump(project, f)
    return tmp_path, env


def dagster_instance(env) -> DagsterInstance:
    os.makedirs(env["DAGSTER_HOME"], exist_ok=True)
    return DagsterInstance.from_config(env["DAGSTER_HOME"])


def test_a_model_missing_from_the_config_is_named(added_model):
    _, env = added_model
    done = trajhub("backfill", "--model", "baseline/nobody", env=env, check=False)
    assert done.returncode != 0 and "no model 'baseline/nobody'" in done.stderr


def test_backfill_runs_the_new_model_in_batches_then_pairs_and_release(added_model):
    tmp_path, env = added_model
    done = trajhub("backfill", "--model", "baseline/hasty", "--batch-size", "1", env=env)
    out = done.stdout
    assert "over 2 instances in 2 run(s)" in out
    # Each batch logs its runs' progress as they finish (Dagster's log, on stderr).
    assert done.stderr.count("progress: 1/1 runs done") == 2
    assert "cost $" in done.stderr
    instance = dagster_instance(env)
    runs = instance.get_runs(RunsFilter(tags={"trajhub/backfill": out.split("(tag ")[1].split(")")[0]}))
    # Two batches of the per-run stages, one of pairs, one release.
    assert len(runs) == 4 and all(r.is_success for r in runs)
    done = instance.get_materialized_partitions(AssetKey("raw_trajectories"))
    assert {run_key("baseline__hasty", i) for i in INSTANCES} <= done
    assert {run_key("baseline__careful", i) for i in INSTANCES} <= done
    # The status at the end sums up both models.
    assert "raw_trajectories: 4/4 partitions materialized" in out
    assert "baseline__hasty" in out and "cost_usd" in out
    pairs = trajhub(
        "sql", "SELECT count(DISTINCT chosen_model || rejected_model) AS n FROM preference_pairs", env=env
    ).stdout
    assert "1" in pairs  # careful vs hasty pairs now exist


def test_missing_only_finds_nothing_left_and_submit_hands_a_backfill_to_the_daemon(added_model):
    _, env = added_model
    out = trajhub("backfill", "--model", "baseline/hasty", "--missing", env=env).stdout
    assert "has run every instance already" in out
    out = trajhub("backfill", "--model", "baseline/hasty", "--submit", env=env).stdout
    assert "submitted" in out
    backfills = dagster_instance(env).get_backfills()
    assert len(backfills) == 1
    subset = backfills[0].asset_backfill_data.target_subset
    assert {k.to_user_string() for k in subset.asset_keys} == {
        "raw_trajectories",
        "merged_trajectories",
        "rule_rewards",
        "judge_rewards",
        "trajectory_rewards",
    }
    keys = subset.get_partitions_subset(AssetKey("raw_trajectories")).get_partition_keys()
    assert set(keys) == {run_key("baseline__hasty", i) for i in INSTANCES}


CANCELLED_RUN = textwrap.dedent("""
    import sys
    from dagster import DagsterInstance
    from trajhub_assets.jobs import record_and_score_job
    from trajhub_assets.orchestration import prepare, run_stage
    from trajhub_assets.partitions import run_partitions
    from trajhub_assets.recording.resources import ProxyResource
    from trajhub_assets.recording.scripted_upstream import ScriptedUpstream, say
    from trajhub_assets.resources import ProjectResource, StoreResource

    config, home = sys.argv[1], sys.argv[2]
    upstream = ScriptedUpstream(lambda request: say("late", delay=300)).start()  # a model that hangs
    project = ProjectResource(path=config)
    resources = {"store": StoreResource(root=home), "project": project,
                 "proxy": ProxyResource(project=project, recordings_dir=home + "/recordings",
                                        scripted_upstream_url=upstream.url)}
    instance = DagsterInstance.get()
    prepare(instance, resources)
    keys = run_partitions.get_partition_keys(dynamic_partitions_store=instance)
    print("started", flush=True)
    run_stage(instance, record_and_score_job, keys, resources=resources, selection=["raw_trajectories"])
""")


def test_a_cancelled_run_frees_its_sandbox_slot(tmp_path):
    config = write_project(tmp_path, backend="local", instances=INSTANCES[:1])
    project = yaml.safe_load(open(config))
    project["models"] = [{"name": "scripted/hangs", "route": "scripted-openai", "scaffold": "builtin"}]
    with open(config, "w") as f:
        yaml.safe_dump(project, f)
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster")}
    os.makedirs(env["DAGSTER_HOME"])
    worker = subprocess.Popen(
        [sys.executable, "-c", CANCELLED_RUN, config, str(tmp_path / "home")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    instance = DagsterInstance.from_config(env["DAGSTER_HOME"])
    try:
        deadline = time.monotonic() + 240
        while not instance.event_log_storage.get_concurrency_info("sandboxes").claimed_slots:
            assert worker.poll() is None and time.monotonic() < deadline, worker.stdout.read()
            time.sleep(1)
        [claimed] = instance.event_log_storage.get_concurrency_info("sandboxes").claimed_slots
        worker.send_signal(signal.SIGINT)  # what Ctrl-C, or Dagster's termination of a run worker, sends
        while instance.event_log_storage.get_concurrency_info("sandboxes").claimed_slots:
            assert time.monotonic() < deadline, "the slot was not given back"
            time.sleep(1)
        run = instance.get_run_by_id(claimed.run_id)
        while not run.is_finished:
            assert time.monotonic() < deadline
            time.sleep(1)
            run = instance.get_run_by_id(claimed.run_id)
        assert not run.is_success
    finally:
        worker.kill()
        worker.wait()
