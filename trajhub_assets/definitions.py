"""The Dagster code location: only assembles what the domain folders define.

The environment picks the resources, as hooli-data-eng-pipelines does: `demo` serves the
scripted baseline models and judge behind the proxy, `local` talks to real providers only.
$TRAJHUB_ENV names it; by default a project that uses the baselines is the demo.
$TRAJHUB_EXECUTOR picks the executor of every job: Dagster's default (steps in processes of
this machine) or `celery` (steps on Celery workers, with the settings of
$TRAJHUB_CELERY_SETTINGS, by default trajhub_assets/deploy/celery/celery.yaml).
"""

import os
from pathlib import Path

import yaml
from dagster import AssetSpec, Definitions, ExecutorDefinition

from trajhub_assets.automation import automation_sensor, make_release_sensor, nightly_refresh, run_new_partitions
from trajhub_assets.branching.assets import branch_pairs, branch_rewards, branched_trajectories
from trajhub_assets.config import ProjectConfig
from trajhub_assets.deploy import CELERY_SETTINGS
from trajhub_assets.errors import ConfigError
from trajhub_assets.jobs import JOBS
from trajhub_assets.merge.assets import merged_trajectories
from trajhub_assets.pairs.assets import preference_pairs_asset
from trajhub_assets.recording.assets import raw_trajectories
from trajhub_assets.recording.resources import ProxyResource
from trajhub_assets.release.assets import hf_dataset_release, leaderboard_asset, reward_calibration
from trajhub_assets.replay.assets import release_replay
from trajhub_assets.resources import ProjectResource, StoreResource
from trajhub_assets.rewards.assets import judge_rewards, rule_rewards, trajectory_rewards_asset
from trajhub_assets.scaffolds.baselines import uses_baselines
from trajhub_assets.tasks.assets import partitions_sensor, tasks
from trajhub_assets.versions import with_code_versions

ENVIRONMENTS = ("demo", "local")
EXECUTORS = ("default", "celery")

human_labels = AssetSpec(
    "human_labels",
    group_name="release",
    kinds={"parquet"},
    description="Human preference labels of pairs, loaded by `trajhub label import` (outside the graph).",
)

ASSETS = [
    tasks,
    raw_trajectories,
    merged_trajectories,
    rule_rewards,
    judge_rewards,
    trajectory_rewards_asset,
    branched_trajectories,
    branch_rewards,
    branch_pairs,
    preference_pairs_asset,
    human_labels,
    reward_calibration,
    leaderboard_asset,
    hf_dataset_release,
    release_replay,
]


def environment(config: ProjectConfig) -> str:
    env = os.environ.get("TRAJHUB_ENV") or ("demo" if uses_baselines(config) else "local")
    if env not in ENVIRONMENTS:
        raise ConfigError(f"TRAJHUB_ENV={env!r}: one of {', '.join(ENVIRONMENTS)}")
    return env


def executor() -> ExecutorDefinition | None:
    """The jobs' executor from $TRAJHUB_EXECUTOR; None is Dagster's default."""
    name = os.environ.get("TRAJHUB_EXECUTOR") or "default"
    if name not in EXECUTORS:
        raise ConfigError(f"TRAJHUB_EXECUTOR={name!r}: one of {', '.join(EXECUTORS)}")
    if name == "default":
        return None
    from dagster_celery import celery_executor  # the `cluster` extra

    # The workers read the same file (dagster-celery worker start -y), so both use one broker.
    settings = Path(os.environ.get("TRAJHUB_CELERY_SETTINGS") or CELERY_SETTINGS)
    return celery_executor.configured(yaml.safe_load(settings.read_text())["execution"]["config"])


def environment_resources(
    project: ProjectResource, env: str, store: StoreResource | None = None, **proxy_settings
) -> dict:
    store = store or StoreResource()
    proxy = ProxyResource(project=project, store=store, scripted_baselines=env == "demo", **proxy_settings)
    return {"store": store, "project": project, "proxy": proxy}


def build_definitions(project: ProjectResource) -> Definitions:
    config = project.load()  # schedules and code versions are part of the code location
    # Automation runs new partitions of the config's models only (the config read at each evaluation).
    recording = raw_trajectories.map_asset_specs(
        lambda spec: spec.replace_attributes(
            automation_condition=run_new_partitions(lambda: [model.key for model in project.load().models])
        )
    )
    assets = [recording if asset is raw_trajectories else asset for asset in ASSETS]
    return Definitions(
        assets=with_code_versions(assets, config),
        jobs=JOBS,
        schedules=[nightly_refresh(config.refresh)],
        sensors=[partitions_sensor, make_release_sensor(config.refresh), automation_sensor],
        resources=environment_resources(project, environment(config)),
        executor=executor(),
    )


defs = build_definitions(ProjectResource())
