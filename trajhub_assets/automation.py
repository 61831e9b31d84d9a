"""What runs without anyone pressing a button, and how much of it at once.

The nightly refresh, as Dagster runs it (`dagster dev`, or a deployed daemon):

1. `nightly_refresh` (a schedule on `refresh.cron`) reloads the task catalog.
2. `partitions_sensor` (tasks/assets.py) registers new instances, and any model newly added to the
   config, as partitions, and sets the pool limits below on the instance.
3. Automation conditions on the assets: a new (model, instance) partition of a model in the
   config is run once (`run_new_partitions`), so adding a model starts its backfill, while a
   partition of any other model (a typo in "Add a partition", a model imported from files) is
   never run; everything derived follows its
   inputs and recomputes when its code version changes (`FOLLOW_INPUTS`). Dagster's automation
   sensor requests these as backfills, batched by each asset's BackfillPolicy.
4. `release_sensor` cuts a release once the refresh has settled: something new since the last
   release, no run in progress, and nothing materialized for `refresh.release_quiet_minutes`.

Agents are never re-run on their own: a stale raw_trajectories partition (a new image, a new
client version) is re-run by a person (`trajhub backfill`, or Materialize in the UI).

Pools: every step that runs sandboxes holds a slot of the `sandboxes` pool, every step that calls
the judge one of `judge`; the limits come from the config's `pools:` section. A run that is
cancelled gives its slots back as its steps stop; the daemon's run monitoring frees the slots of
a run whose worker died (deploy/dagster.yaml sets `free_slots_after_run_end_seconds`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Collection

from dagster import (
    AssetKey,
    AssetSelection,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    AutomationContext,
    AutomationResult,
    BetaWarning,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from trajhub_assets.config import PoolsConfig, RefreshConfig
from trajhub_assets.jobs import IN_PROGRESS, release_job, reload_catalog_job
from trajhub_assets.partitions import run_partitions

SANDBOX_POOL, JUDGE_POOL = "sandboxes", "judge"
# What a release is built from: when any of these has news, a release is due.
RELEASE_INPUTS = ["preference_pairs", "trajectory_rewards", "tasks"]

# Agents cost money and time: a partition is run once, when it appears.
RUN_NEW_PARTITIONS = AutomationCondition.on_missing()
IN_CONFIG_LABEL = "model in the project config"


class ModelInConfig(AutomationCondition):
    """True for the (model, instance) partitions whose model is in the project config. A
    models partition typed by hand, or made by `trajhub import`, has no agent to run."""

    def __init__(self, model_keys: Callable[[], Collection[str]]):
        # Read at each evaluation, as partitions_sensor reads the config at each tick: the two
        # agree on what is configured without reloading the code location.
        self.model_keys = model_keys

    @property
    def name(self) -> str:
        return "model_in_config"

    @property
    def description(self) -> str:
        return IN_CONFIG_LABEL

    @property
    def requires_cursor(self) -> bool:
        return False  # no state: the same partitions give the same answer

    def get_label(self) -> str:
        return IN_CONFIG_LABEL

    def evaluate(self, context: AutomationContext) -> AutomationResult:
        configured = set(self.model_keys())
        keys = {
            key
            for key in context.candidate_subset.expensively_compute_partition_keys()
            if run_partitions.get_partition_key_from_str(str(key)).keys_by_dimension["model"] in configured
        }
        return AutomationResult(context, context.candidate_subset.compute_intersection_with_partition_keys(keys))


def run_new_partitions(model_keys: Callable[[], Collection[str]]) -> AutomationCondition:
    """RUN_NEW_PARTITIONS, for the partitions of the models `model_keys()` returns (the config's)."""
    return (ModelInConfig(model_keys) & RUN_NEW_PARTITIONS).with_label("new partition of a model in the config")


def _follow_inputs(*, wait_for_missing_inputs: bool) -> AutomationCondition:
    condition = (
        (
            AutomationCondition.newly_missing()
            | AutomationCondition.any_deps_updated()
            | AutomationCondition.code_version_changed()
        ).since_last_handled()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
        & AutomationCondition.all_deps_blocking_checks_passed()
    )
    if wait_for_missing_inputs:
        condition = condition & ~AutomationCondition.any_deps_missing()
    return condition.with_label("follow inputs and code version")


# Like Dagster's eager(), plus a new code version (a merge or ruleset change) makes it stale.
FOLLOW_INPUTS = _follow_inputs(wait_for_missing_inputs=True)
# An instance's pairs come from every model's runs of it; one model that never ran it (its run
# failed, or it was added later) must not hold the others' pairs back.
FOLLOW_ANY_INPUTS = _follow_inputs(wait_for_missing_inputs=False)

# Dagster's own sensor for the conditions above would start stopped; the refresh is meant to run.
# ModelInConfig is our own Python, so the sensor runs in the code location, not in the daemon
# (a beta parameter, used knowingly: no warning on every import of this module).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", BetaWarning)
    automation_sensor = AutomationConditionSensorDefinition(
        "automation_sensor",
        target=AssetSelection.all(),
        default_status=DefaultSensorStatus.RUNNING,
        use_user_code_server=True,
        description="Runs new partitions and what follows from them (trajhub_assets/automation.py).",
    )


def nightly_refresh(config: RefreshConfig) -> ScheduleDefinition:
    return ScheduleDefinition(
        name="nightly_refresh",
        job=reload_catalog_job,
        cron_schedule=config.cron,
        execution_timezone=config.timezone,
        default_status=DefaultScheduleStatus.RUNNING,
        description="Reload the task catalog; the partitions sensor and the assets' automation "
        "conditions take it from there, and release_sensor cuts the release.",
    )


def _latest_materialization(instance, asset: str):
    records = instance.fetch_materializations(AssetKey(asset), limit=1).records
    return records[0] if records else None


def release_due(instance, quiet_minutes: float, now: float | None = None) -> RunRequest | SkipReason:
    """A release run when something new has landed since the last release and all is quiet."""
    busy = instance.get_runs_count(RunsFilter(statuses=IN_PROGRESS))
    if busy:
        return SkipReason(f"{busy} run(s) in progress: waiting for the refresh to settle")
    inputs = [r for r in (_latest_materialization(instance, a) for a in RELEASE_INPUTS) if r]
    if not inputs:
        return SkipReason("nothing materialized yet")
    newest = max(inputs, key=lambda r: r.storage_id)
    last_release = _latest_materialization(instance, "hf_dataset_release")
    if last_release is not None and last_release.storage_id > newest.storage_id:
        return SkipReason("nothing new since the last release")
    quiet_for = (now or time.time()) - newest.timestamp
    if quiet_for < quiet_minutes * 60:
        return SkipReason(
            f"last input materialized {quiet_for / 60:.1f} min ago; releasing after {quiet_minutes:g} quiet minutes"
        )
    return RunRequest(
        run_key=f"release-after-{newest.storage_id}", tags={"trajhub/release_after_storage_id": str(newest.storage_id)}
    )


def make_release_sensor(config: RefreshConfig):
    @sensor(
        name="release_sensor",
        job=release_job,
        minimum_interval_seconds=120,
        default_status=DefaultSensorStatus.RUNNING,
        description="Cut a release once the refresh has settled (see trajhub_assets/automation.py).",
    )
    def release_sensor(context: SensorEvaluationContext):
        return release_due(context.instance, config.release_quiet_minutes)

    return release_sensor


def apply_pool_limits(instance, pools: PoolsConfig) -> dict[str, int]:
    """Set the instance's limit of each pool from the config (idempotent); return them."""
    limits = {SANDBOX_POOL: pools.sandboxes, JUDGE_POOL: pools.judge}
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:  # an in-memory test instance has no pools
        for pool, limit in limits.items():
            if storage.get_concurrency_info(pool).slot_count != limit:
                storage.set_concurrency_slots(pool, limit)
    return limits
