"""Docker failures as one readable line, with no Docker engine anywhere: an engine that does not
answer fails raw_trajectories with a dagster.Failure naming the engine and the fix, before any
run starts, and `trajhub run` prints that line. Missing images and networks, with a stand-in
client, say what is missing on which engine."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from dagster import DagsterInstance
from docker.errors import APIError, ImageNotFound

from trajhub_assets.errors import TrajhubError
from trajhub_assets.jobs import record_and_score_job
from trajhub_assets.orchestration import prepare, run_stage
from trajhub_assets.partitions import run_partitions
from trajhub_assets.sandbox import SandboxError, images
from trajhub_assets_tests.test_pipeline import resources, write_project

NO_ENGINE = "unix:///nonexistent/docker.sock"
FIX = "set sandbox.backend: local"


def no_engine_project(tmp_path) -> str:
    config = Path(write_project(tmp_path, instances=("demo-lru-eviction",)))
    project = yaml.safe_load(config.read_text())
    project["sandbox"]["docker_host"] = NO_ENGINE
    project["proxy"] = {"url": "http://127.0.0.1:9"}  # an engine elsewhere needs one; never reached
    config.write_text(yaml.safe_dump(project))
    return str(config)


def assert_one_readable_line(text: str, *parts: str) -> None:
    assert "\n" not in text.strip() and "Traceback" not in text, text
    for part in parts:
        assert part in text, text


def test_an_engine_that_does_not_answer_fails_the_step_with_one_line(tmp_path):
    res = resources(tmp_path, no_engine_project(tmp_path))
    instance = DagsterInstance.ephemeral()
    prepare(instance, res)
    keys = run_partitions.get_partition_keys(dynamic_partitions_store=instance)
    with pytest.raises(TrajhubError) as failed:  # the step's dagster.Failure, as run_stage reports it
        run_stage(instance, record_and_score_job, keys, resources=res, selection=["raw_trajectories"])
    assert_one_readable_line(str(failed.value), f"raw_trajectories: no Docker engine answers at {NO_ENGINE}", FIX)
    assert "runs" not in res["store"].get().table_names()  # it failed before any run started


def test_trajhub_run_prints_the_line(tmp_path):
    env = {**os.environ, "TRAJHUB_HOME": str(tmp_path / "home"), "TRAJHUB_CONFIG": no_engine_project(tmp_path)}
    env.pop("DAGSTER_HOME", None)
    done = subprocess.run(
        [sys.executable, "-m", "trajhub_assets.cli", "run"], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("trajhub: ") and "raw_trajectories: no Docker engine answers at" in last, done.stderr[-3000:]
    assert_one_readable_line(last, NO_ENGINE, FIX)


class StandInEngine:
    """What prepare_engine asks of a Docker client: images it has, no containers, and no network
    it may create when `network_error` says why."""

    def __init__(self, have: set[str], network_error: str | None = None):
        self.have, self.network_error = have, network_error
        self.images = SimpleNamespace(get=self.get_image)
        self.containers = SimpleNamespace(list=lambda **_: [])
        self.networks = SimpleNamespace(list=lambda **_: [], create=self.create_network)

    def get_image(self, tag):
        if tag not in self.have:
            raise ImageNotFound(f"No such image: {tag}")

    def create_network(self, *_, **__):
        raise APIError("500 Server Error", explanation=self.network_error)

    def close(self):
        pass


@pytest.mark.parametrize(
    "engine, expected",
    [
        (StandInEngine(set()), "image 'acme/task:1' is missing: pull it there (docker pull acme/task:1)"),
        (
            StandInEngine(
                {"acme/task:1"}, network_error="could not find an available,\n non-overlapping IPv4 address pool"
            ),
            "cannot create Docker network trajhub-sandbox-internal (could not find an available, non-overlapping "
            "IPv4 address pool): remove unused networks there (docker network prune)",
        ),
    ],
)
def test_a_missing_image_or_network_is_one_line_naming_the_engine(monkeypatch, tmp_path, engine, expected):
    monkeypatch.setenv("TRAJHUB_CACHE", str(tmp_path))
    monkeypatch.setattr(images, "connect", lambda docker_host: engine)
    with pytest.raises(SandboxError) as raised:
        images.prepare_engine("tcp://10.0.0.5:2376", {"acme/task:1"})
    assert_one_readable_line(str(raised.value), f"Docker engine at tcp://10.0.0.5:2376: {expected}")
