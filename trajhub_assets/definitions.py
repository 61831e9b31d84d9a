"""The Dagster code location: only assembles what the domain folders define."""

from dagster import Definitions

from trajhub_assets.automation import automation_sensor, make_release_sensor, nightly_refresh
from trajhub_assets.config import load_config
from trajhub_assets.jobs import JOBS
from trajhub_assets.merge.assets import merged_trajectories
from trajhub_assets.pairs.assets import preference_pairs_asset
from trajhub_assets.recording.assets import raw_trajectories
from trajhub_assets.recording.resources import ProxyResource
from trajhub_assets.replay.assets import release_replay
from trajhub_assets.release.assets import hf_dataset_release, leaderboard_asset, reward_calibration
from trajhub_assets.resources import ProjectResource, StoreResource
from trajhub_assets.rewards.assets import judge_rewards, rule_rewards
from trajhub_assets.tasks.assets import partitions_sensor, tasks

project = ProjectResource()
# Schedules are part of the code location, so the refresh settings are read when it loads.
refresh = load_config().refresh

defs = Definitions(
    assets=[tasks, raw_trajectories, merged_trajectories, rule_rewards, judge_rewards,
            preference_pairs_asset, reward_calibration, leaderboard_asset, hf_dataset_release,
            release_replay],
    jobs=JOBS,
    schedules=[nightly_refresh(refresh)],
    sensors=[partitions_sensor, make_release_sensor(refresh), automation_sensor],
    resources={"store": StoreResource(), "project": project, "proxy": ProxyResource(project=project)},
)
