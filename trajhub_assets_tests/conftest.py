"""Shared fixtures. Fixtures for real components live in their own modules, listed here."""

import pytest

from trajhub_assets.store import Store

pytest_plugins = [
    "trajhub_assets_tests.fixtures_proxy",
    "trajhub_assets_tests.fixtures_docker",
    "trajhub_assets_tests.fixtures_services",
]


@pytest.fixture
def store(tmp_path, monkeypatch) -> Store:
    """An empty store under a temporary TRAJHUB_HOME."""
    monkeypatch.setenv("TRAJHUB_HOME", str(tmp_path / "home"))
    return Store(tmp_path / "home")
