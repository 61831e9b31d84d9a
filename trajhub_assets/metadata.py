"""Dagster metadata from the plain rows and texts the domain functions return.

Tables go to `MetadataValue.table`, whose cells the UI shows as text: in Markdown a run id
(`model~instance~0~nonce`) renders struck through, and `|` in a cell breaks the table.
"""

import os
import socket
from collections.abc import Mapping, Sequence

from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

_TYPES = {bool: "bool", int: "int", float: "float"}


def table(rows: Sequence[Mapping], columns: Sequence[str] | None = None):
    """A table of `rows` (dicts of str, int, float, bool or None), columns in `columns`' order."""
    columns = list(columns or (rows[0] if rows else []))
    types = {
        c: next((_TYPES.get(type(r[c]), "string") for r in rows if r.get(c) is not None), "string") for c in columns
    }
    return MetadataValue.table(
        [TableRecord({c: row.get(c) for c in columns}) for row in rows],
        schema=TableSchema([TableColumn(c, types[c]) for c in columns]),
    )


def batch_totals(totals: Mapping[str, float], partitions: int) -> dict:
    """A batch's totals, named as such: the run's metadata goes to every partition it made,
    next to each partition's own counts, with the process that made it (host:pid), which
    tells Celery workers apart."""
    return (
        {"batch_partitions": partitions}
        | {f"batch_{name}": value for name, value in totals.items()}
        | {"batch_worker": worker()}
    )


def worker() -> str:
    """This process as host:pid: where a step ran."""
    return f"{socket.gethostname()}:{os.getpid()}"


PER_PARTITION_LIMIT = 50  # runs over more partitions (backfill batches) record batch totals only


class PartitionMetadata:
    """Each partition's own metadata, on its materialization, in runs of up to
    PER_PARTITION_LIMIT partitions. A larger run (a backfill batch) records only its batch
    totals: Dagster resolves the run's whole partition range again on every per-partition call,
    looking its dynamic partitions up in the instance (~25 ms a call in a run of 200 here, more
    than most stages' own work per partition). The numbers are in the store's tables either way."""

    def __init__(self, context, partitions: int):
        self.context, self.partitions = context, partitions
        self.per_partition = partitions <= PER_PARTITION_LIMIT

    def add(self, partition_key: str, metadata: Mapping) -> None:
        if self.per_partition:
            self.context.add_asset_metadata(metadata, partition_key=partition_key)

    def batch(self) -> dict:
        """What the batch metadata says of it."""
        if self.per_partition:
            return {}
        return {
            "batch_partition_metadata": f"only batch totals: a run of {self.partitions} partitions "
            f"(more than {PER_PARTITION_LIMIT}) records none per partition"
        }
