"""The Dagster code location: only assembles what the domain folders define."""

from dagster import Definitions

from trajhub_assets.resources import ProjectResource, StoreResource
from trajhub_assets.tasks.assets import partitions_sensor, tasks

defs = Definitions(
    assets=[tasks],
    sensors=[partitions_sensor],
    resources={"store": StoreResource(), "project": ProjectResource()},
)
