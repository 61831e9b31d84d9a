"""What the branches of a partition came to: points, continuations, how they ended, and what
their live calls spent (the prefix's calls were served from the recording: they cost nothing).

A continuation's live part starts with the call that generated its main step k (the merged
conversation says which call that was, `generated_by`); every call from it on, in seq order,
is live. Branch runs with no such call (refused, or stopped before step k) spent nothing.
"""

from collections import Counter

from trajhub_assets.branching.branches import is_refused
from trajhub_assets.branching.schema import BRANCH_RAW_CALLS, BRANCH_RUNS, BRANCHED_TRAJECTORIES
from trajhub_assets.merge.schema import table_to_conversations
from trajhub_assets.rewards.rules import build_run, group_runs
from trajhub_assets.store import Store

COUNTS = (
    "points",
    "continuations",
    "refused",
    "failed",
    "resolved",
    "live_calls",
    "live_calls_without_cost",  # the proxy knew no price for the model: their cost is unknown, not 0
    "tokens_in",
    "tokens_out",
)


def outcome_counts(runs: list[dict]) -> dict[str, int]:
    """Points, continuations and how they ended, of BRANCH_RUNS rows."""
    return {
        "points": len({(r["parent_run_id"], r["branch_step"]) for r in runs}),
        "continuations": len(runs),
        "refused": sum(is_refused(r) for r in runs),
        "failed": sum(r["error"] is not None for r in runs),
        "resolved": sum(bool(r["resolved"]) for r in runs),
    }


def partition_accounting(store: Store, partition: dict, merged: list[dict] | None = None) -> tuple[Counter, set[str]]:
    """(the counts of COUNTS and cost_usd, the parent runs branched) of one partition's branches;
    `merged`: its branched_trajectories conversations when the caller has them, else read."""
    counts = Counter(dict.fromkeys(COUNTS, 0), cost_usd=0.0)  # every key, zero or not (+ would drop zeros)
    if not store.exists(BRANCH_RUNS, partition):
        return counts, set()
    runs = store.read(BRANCH_RUNS, partition).to_pylist()
    counts.update(outcome_counts(runs))
    if merged is None:
        exists = store.exists(BRANCHED_TRAJECTORIES, partition)
        merged = table_to_conversations(store.read(BRANCHED_TRAJECTORIES, partition)) if exists else []
    calls = store.read(BRANCH_RAW_CALLS, partition)
    calls = calls.select(["run_id", "call_id", "seq", "input_tokens", "output_tokens", "cost_usd"]).to_pylist()
    live = live_call_ids(merged, runs, calls)
    for call in calls:
        if call["call_id"] in live:
            counts.update(
                live_calls=1,
                live_calls_without_cost=call["cost_usd"] is None,
                tokens_in=call["input_tokens"] or 0,
                tokens_out=call["output_tokens"] or 0,
                cost_usd=call["cost_usd"] or 0.0,
            )
    return counts, {r["parent_run_id"] for r in runs}


def store_accounting(store: Store) -> dict[str, float]:
    """partition_accounting over every partition, with runs_branched (the card's figures)."""
    totals, parents = Counter(), set()
    for partition in store.partitions(BRANCH_RUNS):
        counts, branched = partition_accounting(store, partition)
        totals.update(counts)
        parents |= branched
    return {name: totals[name] for name in COUNTS} | {
        "cost_usd": round(totals["cost_usd"], 6),
        "runs_branched": len(parents),
    }


def live_call_ids(merged: list[dict], runs: list[dict], calls: list[dict]) -> set[str]:
    """The call ids of the continuations' live calls: from the one that generated main step k,
    in seq order; `merged` is a partition's branched_trajectories conversations, `runs` its
    BRANCH_RUNS rows, `calls` its BRANCH_RAW_CALLS rows (run_id, call_id, seq)."""
    step = {r["run_id"]: r["branch_step"] for r in runs}
    first_live = {}
    for run_id, conversations in group_runs(merged).items():
        steps = build_run(conversations).main_steps
        if run_id in step and step[run_id] < len(steps):
            first_live[run_id] = steps[step[run_id]].message.get("generated_by")
    live_runs: set[str] = set()
    live: set[str] = set()
    for call in sorted(calls, key=lambda c: (c["run_id"], c["seq"])):
        if call["call_id"] == first_live.get(call["run_id"]):
            live_runs.add(call["run_id"])
        if call["run_id"] in live_runs:
            live.add(call["call_id"])
    return live
