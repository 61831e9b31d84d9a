"""A snapshot of the code location, as dagster-open-platform keeps one: asset keys, deps and their
partition mappings, partitions, code versions, checks, automation, pools, jobs, schedules and
sensors. A change to the graph is a visible diff of snapshots/code_location.json; after a
deliberate one, rewrite it with TRAJHUB_UPDATE_SNAPSHOTS=1 and review the diff."""

from __future__ import annotations

import json
import os
from pathlib import Path

from trajhub_assets.definitions import build_definitions
from trajhub_assets.resources import ProjectResource

SNAPSHOT = Path(__file__).with_name("snapshots") / "code_location.json"


def _partitions(partitions_def) -> str | None:
    if partitions_def is None:
        return None
    dims = getattr(partitions_def, "partitions_defs", None)
    if dims:
        return " x ".join(f"{d.name}:{d.partitions_def.name}" for d in dims)
    return partitions_def.name


def code_location() -> dict:
    defs = build_definitions(ProjectResource())  # the bundled demo project
    graph = defs.resolve_asset_graph()
    assets = {}
    for node in graph.asset_nodes:
        spec = next(s for s in node.assets_def.specs if s.key == node.key) if node.assets_def else None
        deps = {}
        for dep in spec.deps if spec else []:
            mapping = dep.partition_mapping
            deps[dep.asset_key.to_user_string()] = type(mapping).__name__ if mapping else None
        condition = node.automation_condition
        policy = node.backfill_policy
        assets[node.key.to_user_string()] = {
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "deps": dict(sorted(deps.items())),
            "reads": node.metadata.get("reads"),
            "partitions": _partitions(node.partitions_def),
            "code_version": node.code_version,
            "checks": sorted(key.name for key in node.check_keys),
            "automation": condition.get_label() or condition.name if condition else None,
            "pools": sorted(node.pools or []),
            "backfill": f"multi_run({policy.max_partitions_per_run})"
            if policy and policy.max_partitions_per_run
            else (str(policy.policy_type.value) if policy else None),
            "external": not node.is_executable,
        }
    repo = defs.get_repository_def()
    jobs = {
        job.name: sorted(key.to_user_string() for key in job.asset_layer.executable_asset_keys)
        for job in repo.get_all_jobs()
        if not job.name.startswith("__")
    }
    return {
        "assets": dict(sorted(assets.items())),
        "jobs": dict(sorted(jobs.items())),
        "schedules": {
            s.name: {"cron": s.cron_schedule, "job": s.job_name, "default": s.default_status.value}
            for s in repo.schedule_defs
        },
        "sensors": {s.name: s.default_status.value for s in sorted(repo.sensor_defs, key=lambda s: s.name)},
    }


def test_code_location_snapshot():
    current = json.dumps(code_location(), indent=2, sort_keys=False) + "\n"
    if os.environ.get("TRAJHUB_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(current)
    assert SNAPSHOT.exists(), "no snapshot yet: run with TRAJHUB_UPDATE_SNAPSHOTS=1"
    assert current == SNAPSHOT.read_text(), (
        "the code location changed; if that is meant, rerun with TRAJHUB_UPDATE_SNAPSHOTS=1 and review the diff"
    )
