"""The pipeline's stages as named jobs, and the tags trajhub puts on their runs.

A run of `trajhub run` or `trajhub backfill` is one of these jobs over a partition range, so the
UI and `instance.get_runs` say which stage it was (not `__ephemeral_asset_job__`), and its tags
say for which model and as part of which backfill. The schedule and the release sensor start
the same jobs.
"""

from dagster import DagsterRunStatus, define_asset_job

# One run's stages, upstream first: one job runs them over a batch of (model, instance) keys.
RECORD_AND_SCORE_ASSETS = [
    "raw_trajectories",
    "merged_trajectories",
    "rule_rewards",
    "judge_rewards",
    "trajectory_rewards",
]
# A release, and the replay of a sample of it (the proof its runs are real).
RELEASE_ASSETS = ["reward_calibration", "leaderboard", "hf_dataset_release", "release_replay"]

STAGE_TAG, MODEL_TAG, BACKFILL_TAG = "trajhub/stage", "trajhub/model", "trajhub/backfill"


STAGE_ASSETS: dict[str, list[str]] = {}  # job name -> the assets it materializes


def _stage(name: str, selection: list[str], description: str):
    # The tag goes on every run of the job: from the CLI, the schedule, a sensor or the UI.
    STAGE_ASSETS[name] = selection
    return define_asset_job(name, selection=selection, description=description, tags={STAGE_TAG: name})


reload_catalog_job = _stage("reload_catalog", ["tasks"], "Reload the task catalog from the config's sources.")
record_and_score_job = _stage(
    "record_and_score",
    RECORD_AND_SCORE_ASSETS,
    "Run the agents on a batch of (model, instance) partitions, merge and score the runs.",
)
# The branching of scored runs (branching.enabled): continuations, their scores, their pairs.
BRANCH_ASSETS = ["branched_trajectories", "branch_rewards", "branch_pairs"]
branch_job = _stage(
    "branch_and_score",
    BRANCH_ASSETS,
    "Branch the scored runs of a batch of (model, instance) partitions, score and pair the continuations.",
)
# Not "preference_pairs": a job may not share its name with an asset's op.
build_pairs_job = _stage("build_pairs", ["preference_pairs"], "The preference pairs of a batch of instances.")
release_job = _stage("cut_release", RELEASE_ASSETS, "Calibration, leaderboard and the Hugging Face dataset release.")
JOBS = [reload_catalog_job, record_and_score_job, branch_job, build_pairs_job, release_job]

# Dagster reads a run's partition range from these tags, or its one partition from the last;
# they have no public constant, and execute_in_process takes a single partition key only.
RANGE_START_TAG, RANGE_END_TAG = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
PARTITION_TAG = "dagster/partition"

# A run that has started and not finished (a suspended one too): what the release waits for.
IN_PROGRESS = [
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
    DagsterRunStatus.SUSPENDED,
]
