"""Partitions: dynamic `models` and `instances`, and their cross product.

Model names become partition keys by one reversible rule: every "/" becomes "__".
So `anthropic/claude-sonnet-4-5` is the key `anthropic__claude-sonnet-4-5`, and the
key maps back to the name by turning every "__" into "/". For the rule to be
reversible (and for keys to be safe as directory names and as parts of Dagster's
multi-partition keys, which are joined by "|"), a model name may hold only letters,
digits and `. _ : @ + -` between single slashes, and never "__".
Instance ids are used as keys unchanged and follow the same rule without slashes.
"""

from __future__ import annotations

import re

from dagster import BackfillPolicy, DynamicPartitionsDefinition, MultiPartitionKey, MultiPartitionsDefinition

_SEGMENT = r"[A-Za-z0-9._:@+-]+"
_MODEL_NAME = re.compile(rf"^{_SEGMENT}(/{_SEGMENT})*$")
_INSTANCE_ID = re.compile(rf"^{_SEGMENT}$")

models_partitions = DynamicPartitionsDefinition(name="models")
instances_partitions = DynamicPartitionsDefinition(name="instances")
# Dagster orders dimensions by name: a key reads "<instance>|<model>".
run_partitions = MultiPartitionsDefinition({"model": models_partitions, "instance": instances_partitions})
# Per-run overhead in Dagster is seconds: a backfill hands each run a batch of keys.
BATCHED = BackfillPolicy.multi_run(max_partitions_per_run=200)


def run_key(model: str, instance: str) -> str:
    """The run_partitions key of one (model key, instance id)."""
    return str(MultiPartitionKey({"model": model, "instance": instance}))


def contiguous_ranges(ordered: list[str], wanted, size: int | None = None) -> list[list[str]]:
    """The `wanted` keys of one dimension as runs of at most `size` keys that are contiguous in
    `ordered` (its registration order). A multi-partition key range is a rectangle to Dagster
    (every dimension between its two ends), so each run, crossed with a run of the other
    dimension, is one range that holds nothing unwanted."""
    chosen, size = set(wanted), size or len(ordered)
    ranges, current = [], []
    for key in ordered:
        if key in chosen and len(current) < size:
            current.append(key)
            continue
        if current:
            ranges.append(current)
        current = [key] if key in chosen else []
    return ranges + ([current] if current else [])


def run_partitions_of(context) -> list[dict[str, str]]:
    """The store partitions ({"model", "instance"}) of a run's partition keys, one or a batch."""
    keys = [run_partitions.get_partition_key_from_str(str(key)) for key in context.partition_keys]
    return [{"model": key.keys_by_dimension["model"], "instance": key.keys_by_dimension["instance"]} for key in keys]


def model_key(name: str) -> str:
    if not _MODEL_NAME.match(name) or "__" in name:
        raise ValueError(
            f"model name {name!r} cannot be a partition key: use letters, digits and "
            ". _ : @ + - between single '/', and never '__'"
        )
    return name.replace("/", "__")


def model_name(key: str) -> str:
    return key.replace("__", "/")


def check_instance_id(instance_id: str) -> str:
    if not _INSTANCE_ID.match(instance_id):
        raise ValueError(
            f"instance_id {instance_id!r} cannot be a partition key: use letters, digits and . _ : @ + - only"
        )
    return instance_id


def missing_keys(wanted: list[str], existing: list[str]) -> list[str]:
    """Keys to add, in the order wanted; partitions are never removed automatically,
    since their stored data would disappear from the UI."""
    have = set(existing)
    return [key for key in dict.fromkeys(wanted) if key not in have]
