"""Dagster resources shared by every domain: the store and the project config.

Local and cluster setups differ only in what these are given (a store root, a
config path), never in asset code.
"""

from dagster import ConfigurableResource

from trajhub_assets.config import ProjectConfig, load_config
from trajhub_assets.store import Store


class StoreResource(ConfigurableResource):
    """The Parquet store; `root` defaults to $TRAJHUB_HOME or ./.trajhub, `tables_uri` (where
    the tables live, e.g. s3://bucket/trajhub/tables) to $TRAJHUB_TABLES_URI or <root>/tables."""

    root: str | None = None
    tables_uri: str | None = None

    def get(self) -> Store:
        return Store(self.root, self.tables_uri)


class ProjectResource(ConfigurableResource):
    """The project config file; `path` defaults to $TRAJHUB_CONFIG or the bundled demo."""

    path: str | None = None

    def load(self) -> ProjectConfig:
        return load_config(self.path)
