"""Running the pipeline on one machine: the Dagster instance, one stage (a named job) over a
partition range, the whole pipeline stage by stage, and one model's backfill, in batches in this
process or handed to the daemon. The `trajhub` command, the tests and the benchmarks call these.

Each stage is one run over all its partitions, as a backfill with BackfillPolicy.multi_run batches
them. A failed run raises TrajhubError; progress is logged, and printing is the caller's.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dagster import (
    AssetKey,
    DagsterInstance,
    DagsterRun,
    Definitions,
    ExecuteInProcessResult,
    JobDefinition,
    JobExecutionResult,
    PartitionKeyRange,
    RunsFilter,
    execute_job,
    partition_loading_context,
)
from dagster._core.definitions.reconstruct import ReconstructableRepository

from trajhub_assets.automation import apply_pool_limits
from trajhub_assets.config import ModelConfig, ProjectConfig
from trajhub_assets.errors import TrajhubError
from trajhub_assets.jobs import (
    BACKFILL_TAG,
    IN_PROGRESS,
    MODEL_TAG,
    PARTITION_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    RECORD_AND_SCORE_ASSETS,
    STAGE_ASSETS,
    STAGE_TAG,
    branch_job,
    build_pairs_job,
    record_and_score_job,
    release_job,
    reload_catalog_job,
)
from trajhub_assets.partitions import BATCHED, contiguous_ranges, instances_partitions, models_partitions, run_key
from trajhub_assets.store import Store
from trajhub_assets.tasks.assets import register_partitions
from trajhub_assets.tasks.schema import TASKS

log = logging.getLogger(__name__)

QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}  # Dagster's steps log at DEBUG
WRITER_WAIT_S = 3600  # how long a run waits for another run writing the same partitions


def _defs() -> Definitions:
    # The code location reads the config when imported: only what runs something needs it.
    from trajhub_assets.definitions import defs

    return defs


_BOUND: dict[int, tuple[Mapping, Definitions]] = {}  # id(resources) -> (resources, their definitions)


def _job_def(name: str, resources: Mapping | None) -> JobDefinition:
    """The named job, bound to `resources` when they are not the code location's: Dagster will not
    run some of a job's assets with resources replaced at execution."""
    defs = _defs()
    if resources is None or resources is defs.resources:
        return defs.resolve_job_def(name)
    if id(resources) not in _BOUND:
        _BOUND[id(resources)] = (
            resources,
            Definitions(assets=defs.assets, asset_checks=defs.asset_checks, jobs=defs.jobs, resources=resources),
        )
    return _BOUND[id(resources)][1].resolve_job_def(name)


def dagster_instance(store: Store) -> DagsterInstance:
    """The persistent Dagster instance: $DAGSTER_HOME, else SQLite under the store root."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(store.root / "dagster")))
    home.mkdir(parents=True, exist_ok=True)
    settings = home / "dagster.yaml"
    if home == store.root / "dagster" and not settings.exists():
        # Ours: SQLite under it, as Dagster's default; no telemetry (and no banner about it).
        settings.write_text("telemetry:\n  enabled: false\n")
    return DagsterInstance.get()


def run_stage(
    instance: DagsterInstance,
    job,
    keys: list[str] | None = None,
    *,
    resources: Mapping | None = None,
    selection: list[str] | None = None,
    model: str | None = None,
    backfill: str | None = None,
    run_config: Mapping = QUIET,
    wait_s: float = WRITER_WAIT_S,
) -> ExecuteInProcessResult | JobExecutionResult:
    """One run of `job`, one of jobs.py's (or of `selection`, some of its assets), over the partition
    range from keys[0] to keys[-1] when given, with the code location's resources unless `resources`
    replace them; tagged with its model and backfill when it has them. It starts once no other
    run is writing any of the same assets' partitions (waiting up to `wait_s`)."""
    tags = {}  # the job's own tags add trajhub/stage
    if model:
        tags[MODEL_TAG] = model
    if backfill:
        tags[BACKFILL_TAG] = backfill
    if keys:
        tags |= {RANGE_START_TAG: str(keys[0]), RANGE_END_TAG: str(keys[-1])}
    log.info(
        "running %s%s%s",
        job.name,
        f" ({', '.join(selection)})" if selection else "",
        f" over {keys[0]} .. {keys[-1]}" if keys else "",
    )
    job_def = _job_def(job.name, resources)
    assets = [AssetKey(name) for name in selection] if selection else None
    wait_for_writers(instance, job_def, selection or STAGE_ASSETS[job.name], keys, wait_s)
    if job_def.executor_def.name == "celery":
        # Steps run in Celery workers, which rebuild the job from the code location by name
        # (resources replaced by a caller make an in-process job, which never gets here).
        code_location = ReconstructableRepository.for_module("trajhub_assets.definitions", "defs")
        result = execute_job(
            code_location.get_reconstructable_job(job.name),
            instance,
            run_config=run_config,
            tags=tags,
            asset_selection=assets,
        )
    else:
        result = job_def.execute_in_process(
            instance=instance, tags=tags, run_config=run_config, raise_on_error=False, asset_selection=assets
        )
    if not result.success:
        raise TrajhubError(f"{job.name} failed (run {result.run_id}): {first_failure(result)}")
    return result


def wait_for_writers(
    instance: DagsterInstance, job_def: JobDefinition, assets: list[str], keys: list[str] | None, wait_s: float
) -> None:
    """Until no unfinished run materializes any of `assets` for a partition in keys[0]..keys[-1]
    (any, for an unpartitioned job). Two runs writing one partition at once could leave its tables
    from different runs; one after the other, the last writer's tables replace the first's whole.
    A TrajhubError after `wait_s` names the run in the way."""
    deadline, said = time.monotonic() + wait_s, None
    writing = {AssetKey(a) for a in assets}
    # The partitions of keys[0]..keys[-1], listed once and only if some run writes the same assets.
    mine = functools.cache(lambda: set(_keys_in(job_def, keys[0], keys[-1], instance)))
    while (writer := _writer_of(instance, job_def, writing, keys, mine)) is not None:
        what = f"run {writer.run_id} ({writer.job_name}, {writer.status.value}) is writing some of the same partitions"
        if time.monotonic() > deadline:
            raise TrajhubError(
                f"{job_def.name}: {what}, still after {wait_s:.0f} s; if its process is gone, terminate it in "
                "the Dagster UI (Runs, Terminate) and start this again"
            )
        if writer.run_id != said:
            log.info("%s waits: %s", job_def.name, what)
            said = writer.run_id
        time.sleep(min(2.0, wait_s / 10))


def _writer_of(
    instance: DagsterInstance, job_def: JobDefinition, assets: set, keys: list[str] | None, mine: Callable[[], set]
) -> DagsterRun | None:
    for run in instance.get_runs(RunsFilter(statuses=IN_PROGRESS)):
        theirs = run.asset_selection or {AssetKey(a) for a in STAGE_ASSETS.get(run.job_name, [])}
        if not theirs & assets:
            continue
        if not keys or not job_def.partitions_def:
            return run
        if RANGE_START_TAG in run.tags:
            writing = set(_keys_in(job_def, run.tags[RANGE_START_TAG], run.tags[RANGE_END_TAG], instance))
        elif PARTITION_TAG in run.tags:
            writing = {run.tags[PARTITION_TAG]}
        else:
            return run  # these assets, with no partitions said: it may write any
        if mine() & writing:
            return run
    return None


def _keys_in(job_def: JobDefinition, start: str, end: str, instance: DagsterInstance) -> list[str]:
    with partition_loading_context(dynamic_partitions_store=instance):  # the instances are dynamic
        return job_def.partitions_def.get_partition_keys_in_range(PartitionKeyRange(start, end))


def first_failure(result: ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure:
            failure = event.step_failure_data.user_failure_data  # a dagster.Failure says it plainly
            if failure is not None and failure.description:
                return f"{event.step_key}: {failure.description}"
            error = event.step_failure_data.error
            while error.cause is not None:  # Dagster wraps the asset's own exception
                error = error.cause
            return error.message.strip()
    return "see the Dagster logs"


def prepare(instance: DagsterInstance, resources: Mapping | None = None) -> ProjectConfig:
    """Load the catalog if it is not stored yet, register the partitions and set the pool limits."""
    resources = resources or _defs().resources
    config, store = resources["project"].load(), resources["store"].get()
    if not store.exists(TASKS):
        run_stage(instance, reload_catalog_job, resources=resources)
    register_partitions(instance, store, config)
    apply_pool_limits(instance, config.pools)
    return config


def run_pipeline(
    instance: DagsterInstance, *, catalog_only: bool = False, resources: Mapping | None = None
) -> list[str]:
    """The whole asset graph, stage by stage (`catalog_only`: the catalog and the partitions);
    the ids of its runs."""
    runs = [run_stage(instance, reload_catalog_job, resources=resources)]  # the sources may have changed
    config = prepare(instance, resources)
    instances = instances_partitions.get_partition_keys(dynamic_partitions_store=instance)
    # Models imported from files (`trajhub import`) are partitions too, but have no agent to run.
    model_ranges = contiguous_ranges(
        models_partitions.get_partition_keys(dynamic_partitions_store=instance), [model.key for model in config.models]
    )
    if not catalog_only and instances and model_ranges:
        for models in model_ranges:
            runs.append(
                run_stage(
                    instance,
                    record_and_score_job,
                    [run_key(models[0], instances[0]), run_key(models[-1], instances[-1])],
                    resources=resources,
                    model=models[0] if len(models) == 1 else None,
                )
            )
        for models in branched_ranges(config, models_partitions.get_partition_keys(dynamic_partitions_store=instance)):
            keys = [run_key(models[0], instances[0]), run_key(models[-1], instances[-1])]
            runs.append(run_stage(instance, branch_job, keys, resources=resources))
        runs.append(run_stage(instance, build_pairs_job, instances, resources=resources))
        runs.append(run_stage(instance, release_job, resources=resources))
    return [run.run_id for run in runs]


def branched_ranges(config: ProjectConfig, registered: list[str]) -> list[list[str]]:
    """The model keys whose runs the pipeline branches (branching.enabled, branching.models), in
    contiguous ranges of the registered models; none when branching is off."""
    branching = config.branching
    if not branching.enabled:
        return []
    wanted = [m.key for m in config.models if branching.branches(m.name)]
    return contiguous_ranges(registered, wanted)


@dataclass
class Backfill:
    """One model over the instances it is to run; `backfill_id` is its runs' trajhub/backfill tag."""

    model: ModelConfig
    instances: list[str]
    backfill_id: str
    run_ids: list[str] = field(default_factory=list)


def _plan_backfill(instance: DagsterInstance, model_name: str, missing: bool, resources: Mapping | None) -> Backfill:
    resources = resources or _defs().resources
    model = resources["project"].load().model(model_name)  # a ConfigError names the known models
    prepare(instance, resources)
    instances = instances_partitions.get_partition_keys(dynamic_partitions_store=instance)
    if missing:
        done = instance.get_materialized_partitions(AssetKey(RECORD_AND_SCORE_ASSETS[0]))
        instances = [i for i in instances if run_key(model.key, i) not in done]
    return Backfill(model, instances, backfill_id=f"{model.key}-{int(time.time())}")


def backfill_model(
    instance: DagsterInstance,
    model_name: str,
    *,
    missing: bool = False,
    batch_size: int | None = None,
    release: bool = True,
    resources: Mapping | None = None,
) -> Backfill:
    """One model over every instance (`missing`: those it has not run) in this process: the
    record_and_score stage in batches of `batch_size` instances, one run each, then the pairs of
    those instances and, with `release`, a release. Nothing runs if no instance is left."""
    backfill = _plan_backfill(instance, model_name, missing, resources)
    if not backfill.instances:
        return backfill
    ordered = instances_partitions.get_partition_keys(dynamic_partitions_store=instance)
    batches = contiguous_ranges(ordered, backfill.instances, batch_size or BATCHED.max_partitions_per_run)
    key, config = backfill.model.key, (resources or _defs().resources)["project"].load()

    def run(job, keys=None, **tags):
        result = run_stage(instance, job, keys, resources=resources, backfill=backfill.backfill_id, **tags)
        backfill.run_ids.append(result.run_id)

    log.info(
        "backfilling %s over %d instances in %d run(s) (tag %s)",
        backfill.model.name,
        len(backfill.instances),
        len(batches),
        backfill.backfill_id,
    )
    for number, batch in enumerate(batches, start=1):
        log.info("batch %d/%d: %d instances", number, len(batches), len(batch))
        run(record_and_score_job, [run_key(key, batch[0]), run_key(key, batch[-1])], model=key)
        if branched_ranges(config, [key]):
            run(branch_job, [run_key(key, batch[0]), run_key(key, batch[-1])], model=key)
    for batch in contiguous_ranges(ordered, backfill.instances, BATCHED.max_partitions_per_run):
        run(build_pairs_job, [batch[0], batch[-1]])
    if release:
        run(release_job)
    return backfill


def submit_backfill(
    instance: DagsterInstance, model_name: str, *, missing: bool = False, resources: Mapping | None = None
) -> Backfill:
    """One Dagster backfill of the record_and_score assets of one model over every instance
    (`missing`: those it has not run), for the daemon (`dagster dev`) to run in batches."""
    backfill = _plan_backfill(instance, model_name, missing, resources)
    if backfill.instances:
        _add_backfill(instance, backfill)
    return backfill


def _add_backfill(instance: DagsterInstance, backfill: Backfill) -> None:
    # Dagster has no public API to submit an asset backfill (the UI's GraphQL mutation builds this
    # PartitionBackfill and adds it to the instance), so this is the one private import here.
    from dagster._core.execution.backfill import PartitionBackfill

    key = backfill.model.key
    instance.add_backfill(
        PartitionBackfill.from_asset_partitions(
            backfill_id=backfill.backfill_id,
            asset_graph=_defs().resolve_asset_graph(),
            partition_names=[run_key(key, i) for i in backfill.instances],
            asset_selection=[AssetKey(name) for name in RECORD_AND_SCORE_ASSETS],
            backfill_timestamp=time.time(),
            tags={STAGE_TAG: record_and_score_job.name, MODEL_TAG: key, BACKFILL_TAG: backfill.backfill_id},
            dynamic_partitions_store=instance,
            all_partitions=False,
            title=f"trajhub backfill {backfill.model.name}",
            description=None,
            run_config=None,
        )
    )
