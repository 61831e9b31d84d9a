"""A user's own endpoints, configured as the README says, and what they receive on the wire.

Each "provider" here is a real HTTP server on loopback (the scripted upstream) that keeps
every request it received with its headers. The project file names each model's route,
`api_base` and `api_key_env`, and an outside judge with its own `base_url` and key, as a
user's would. The truth is what those servers received: every call, with its own key, and
never the proxy's master key.
"""

import json
import os
import subprocess
import sys

import httpx
import pytest
import yaml

from trajhub_assets.config import load_config
from trajhub_assets.recording.proxy_process import ProxyProcess
from trajhub_assets.recording.resources import ProxyResource
from trajhub_assets.recording.routes import project_proxy_config
from trajhub_assets.recording.scripted_upstream import ScriptedUpstream, say
from trajhub_assets.resources import ProjectResource
from trajhub_assets.scaffolds.baselines import BaselinePolicies, upstream_policy
from trajhub_assets.store import Store
from trajhub_assets.tasks.catalog import load_catalog

TRAJHUB = [sys.executable, "-m", "trajhub_assets.cli"]
TASK = "demo-lru-eviction"
MODEL_KEY, JUDGE_KEY = "sk-user-model-7f3a", "sk-user-judge-91c2"


def demo_task() -> dict:
    return next(i.record for i in load_catalog(load_config()) if i.record["instance_id"] == TASK)


def user_project(tmp_path, model_base: str, judge_base: str) -> str:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps(demo_task()) + "\n")
    config = tmp_path / "project.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "tasks": [{"path": str(tasks)}],
                "models": [
                    {
                        "name": "acme/careful",
                        "route": "openai/careful",
                        "api_base": model_base,
                        "api_key_env": "ACME_API_KEY",
                        "scaffold": "builtin",
                    }
                ],
                "sandbox": {"backend": "local", "timeout_s": 300},
                "judge": {"model": "judge", "base_url": judge_base, "api_key_env": "JUDGE_API_KEY"},
                "release": {"min_margin": 0.0, "replay_sample": 0},
            }
        )
    )
    return str(config)


def trajhub(*args, env):
    return subprocess.run(TRAJHUB + list(args), env=env, capture_output=True, text=True, timeout=900)


def user_env(tmp_path, config: str) -> dict:
    env = {
        **os.environ,
        "TRAJHUB_HOME": str(tmp_path / "home"),
        "TRAJHUB_CONFIG": config,
        "ACME_API_KEY": MODEL_KEY,
        "JUDGE_API_KEY": JUDGE_KEY,
    }
    env.pop("DAGSTER_HOME", None)
    return env


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("user")
    with (
        ScriptedUpstream(upstream_policy(BaselinePolicies([demo_task()]))) as provider,
        ScriptedUpstream(upstream_policy(BaselinePolicies([]))) as judge,
    ):
        config = user_project(tmp_path, f"{provider.url}/v1", f"{judge.url}/v1")
        done = trajhub("run", env=user_env(tmp_path, config))
        yield {
            "done": done,
            "provider": list(provider.served),
            "judge": list(judge.served),
            "store": Store(tmp_path / "home"),
            "home": tmp_path / "home",
        }


def test_a_model_configured_with_its_own_endpoint_and_key_is_called_there(user_run):
    done = user_run["done"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    served = user_run["provider"]
    assert served, "the model's own api_base received nothing"
    assert {s.request.headers.get("authorization") for s in served} == {f"Bearer {MODEL_KEY}"}
    assert all(s.status == 200 for s in served)
    # Every call the provider received is a recorded call of the run, and the other way round.
    calls = (
        user_run["store"]
        .sql("SELECT count(*) AS n, count(DISTINCT run_id) AS runs FROM raw_calls WHERE model = 'acme__careful'")
        .to_pylist()[0]
    )
    assert calls == {"n": len(served), "runs": 1}


def test_an_outside_judge_gets_its_own_key_and_never_the_master_key(user_run):
    judged = user_run["judge"]
    assert judged, "the judge's base_url received nothing"
    assert {s.request.headers.get("authorization") for s in judged} == {f"Bearer {JUDGE_KEY}"}
    for served in user_run["provider"] + judged:
        assert "sk-trajhub-" not in json.dumps(served.request.headers)
    assert "sk-trajhub-" not in json.dumps([s.request.body for s in judged])


def test_the_users_run_releases_rewards_and_no_key(user_run):
    store, home = user_run["store"], user_run["home"]
    rewards = store.sql("SELECT reward FROM trajectory_rewards").column("reward").to_pylist()
    assert rewards and None not in rewards
    release = next((home / "releases").rglob("README.md")).parent
    for path in [*home.joinpath("tables").rglob("*.parquet"), *release.rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            assert MODEL_KEY.encode() not in data and JUDGE_KEY.encode() not in data, path


def test_when_every_run_fails_the_command_fails_and_no_release_is_cut(tmp_path):
    with ScriptedUpstream(upstream_policy(BaselinePolicies([]))) as judge:
        closed = f"http://127.0.0.1:{_closed_port()}/v1"  # the model's endpoint is down
        config = user_project(tmp_path, closed, f"{judge.url}/v1")
        done = trajhub("run", env=user_env(tmp_path, config))
    assert done.returncode != 0
    assert "raw_trajectories: all 1 runs of this batch failed; the first: acme__careful~" in done.stderr, done.stderr[
        -3000:
    ]
    assert not (tmp_path / "home" / "releases").exists()
    # Nothing recorded is lost: the failed run is a row with its error, its calls are stored.
    store = Store(tmp_path / "home")
    runs = store.sql("SELECT run_id, error FROM runs").to_pylist()
    assert len(runs) == 1 and "connect" in runs[0]["error"].lower()  # the model's endpoint, not ours
    assert store.sql("SELECT count(*) AS n FROM raw_calls").to_pylist()[0]["n"] >= 1


def test_the_release_refuses_to_cut_from_zero_trajectories(tmp_path):
    from dagster import DagsterInstance, materialize

    from trajhub_assets.definitions import defs
    from trajhub_assets.resources import StoreResource

    config = user_project(tmp_path, "http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1")
    project = ProjectResource(path=config)
    res = {
        "store": StoreResource(root=str(tmp_path / "home")),
        "project": project,
        "proxy": ProxyResource(project=project),
    }
    result = materialize(
        list(defs.assets),
        selection=["tasks", "hf_dataset_release"],
        resources=res,
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data
    assert failure.user_failure_data.description == (
        "no release cut: there is no trajectory to release (no run has been recorded yet: "
        "materialize raw_trajectories first)"
    )
    assert not (tmp_path / "home" / "releases").exists()


def test_an_anthropic_route_with_its_own_endpoint_through_our_proxy_and_an_external_one(tmp_path):
    """`route: anthropic/...`, `api_base`, `api_key_env`: the proxy trajhub starts, and an external
    proxy started from `trajhub proxy-config`, both call that endpoint with that key."""
    config = tmp_path / "project.yaml"
    with ScriptedUpstream(lambda request: say("hello")) as provider:
        config.write_text(
            yaml.safe_dump(
                {
                    "tasks": [{"path": "tasks.jsonl"}],
                    "models": [
                        {
                            "name": "acme/claude",
                            "route": "anthropic/claude-acme-1",
                            "api_base": provider.url,
                            "api_key_env": "ACME_ANTHROPIC_KEY",
                            "scaffold": "claudecode",
                        }
                    ],
                }
            )
        )
        env = {"ACME_ANTHROPIC_KEY": "sk-ant-user-5e1d"}
        os.environ.update(env)
        try:
            ours = ProxyResource(project=ProjectResource(path=str(config)), recordings_dir=str(tmp_path / "rec"))
            try:
                _ask(ours.base_url, ours.key, "anthropic/claude-acme-1")
            finally:
                ours.teardown_after_execution(None)
            written = tmp_path / "external.yaml"
            out = trajhub("proxy-config", "--out", str(written), env={**os.environ, "TRAJHUB_CONFIG": str(config)})
            assert out.returncode == 0, out.stderr
            assert "sk-ant-user" not in written.read_text()  # the key is named, not written
            with ProxyProcess(tmp_path / "rec-external", config=written) as external:
                _ask(external.url, external.master_key, "anthropic/claude-acme-1")
        finally:
            os.environ.pop("ACME_ANTHROPIC_KEY")
        served = list(provider.served)
    assert len(served) == 2
    for s in served:
        assert s.request.path == "/v1/messages" and s.request.body["model"] == "claude-acme-1"
        assert s.request.headers.get("x-api-key") == "sk-ant-user-5e1d"
        assert "sk-trajhub-" not in json.dumps(s.request.headers)


def test_models_sharing_a_route_must_agree_on_its_endpoint():
    from trajhub_assets.config import ModelConfig
    from trajhub_assets.errors import ConfigError

    a = ModelConfig(name="a", route="openai/x", api_base="http://one", scaffold="builtin")
    b = ModelConfig(name="b", route="openai/x", api_base="http://two", scaffold="builtin")
    with pytest.raises(ConfigError, match="'a' and 'b' both use route 'openai/x'"):
        project_proxy_config([a, b])
    routes = project_proxy_config([a, a.model_copy(update={"name": "c"})])["model_list"]
    assert routes[0] == {"model_name": "openai/x", "litellm_params": {"model": "openai/x", "api_base": "http://one"}}
    assert routes[1]["model_name"] != "openai/x"  # then the bundled ones, unchanged


def _ask(base_url: str, key: str, model: str) -> None:
    response = httpx.post(
        f"{base_url}/v1/messages",
        timeout=60,
        headers={"x-api-key": key},
        json={"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 200, response.text


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
