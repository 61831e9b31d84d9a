"""The nightly refresh, through Dagster's own test helpers: the schedule reloads the catalog, the
automation conditions run new partitions and follow their inputs, the release sensor waits for the
refresh to settle, and the pool limits come from the config."""

import time

import pyarrow as pa
import pytest
import yaml
from dagster import (
    AssetCheckEvaluation,
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    RunRequest,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    evaluate_automation_conditions,
)
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

from trajhub_assets.automation import (
    IN_CONFIG_LABEL,
    apply_pool_limits,
    make_release_sensor,
    nightly_refresh,
    release_due,
)
from trajhub_assets.config import PoolsConfig, RefreshConfig, load_config
from trajhub_assets.definitions import defs
from trajhub_assets.errors import ConfigError
from trajhub_assets.interchange.schema import IMPORTS
from trajhub_assets.partitions import instances_partitions, models_partitions, run_key
from trajhub_assets.resources import ProjectResource, StoreResource
from trajhub_assets.tasks.assets import partitions_sensor
from trajhub_assets_tests.shared_data import OCTOCODINGBENCH_TASKS

RAW, MERGED, RULES = AssetKey("raw_trajectories"), AssetKey("merged_trajectories"), AssetKey("rule_rewards")
PAIRS = AssetKey("preference_pairs")
# Models of the bundled config, the one defs reads.
CAREFUL, HASTY, *_ = (model.key for model in load_config().models)


def materialized(instance, asset: str, partition: str | None = None, checks_pass: bool = True) -> None:
    """What a run of `asset` leaves in the instance: its materialization and its checks' results."""
    instance.report_runless_asset_event(AssetMaterialization(asset, partition=partition))
    for check in defs.resolve_asset_graph().get(AssetKey(asset)).check_keys:
        instance.report_runless_asset_event(
            AssetCheckEvaluation(asset_key=check.asset_key, check_name=check.name, passed=checks_pass)
        )


def test_schedule_reloads_the_catalog_at_the_configured_time():
    schedule = nightly_refresh(RefreshConfig(cron="30 3 * * *", timezone="Europe/Paris"))
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 3 * * *", "Europe/Paris")
    requests = schedule.evaluate_tick(build_schedule_context()).run_requests
    assert len(requests) == 1
    job = defs.resolve_job_def(schedule.job_name)
    assert {key.to_user_string() for key in job.asset_layer.executable_asset_keys} == {"tasks"}
    assert defs.get_schedule_def("nightly_refresh").cron_schedule == load_config().refresh.cron


def test_the_refresh_is_on_as_soon_as_dagster_runs():
    repository = defs.get_repository_def()
    statuses = {s.name: s.default_status.value for s in [*repository.sensor_defs, *repository.schedule_defs]}
    assert statuses == {
        "nightly_refresh": "RUNNING",
        "partitions_sensor": "RUNNING",
        "release_sensor": "RUNNING",
        "automation_sensor": "RUNNING",
    }


def test_a_bad_cron_is_a_config_error_naming_the_field(tmp_path):
    config = tmp_path / "project.yaml"
    config.write_text(yaml.safe_dump({"tasks": [{"path": "t.jsonl"}], "refresh": {"cron": "at 2am"}}))
    with pytest.raises(ConfigError, match=r"refresh\.cron.*not a cron schedule"):
        load_config(config)


def test_new_partitions_run_once_and_derived_assets_follow_their_inputs():
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(models_partitions.name, [CAREFUL])
    instance.add_dynamic_partitions(instances_partitions.name, ["i1", "i2"])
    materialized(instance, "tasks")
    first = evaluate_automation_conditions(defs=defs, instance=instance)
    # Partitions that existed before the conditions are not run on their own.
    assert first.get_num_requested(RAW) == 0

    instance.add_dynamic_partitions(models_partitions.name, [HASTY])  # the sensor registers a model added to the config
    second = evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert second.get_requested_partitions(RAW) == {run_key(HASTY, "i1"), run_key(HASTY, "i2")}
    assert second.get_num_requested(MERGED) == 0  # nothing to merge yet

    materialized(instance, "raw_trajectories", run_key(HASTY, "i1"))
    third = evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
    assert third.get_num_requested(RAW) == 0  # asked once, not again
    assert third.get_requested_partitions(MERGED) == {run_key(HASTY, "i1")}

    materialized(instance, "merged_trajectories", run_key(HASTY, "i1"))
    fourth = evaluate_automation_conditions(defs=defs, instance=instance, cursor=third.cursor)
    assert fourth.get_requested_partitions(RULES) == {run_key(HASTY, "i1")}
    assert fourth.get_requested_partitions(AssetKey("judge_rewards")) == {run_key(HASTY, "i1")}

    # A failed blocking check holds back what follows.
    materialized(instance, "raw_trajectories", run_key(HASTY, "i2"), checks_pass=False)
    blocked = evaluate_automation_conditions(defs=defs, instance=instance, cursor=fourth.cursor)
    assert blocked.get_num_requested(MERGED) == 0
    materialized(instance, "raw_trajectories", run_key(HASTY, "i2"))
    fourth = evaluate_automation_conditions(defs=defs, instance=instance, cursor=blocked.cursor)
    assert fourth.get_requested_partitions(MERGED) == {run_key(HASTY, "i2")}

    # The reward follows both its rule and its judge inputs.
    materialized(instance, "rule_rewards", run_key(HASTY, "i1"))
    materialized(instance, "judge_rewards", run_key(HASTY, "i1"))
    rewards = evaluate_automation_conditions(defs=defs, instance=instance, cursor=fourth.cursor)
    assert rewards.get_requested_partitions(AssetKey("trajectory_rewards")) == {run_key(HASTY, "i1")}
    # Pairs of i1 do not wait for the careful model, which never ran it.
    materialized(instance, "trajectory_rewards", run_key(HASTY, "i1"))
    fifth = evaluate_automation_conditions(defs=defs, instance=instance, cursor=rewards.cursor)
    assert fifth.get_requested_partitions(PAIRS) == {"i1"}
    # Agents are never re-run because something upstream changed.
    materialized(instance, "tasks")
    sixth = evaluate_automation_conditions(defs=defs, instance=instance, cursor=fifth.cursor)
    assert sixth.get_num_requested(RAW) == 0


def test_automation_never_runs_a_partition_of_a_model_not_in_the_config():
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(instances_partitions.name, ["i1", "i2"])
    materialized(instance, "tasks")
    first = evaluate_automation_conditions(defs=defs, instance=instance)
    # A typo in the UI's "Add a partition" appears with a partition of a configured model.
    instance.add_dynamic_partitions(models_partitions.name, ["baseline__carefull", CAREFUL])
    second = evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert second.get_requested_partitions(RAW) == {run_key(CAREFUL, "i1"), run_key(CAREFUL, "i2")}
    third = evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
    assert third.get_num_requested(RAW) == 0 and third.get_num_requested(MERGED) == 0
    # The UI shows why, under the condition's label.
    condition = defs.resolve_asset_graph().get(RAW).automation_condition
    assert IN_CONFIG_LABEL in [child.get_label() for child in condition.children]


def test_automation_sensor_evaluates_the_condition_in_the_code_location():
    # ModelInConfig is Python of ours: the daemon could not evaluate it, the sensor's tick can.
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(instances_partitions.name, ["i1"])
    materialized(instance, "tasks")
    sensor = defs.get_sensor_def("automation_sensor")
    first = sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))
    instance.add_dynamic_partitions(models_partitions.name, [CAREFUL, "typo"])
    second = sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs, cursor=first.cursor))
    assert [request.partition_key for request in second.run_requests] == [run_key(CAREFUL, "i1")]


def test_release_waits_for_news_and_quiet_then_releases_once():
    instance = DagsterInstance.ephemeral()
    assert isinstance(release_due(instance, 10), SkipReason)
    materialized(instance, "preference_pairs", None)
    now = time.time()
    waiting = release_due(instance, 10, now=now)
    assert isinstance(waiting, SkipReason) and "quiet minutes" in waiting.skip_message
    due = release_due(instance, 10, now=now + 11 * 60)
    assert isinstance(due, RunRequest) and due.run_key.startswith("release-after-")

    run = instance.add_run(DagsterRun(job_name="__ASSET_JOB", status=DagsterRunStatus.STARTED))
    busy = release_due(instance, 10, now=now + 11 * 60)
    assert isinstance(busy, SkipReason) and "in progress" in busy.skip_message
    instance.report_run_canceled(run)

    materialized(instance, "hf_dataset_release")
    done = release_due(instance, 10, now=now + 11 * 60)
    assert isinstance(done, SkipReason) and "nothing new" in done.skip_message
    # The sensor as Dagster evaluates it.
    sensor = make_release_sensor(RefreshConfig(release_quiet_minutes=0))
    materialized(instance, "trajectory_rewards", None)
    requests = sensor.evaluate_tick(build_sensor_context(instance=instance)).run_requests
    assert len(requests) == 1 and requests[0].job_name in (None, "cut_release")


def test_partitions_sensor_sets_pool_limits_from_the_config(tmp_path):
    config = tmp_path / "project.yaml"
    config.write_text(
        yaml.safe_dump({"tasks": [{"path": str(OCTOCODINGBENCH_TASKS)}], "pools": {"sandboxes": 3, "judge": 2}})
    )
    (tmp_path / "dagster").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        context = build_sensor_context(
            instance=instance,
            resources={
                "store": StoreResource(root=str(tmp_path / "home")),
                "project": ProjectResource(path=str(config)),
            },
        )
        partitions_sensor(context)
        storage = instance.event_log_storage
        assert storage.get_concurrency_info("sandboxes").slot_count == 3
        assert storage.get_concurrency_info("judge").slot_count == 2
        assert apply_pool_limits(instance, PoolsConfig(sandboxes=1)) == {"sandboxes": 1, "judge": 1}
        assert storage.get_concurrency_info("sandboxes").slot_count == 1


def test_partitions_sensor_names_a_models_partition_not_in_the_config(tmp_path, capfd):
    config = tmp_path / "project.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "tasks": [{"path": str(OCTOCODINGBENCH_TASKS)}],
                "models": [{"name": "acme/claude", "route": "anthropic/claude-sonnet-4-5", "scaffold": "claudecode"}],
            }
        )
    )
    store = StoreResource(root=str(tmp_path / "home"))
    # A model imported from files (`trajhub import`) has rows but no agent: it is not a typo.
    store.get().write(
        IMPORTS,
        pa.Table.from_pylist([{"run_id": "r1"}], schema=IMPORTS.schema),
        {"model": "other__agent", "instance": "i1"},
    )
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(models_partitions.name, ["acme__claude", "acme__claud", "other__agent"])
    context = build_sensor_context(
        instance=instance, resources={"store": store, "project": ProjectResource(path=str(config))}
    )
    result = partitions_sensor(context)
    warning = "models partition 'acme__claud' is not in the project config: automation will not run it"
    assert isinstance(result, SkipReason) and warning in result.skip_message
    assert "other__agent" not in result.skip_message
    assert warning in capfd.readouterr().err  # the tick's log
    # Nothing is deleted for the user: its stored data would vanish from the UI.
    assert len(instance.get_dynamic_partitions(models_partitions.name)) == 3
