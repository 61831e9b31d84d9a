"""Which asset writes each table, so that an asset's deps are exactly the tables it reads.

    @asset(**reading(RULE_SUMMARY, JUDGE_SUMMARY, RUNS), ...)

gives the asset a dep on each table's writer and lists the tables under `reads` in its
definition metadata, so the graph in the UI is the data flow.
"""

from __future__ import annotations

from dagster import AssetDep, PartitionMapping

# table -> the asset that writes it; None: written outside the graph by a trajhub command
WRITTEN_BY: dict[str, str | None] = {
    "tasks": "tasks",
    "runs": "raw_trajectories",
    "raw_calls": "raw_trajectories",
    "message_blobs": "raw_trajectories",
    "imports": None,  # `trajhub import`: an audit of what was imported, read by no asset
    "merged_trajectories": "merged_trajectories",
    "rule_steps": "rule_rewards",
    "rule_summary": "rule_rewards",
    "judge_checks": "judge_rewards",
    "judge_steps": "judge_rewards",
    "judge_summary": "judge_rewards",
    "trajectory_rewards": "trajectory_rewards",
    "preference_pairs": "preference_pairs",
    "human_labels": "human_labels",  # an external asset: `trajhub label import` writes it
    "reward_calibration": "reward_calibration",
    "leaderboard": "leaderboard",
    "replays": "release_replay",
    # `trajhub branch` adds to these too, as `trajhub replay` adds to replays
    "branch_runs": "branched_trajectories",
    "branch_raw_calls": "branched_trajectories",
    "branch_message_blobs": "branched_trajectories",
    "branched_trajectories": "branched_trajectories",
    **{
        f"branch_{table}": "branch_rewards"
        for table in (
            "rule_steps",
            "rule_summary",
            "judge_checks",
            "judge_steps",
            "judge_summary",
            "trajectory_rewards",
        )
    },
    "branch_pairs": "branch_pairs",
}


def reading(*tables, partition_mapping: PartitionMapping | None = None, files_of: tuple[str, ...] = ()) -> dict:
    """`deps` and `metadata` arguments of an @asset that reads `tables` (Table declarations)
    and the files written by the assets `files_of` (a release's directory)."""
    writers = dict.fromkeys([*(WRITTEN_BY[table.name] for table in tables), *files_of])
    deps = [AssetDep(writer, partition_mapping=partition_mapping) for writer in writers if writer]
    reads = [table.name for table in tables] + [f"{asset}'s files" for asset in files_of]
    return {"deps": deps, "metadata": {"reads": ", ".join(reads)}}


DIMENSION_OF = {"instances": "instance", "models": "model"}  # a dynamic partitions def's dimension name


def graph_mermaid(defs) -> str:
    """The code location's asset graph as a Mermaid flowchart (what README.md shows)."""
    graph = defs.resolve_asset_graph()
    lines = ["```mermaid", "flowchart LR"]
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        partitions = node.partitions_def
        dims = getattr(partitions, "partitions_defs", None)
        if partitions is None:
            where = "unpartitioned"
        else:
            where = " × ".join([d.name for d in dims] if dims else [DIMENSION_OF.get(partitions.name, partitions.name)])
        name = key.to_user_string()
        lines.append(f'  {name}["{name}<br/><small>{where}</small>"]')
    for key in graph.toposorted_asset_keys:
        for parent in sorted(graph.get(key).parent_keys, key=lambda k: k.to_user_string()):
            lines.append(f"  {parent.to_user_string()} --> {key.to_user_string()}")
    return "\n".join(lines + ["```"]) + "\n"
