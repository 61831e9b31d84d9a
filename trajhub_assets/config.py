"""The project config file: models, task sources, sandbox, proxy, judge, rewards, release.

One YAML file, validated here with pydantic so that every error names its field.
Secrets never live in it: a model or judge names the environment variable that
holds its key (`api_key_env`), and the key is read from the environment only when
a call is made.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trajhub_assets.errors import ConfigError
from trajhub_assets.partitions import model_key
from trajhub_assets.scaffolds import SCAFFOLDS

DEFAULT_CONFIG = Path(__file__).with_name("project.yaml")


class _Strict(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default,
    # and a pasted `api_key:` must not be accepted.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sampling(_Strict):
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, gt=0)
    extra: dict[str, object] = {}


class ModelConfig(_Strict):
    name: str = Field(description="Label of the model; its partition key is derived from it.")
    route: str = Field(description="LiteLLM model string, e.g. anthropic/claude-sonnet-4-5.")
    api_base: str | None = None
    api_key_env: str | None = Field(None, description="Environment variable holding the API key.")
    scaffold: str = Field(description="A scaffold of the registry (trajhub_assets/scaffolds).")
    samples: int = Field(1, ge=1, description="Attempts per (model, instance).")
    sampling: Sampling = Sampling()

    @field_validator("name")
    @classmethod
    def _name_has_a_key(cls, name: str) -> str:
        model_key(name)  # raises ValueError with the rule spelled out
        return name

    @field_validator("scaffold")
    @classmethod
    def _scaffold_is_registered(cls, scaffold: str) -> str:
        if scaffold not in SCAFFOLDS:
            raise ValueError(f"unknown scaffold {scaffold!r}; known: {', '.join(SCAFFOLDS)}")
        return scaffold

    @property
    def key(self) -> str:
        return model_key(self.name)

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class TaskSource(_Strict):
    path: str | None = Field(None, description="Local JSONL file, relative to the config file.")
    hf_dataset: str | None = Field(None, description="Hugging Face dataset id, loaded with `datasets`.")
    split: str = "train"
    revision: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> TaskSource:
        if (self.path is None) == (self.hf_dataset is None):
            raise ValueError("give exactly one of `path` or `hf_dataset`")
        return self


class SandboxConfig(_Strict):
    backend: Literal["docker", "local"] = "docker"
    docker_host: str | None = Field(None, description="Remote engine URL; default: the local socket.")
    network: Literal["internal", "bridge", "none"] = Field(
        "internal", description="internal: the host (and so the proxy) only; see sandbox/docker.py"
    )
    cpus: float = Field(2.0, gt=0)
    memory: str = "4g"
    pids: int = Field(512, gt=0)
    timeout_s: float = Field(1800, gt=0, description="Wall-clock limit of one run.")
    max_concurrent: int = Field(2, ge=1)


class ProxyConfig(_Strict):
    url: str | None = Field(None, description="External proxy; default: start one on loopback.")
    master_key_env: str | None = Field(None, description="Variable holding the external proxy's key.")
    workers: int = Field(1, ge=1, description="Worker processes of the proxy trajhub starts (--num_workers).")
    recordings_key_env: str | None = Field(
        None,
        description="Variable holding the external proxy's recordings key (TRAJHUB_RECORDINGS_KEY): runs' "
        "recordings are then fetched from the proxy, not read from a shared TRAJHUB_RECORDINGS_DIR.",
    )


class JudgeConfig(_Strict):
    model: str = "baseline/judge"
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint; default: our proxy.")
    api_key_env: str | None = None
    prompt_version: str = "v1"
    max_concurrent: int = Field(4, ge=1)
    max_retries: int = Field(3, ge=0)
    timeout_s: float = Field(120, gt=0)
    # Requests: a run's steps in one, its checklist in one (rewards/judge.py).
    max_steps_per_request: int = Field(40, ge=1, description="Steps graded per request; 1: one request per step.")
    max_prompt_chars: int = Field(
        150_000, ge=1000, description="Characters of steps per request (what precedes them is cut to 60,000 apart)."
    )
    checklist_per_category: bool = Field(False, description="One checklist request per category, not per run.")
    max_cost_per_run_usd: float | None = Field(None, ge=0, description="No judge request once a run spent this.")
    max_cost_per_release_usd: float | None = Field(
        None, ge=0, description="No judge request once the store's judge cache records this cost."
    )
    rubric_weights: dict[str, float] = {
        "goal_progress": 0.3,
        "tool_choice": 0.2,
        "argument_correctness": 0.2,
        "use_of_information": 0.15,
        "non_redundancy": 0.15,
    }

    @field_validator("rubric_weights")
    @classmethod
    def _check_weights(cls, weights: dict) -> dict:
        return _weights(weights)


class RewardConfig(_Strict):
    trajectory_weights: dict[Literal["outcome", "rules", "step", "checklist"], float] = {
        "outcome": 0.4,
        "rules": 0.1,
        "step": 0.25,
        "checklist": 0.25,
    }
    forbidden_commands: list[str] = ["rm -rf /", "git push --force", "git reset --hard"]

    @field_validator("trajectory_weights")
    @classmethod
    def _check_weights(cls, weights: dict) -> dict:
        return _weights(weights)


class ReleaseConfig(_Strict):
    name: str = "trajhub-demo"
    license: str = "mit"
    hf_repo: str | None = Field(None, description="Push target; pushing also needs the token variable.")
    hf_token_env: str = "HF_TOKEN"
    max_pairs_per_instance: int = Field(16, ge=1)
    min_margin: float = Field(0.05, ge=0)
    pair_candidates_per_run: int = Field(
        8,
        ge=1,
        description="Runs each run of an instance is compared with when looking for pairs, per kind "
        "(spread over the other models, seeded by the instance): candidates grow with runs, not runs squared.",
    )
    replay_sample: int = Field(2, ge=0, description="Runs of each release replayed by release_replay.")


class BranchingConfig(_Strict):
    """Where recorded runs are branched (trajhub_assets/branching) and how many branches they get."""

    enabled: bool = Field(
        False,
        description="Whether `trajhub run` and `trajhub backfill` branch, score and pair the runs after "
        "scoring them (job branch_and_score); the branching assets can be materialized by hand either way.",
    )
    models: list[str] | None = Field(
        None, description="Names of the models whose runs are branched; null: every model."
    )
    points: list[Literal["low_reward", "divergence", "even"]] = Field(
        ["low_reward", "divergence"],
        description="low_reward: steps the judge or a rule scored low; divergence: the step where the run "
        "and another run of its instance first differ; even: evenly spaced steps. In this order of preference.",
    )
    samples: int = Field(2, ge=1, description="Continuations sampled from each branch point.")
    max_per_run: int = Field(2, ge=0, description="Branch points of one run.")
    max_per_release: int | None = Field(None, ge=0, description="Branch points over every run; null: no limit.")
    low_reward_below: float = Field(0.5, description="A judged step reward below this is a low_reward point.")

    def branches(self, model_name: str) -> bool:
        """Whether the runs of the model named so are branched (`models`)."""
        return self.models is None or model_name in self.models


class RefreshConfig(_Strict):
    """The nightly refresh (trajhub_assets/automation.py)."""

    cron: str = Field("0 2 * * *", description="When the task catalog is reloaded (cron, in `timezone`).")
    timezone: str = "UTC"
    release_quiet_minutes: float = Field(
        10, ge=0, description="Cut the release once no run has been in progress for this long."
    )

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, cron: str) -> str:
        from dagster import DagsterInvalidDefinitionError, ScheduleDefinition

        try:  # what Dagster itself accepts, checked where it builds a schedule
            ScheduleDefinition(name="check", cron_schedule=cron, job_name="check")
        except DagsterInvalidDefinitionError:
            raise ValueError(f"{cron!r} is not a cron schedule (five fields, e.g. '0 2 * * *')") from None
        return cron


class PoolsConfig(_Strict):
    """Dagster pool limits: how many steps at once, across all runs, may hold each resource."""

    sandboxes: int = Field(
        1, ge=1, description="Steps running sandboxes (each runs up to sandbox.max_concurrent attempts)."
    )
    judge: int = Field(1, ge=1, description="Steps calling the judge (each makes up to judge.max_concurrent calls).")


class ProjectConfig(_Strict):
    tasks: list[TaskSource] = Field(min_length=1)
    models: list[ModelConfig] = []
    sandbox: SandboxConfig = SandboxConfig()
    proxy: ProxyConfig = ProxyConfig()
    judge: JudgeConfig = JudgeConfig()
    rewards: RewardConfig = RewardConfig()
    release: ReleaseConfig = ReleaseConfig()
    branching: BranchingConfig = BranchingConfig()
    refresh: RefreshConfig = RefreshConfig()
    pools: PoolsConfig = PoolsConfig()
    base_dir: Path = Field(Path("."), exclude=True, description="Directory of the config file.")

    @field_validator("models")
    @classmethod
    def _unique_models(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        seen: set[str] = set()
        for model in models:
            if model.name in seen:
                raise ValueError(f"model {model.name!r} is listed twice")
            seen.add(model.name)
        return models

    def model(self, name_or_key: str) -> ModelConfig:
        for model in self.models:
            if name_or_key in (model.name, model.key):
                return model
        raise ConfigError(f"no model {name_or_key!r} in the config; known: {[m.name for m in self.models]}")

    def resolve(self, path: str) -> Path:
        return (self.base_dir / path).resolve()


def _weights(weights: dict) -> dict:
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    return weights


def config_path() -> Path:
    return Path(os.environ.get("TRAJHUB_CONFIG", DEFAULT_CONFIG))


def load_config(path: str | os.PathLike | None = None) -> ProjectConfig:
    """Read and validate the project file ($TRAJHUB_CONFIG, else the bundled demo)."""
    path = Path(path) if path is not None else config_path()
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file: {error}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping, got {type(raw).__name__}")
    try:
        return ProjectConfig.model_validate({**raw, "base_dir": path.resolve().parent})
    except ValidationError as error:
        problems = "; ".join(f"{_location(e['loc'])}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"{path}: {problems}") from None


def _location(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))
