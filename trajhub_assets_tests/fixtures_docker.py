"""A Docker engine with the demo image, started the way CI starts it.

As root, a missing engine is installed and started with scripts/docker_setup.sh. Where
none can run, tests that need it are skipped with a loud reason, except under CI, where
that is a failure: CI must run them.
"""

import os
import subprocess
from pathlib import Path

import pytest

from trajhub_assets.sandbox import docker as docker_backend
from trajhub_assets.sandbox.images import ensure_demo_image

SETUP = Path(__file__).parents[1] / "scripts" / "docker_setup.sh"


@pytest.fixture(scope="session")
def docker_engine():
    why = None
    if not docker_backend.docker_available():
        if os.geteuid() == 0:
            setup = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900)
            if setup.returncode != 0:
                why = f"scripts/docker_setup.sh failed:\n{setup.stdout[-1500:]}{setup.stderr[-1500:]}"
        else:
            why = "no engine answers and starting one (scripts/docker_setup.sh) needs root"
    if why is None and not docker_backend.docker_available():
        why = "scripts/docker_setup.sh ran but `docker info` still fails"
    if why is not None:
        message = f"DOCKER CANNOT RUN HERE: {why}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    client = docker_backend.connect()
    ensure_demo_image(client)  # about a minute the first time, cached afterwards
    yield client
    client.close()
