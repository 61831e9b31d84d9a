import pytest
import yaml

from trajhub_assets.config import DEFAULT_CONFIG, load_config
from trajhub_assets.errors import ConfigError


def write(tmp_path, config: dict):
    path = tmp_path / "project.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


BASE = {
    "tasks": [{"path": "tasks.jsonl"}],
    "models": [
        {"name": "openai/gpt-4.1", "route": "openai/gpt-4.1", "scaffold": "builtin", "api_key_env": "OPENAI_API_KEY"}
    ],
}


def test_bundled_demo_config_loads():
    config = load_config(DEFAULT_CONFIG)
    assert {m.scaffold for m in config.models} == {"builtin"}
    assert config.resolve(config.tasks[0].path).exists()
    assert config.model("baseline__careful").name == "baseline/careful"


def test_paths_are_relative_to_the_config_file(tmp_path):
    config = load_config(write(tmp_path, BASE))
    assert config.resolve("tasks.jsonl") == tmp_path / "tasks.jsonl"


def test_api_key_is_read_from_the_environment_only(tmp_path, monkeypatch):
    config = load_config(write(tmp_path, BASE))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    assert config.models[0].api_key() == "sk-test-123"
    assert "sk-test" not in config.model_dump_json()


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c: c["models"][0].update(scaffold="cursor"),
            r"models\[0\]\.scaffold: .*unknown scaffold 'cursor'; "
            r"known: claudecode, kilo-dev, droid, mini-swe-agent, builtin",
        ),
        (lambda c: c["models"][0].update(api_key="sk-abc"), r"models\[0\]\.api_key: Extra inputs"),
        (lambda c: c["models"][0].update(samples=0), r"models\[0\]\.samples"),
        (lambda c: c["models"][0].update(name="a__b"), r"models\[0\]\.name: .*never '__'"),
        (lambda c: c["models"].append(dict(c["models"][0])), r"models: .*listed twice"),
        (lambda c: c["tasks"][0].update(hf_dataset="x/y"), r"tasks\[0\]: .*exactly one"),
        (lambda c: c.update(rewards={"trajectory_weights": {"outcome": -1}}), r"rewards\.trajectory_weights"),
        (lambda c: c.update(sandbox={"backend": "podman"}), r"sandbox\.backend"),
        (lambda c: c.update(tasks=[]), r"tasks: List should have at least 1 item"),
    ],
)
def test_errors_name_the_field(tmp_path, change, message):
    config = {**BASE, "models": [dict(m) for m in BASE["models"]], "tasks": [dict(BASE["tasks"][0])]}
    change(config)
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, config))


def test_unreadable_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
