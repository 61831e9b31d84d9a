import os
import subprocess
import sys
from pathlib import Path

import yaml
from dagster import DagsterInstance, SensorResult, build_sensor_context, materialize

from trajhub_assets.partitions import run_partitions
from trajhub_assets.resources import ProjectResource, StoreResource
from trajhub_assets.tasks.assets import partitions_sensor, tasks
from trajhub_assets_tests.shared_data import OCTOCODINGBENCH_TASKS as REAL_TASKS

REPO = Path(__file__).resolve().parents[1]


def test_run_partitions_are_models_by_instances():
    dims = {d.name: d.partitions_def.name for d in run_partitions.partitions_defs}
    assert dims == {"model": "models", "instance": "instances"}


def test_sensor_registers_models_from_config_and_instances_from_catalog(tmp_path):
    config = tmp_path / "project.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "tasks": [{"path": str(REAL_TASKS)}],
                "models": [
                    {
                        "name": "anthropic/claude-sonnet-4-5",
                        "route": "anthropic/claude-sonnet-4-5",
                        "scaffold": "claudecode",
                    }
                ],
            }
        )
    )
    resources = {"store": StoreResource(root=str(tmp_path / "home")), "project": ProjectResource(path=str(config))}
    instance = DagsterInstance.ephemeral()

    # before the catalog exists, only the model is registered
    result = partitions_sensor(build_sensor_context(instance=instance, resources=resources))
    assert isinstance(result, SensorResult)
    assert [(r.partitions_def_name, list(r.partition_keys)) for r in result.dynamic_partitions_requests] == [
        ("models", ["anthropic__claude-sonnet-4-5"])
    ]
    instance.add_dynamic_partitions("models", ["anthropic__claude-sonnet-4-5"])

    assert materialize([tasks], instance=instance, resources=resources).success
    result = partitions_sensor(build_sensor_context(instance=instance, resources=resources))
    (request,) = result.dynamic_partitions_requests
    assert request.partitions_def_name == "instances" and len(request.partition_keys) == 72
    instance.add_dynamic_partitions("instances", list(request.partition_keys))

    # nothing new: the sensor skips
    result = partitions_sensor(build_sensor_context(instance=instance, resources=resources))
    assert not isinstance(result, SensorResult)
    assert len(run_partitions.get_partition_keys(dynamic_partitions_store=instance)) == 72


def test_dagster_validates_the_code_location(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", str(REPO / "workspace.yaml")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All code locations passed validation" in done.stdout + done.stderr
