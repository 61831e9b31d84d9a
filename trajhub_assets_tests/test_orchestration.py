"""Orchestration as a library: the pipeline and a backfill run as the named jobs, tagged with
their stage, model and backfill (local sandboxes, an ephemeral Dagster instance)."""

import pytest
import yaml
from dagster import AssetKey, DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

from trajhub_assets.errors import TrajhubError
from trajhub_assets.jobs import (
    BACKFILL_TAG,
    MODEL_TAG,
    PARTITION_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    STAGE_TAG,
    build_pairs_job,
    record_and_score_job,
)
from trajhub_assets.orchestration import backfill_model, run_pipeline, run_stage, submit_backfill
from trajhub_assets.partitions import run_key
from trajhub_assets_tests.test_pipeline import resources, write_project


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """`run_pipeline` over both baseline models on one demo task."""
    tmp_path = tmp_path_factory.mktemp("orchestration")
    config = write_project(tmp_path, backend="local", instances=("demo-lru-eviction",))
    project = yaml.safe_load(open(config))
    project["release"]["replay_sample"] = 0  # replay has tests of its own
    with open(config, "w") as f:
        yaml.safe_dump(project, f)
    instance, res = DagsterInstance.ephemeral(), resources(tmp_path, config)
    return instance, res, run_pipeline(instance, resources=res)


def test_the_pipeline_runs_as_named_jobs_tagged_with_their_stage(pipeline):
    instance, _, run_ids = pipeline
    runs = [instance.get_run_by_id(run_id) for run_id in run_ids]
    assert [run.job_name for run in runs] == ["reload_catalog", "record_and_score", "build_pairs", "cut_release"]
    assert all(run.tags[STAGE_TAG] == run.job_name for run in runs)
    assert MODEL_TAG not in runs[1].tags  # both models in one run: it is no one model's


def test_a_backfill_tags_its_runs_with_its_id_and_the_model(pipeline):
    instance, res, _ = pipeline
    backfill = backfill_model(instance, "baseline/hasty", resources=res)
    runs = instance.get_runs(RunsFilter(tags={BACKFILL_TAG: backfill.backfill_id}))
    assert {run.run_id for run in runs} == set(backfill.run_ids)
    assert sorted(run.job_name for run in runs) == ["build_pairs", "cut_release", "record_and_score"]
    [record] = [run for run in runs if run.job_name == "record_and_score"]
    assert record.tags[MODEL_TAG] == "baseline__hasty"


def test_missing_finds_nothing_left_and_a_submitted_backfill_carries_the_tags(pipeline):
    instance, res, _ = pipeline
    assert backfill_model(instance, "baseline/hasty", missing=True, resources=res).instances == []
    backfill = submit_backfill(instance, "baseline/careful", resources=res)
    [stored] = instance.get_backfills()
    assert stored.backfill_id == backfill.backfill_id
    assert stored.tags[MODEL_TAG] == "baseline__careful" and stored.tags[BACKFILL_TAG] == backfill.backfill_id


def test_a_stage_waits_for_a_run_writing_the_same_partitions_then_runs(pipeline):
    instance, res, _ = pipeline
    hasty, careful = run_key("baseline__hasty", "demo-lru-eviction"), run_key("baseline__careful", "demo-lru-eviction")
    writing = {RANGE_START_TAG: hasty, RANGE_END_TAG: hasty}
    other = instance.add_run(DagsterRun(job_name="record_and_score", status=DagsterRunStatus.STARTED, tags=writing))
    with pytest.raises(TrajhubError, match=rf"run {other.run_id} \(record_and_score, STARTED\) is writing .* 1 s"):
        run_stage(instance, record_and_score_job, [hasty, hasty], resources=res, wait_s=1)
    # The same partitions by Dagster's one-partition tag, or a run of some of the same assets from the UI.
    ui = instance.add_run(
        DagsterRun(
            job_name="__ASSET_JOB",
            status=DagsterRunStatus.STARTING,
            asset_selection=frozenset({AssetKey("rule_rewards")}),
            tags={PARTITION_TAG: hasty},
        )
    )
    instance.report_run_canceled(other)
    with pytest.raises(TrajhubError, match=rf"run {ui.run_id} \(__ASSET_JOB, STARTING\)"):
        run_stage(instance, record_and_score_job, [hasty, hasty], resources=res, wait_s=1)
    # Not in the way: other partitions of the same assets, or other assets.
    run_stage(
        instance, record_and_score_job, [careful, careful], resources=res, selection=["raw_trajectories"], wait_s=30
    )
    run_stage(instance, build_pairs_job, ["demo-lru-eviction"], resources=res, wait_s=30)
    instance.report_run_canceled(ui)
    result = run_stage(instance, record_and_score_job, [hasty, hasty], resources=res, wait_s=1)
    assert result.success
    # A stage over the instances (their partitions are dynamic, and not a product of two).
    task = "demo-lru-eviction"
    pairs = instance.add_run(
        DagsterRun(
            job_name="build_pairs", status=DagsterRunStatus.STARTED, tags={RANGE_START_TAG: task, RANGE_END_TAG: task}
        )
    )
    with pytest.raises(TrajhubError, match=rf"run {pairs.run_id} \(build_pairs, STARTED\)"):
        run_stage(instance, build_pairs_job, [task, task], resources=res, wait_s=1)
    instance.report_run_canceled(pairs)
