"""Orchestration as a library: the pipeline and a backfill run as the named jobs, tagged with
their stage, model and backfill (local sandboxes, an ephemeral Dagster instance)."""

import pytest
import yaml
from dagster import DagsterInstance, RunsFilter

from trajhub_assets.jobs import BACKFILL_TAG, MODEL_TAG, STAGE_TAG
from trajhub_assets.orchestration import backfill_model, run_pipeline, submit_backfill
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
