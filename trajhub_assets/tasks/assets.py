"""The `tasks` asset and the sensor that keeps the partitions in step with it."""

from collections import Counter

from dagster import (
    AssetExecutionContext,
    DefaultSensorStatus,
    MaterializeResult,
    MetadataValue,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset,
    sensor,
)

from trajhub_assets.automation import apply_pool_limits
from trajhub_assets.errors import StoreError
from trajhub_assets.interchange.schema import IMPORTS
from trajhub_assets.partitions import instances_partitions, missing_keys, models_partitions
from trajhub_assets.resources import ProjectResource, StoreResource
from trajhub_assets.tasks.catalog import load_catalog, tasks_to_table
from trajhub_assets.tasks.schema import TASKS


@asset(
    group_name="tasks",
    kinds={"parquet"},
    description="The task catalog: every task record of the config's sources, validated.",
)
def tasks(context: AssetExecutionContext, store: StoreResource, project: ProjectResource) -> MaterializeResult:
    # Loading raises before anything is written, so a broken file leaves the old table.
    table = tasks_to_table(load_catalog(project.load()))
    path = store.get().write(TASKS, table)
    categories = Counter(table.column("category").to_pylist())
    context.log.info("stored %d tasks at %s", table.num_rows, path)
    return MaterializeResult(
        metadata={
            "rows": table.num_rows,
            "runnable": sum(c is not None for c in table.column("test_command").to_pylist()),
            "path": MetadataValue.path(str(path)),
            "categories": MetadataValue.md(
                "| category | tasks |\n|---|---|\n"
                + "\n".join(f"| {name} | {n} |" for name, n in categories.most_common())
            ),
        }
    )


def partition_requests(instance, store, config) -> list:
    """Add requests for the models in the config and instances in the stored catalog."""
    requests = []
    new_models = missing_keys([m.key for m in config.models], instance.get_dynamic_partitions(models_partitions.name))
    if new_models:
        requests.append(models_partitions.build_add_request(new_models))
    try:
        instance_ids = store.read(TASKS).column("instance_id").to_pylist()
    except StoreError:
        instance_ids = []  # the catalog is not materialized yet
    new_instances = missing_keys(instance_ids, instance.get_dynamic_partitions(instances_partitions.name))
    if new_instances:
        requests.append(instances_partitions.build_add_request(new_instances))
    return requests


def unknown_models(instance, store, config) -> list[str]:
    """`models` partitions of no configured model and no import: a typo in "Add a partition",
    or a model removed from the config. Automation never runs them (automation.ModelInConfig)."""
    configured = {model.key for model in config.models}
    unknown = [key for key in instance.get_dynamic_partitions(models_partitions.name) if key not in configured]
    if unknown and IMPORTS.name in store.table_names():  # `trajhub import` models have rows, no agent
        imported = set(store.sql(f"SELECT DISTINCT model FROM {IMPORTS.name}").column("model").to_pylist())
        unknown = [key for key in unknown if key not in imported]
    return unknown


def unknown_model_message(key: str) -> str:
    # Never deleted for the user: a partition's stored data would vanish from the UI with it.
    return (
        f"models partition {key!r} is not in the project config: automation will not run it "
        "(add the model to the config, or delete the partition in the UI: an asset's Partitions "
        "tab, Delete partitions)"
    )


def register_partitions(instance, store, config) -> None:
    """Apply the sensor's requests directly (the CLI and tests, where no daemon runs sensors)."""
    for request in partition_requests(instance, store, config):
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))


@sensor(
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Registers `models` partitions from the config and `instances` from the catalog, "
    "sets the pool limits from the config, and names models partitions automation "
    "will not run.",
)
def partitions_sensor(
    context: SensorEvaluationContext, store: StoreResource, project: ProjectResource
) -> SensorResult | SkipReason:
    config, store = project.load(), store.get()
    apply_pool_limits(context.instance, config.pools)
    unknown = [unknown_model_message(key) for key in unknown_models(context.instance, store, config)]
    for message in unknown:
        context.log.warning(message)
    requests = partition_requests(context.instance, store, config)
    if not requests:
        return SkipReason("; ".join(["models and instances are up to date", *unknown]))
    return SensorResult(dynamic_partitions_requests=requests)
