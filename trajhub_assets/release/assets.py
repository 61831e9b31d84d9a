"""Release-side assets: reward calibration against human labels, the leaderboard, and the
Hugging Face dataset release. All unpartitioned: they read every partition."""

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import chain

import pyarrow as pa
import pyarrow.compute as pc
from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from trajhub_assets.branching.accounting import store_accounting
from trajhub_assets.branching.schema import BRANCH_PAIRS
from trajhub_assets.config import ProjectConfig
from trajhub_assets.lineage import reading
from trajhub_assets.merge.schema import MERGED_TRAJECTORIES, table_to_conversations
from trajhub_assets.metadata import table
from trajhub_assets.pairs.pairs import PairPolicy
from trajhub_assets.pairs.schema import PREFERENCE_PAIRS
from trajhub_assets.partitions import model_name
from trajhub_assets.recording.schema import RAW_CALLS, RUNS
from trajhub_assets.release.calibration import calibrate
from trajhub_assets.release.leaderboard import leaderboard, run_summary_sql
from trajhub_assets.release.preview import card_body, definitions_markdown, leaderboard_rows, plots_markdown
from trajhub_assets.release.release import ReleaseInputs, RunGroup, build_release, push_release
from trajhub_assets.release.schema import HUMAN_LABELS, LEADERBOARD, REWARD_CALIBRATION
from trajhub_assets.resources import ProjectResource, StoreResource
from trajhub_assets.rewards.schema import JUDGE_STEPS, JUDGE_SUMMARY, TRAJECTORY_REWARDS
from trajhub_assets.store import Store
from trajhub_assets.tasks.schema import TASKS


def _calibration(store: Store):
    if HUMAN_LABELS.name not in store.table_names():
        return None
    # What calibrate reads of a pair: not its messages, which would be every pair's in memory.
    pairs = store.sql(f"SELECT pair_id, kind, margin FROM {PREFERENCE_PAIRS.name}")
    return calibrate(pairs, store.read(HUMAN_LABELS))


@asset(
    group_name="release",
    kinds={"parquet"},
    **reading(PREFERENCE_PAIRS, HUMAN_LABELS),
    description="Agreement of the rewards with human preference labels (`trajhub label import`), "
    "and of the annotators with each other.",
)
def reward_calibration(context: AssetExecutionContext, store: StoreResource) -> MaterializeResult:
    store = store.get()
    report = _calibration(store)
    if report is None:
        context.log.warning(
            "no human labels yet: export a sheet with `trajhub label export`, "
            "label it, and load it with `trajhub label import`"
        )
        store.write(REWARD_CALIBRATION, REWARD_CALIBRATION.schema.empty_table())
        return MaterializeResult(metadata={"labels": 0})
    store.write(REWARD_CALIBRATION, report.table())
    return MaterializeResult(metadata={"report": MetadataValue.md(report.markdown())})


@asset(
    name="leaderboard",
    group_name="release",
    kinds={"parquet", "html"},
    **reading(TRAJECTORY_REWARDS, JUDGE_SUMMARY, RAW_CALLS, TASKS),
    description="Per model: test pass rate, ISR, CSR, reward, steps, tokens and cost, with plots.",
)
def leaderboard_asset(context: AssetExecutionContext, store: StoreResource) -> MaterializeResult:
    store = store.get()
    runs = store.sql(run_summary_sql()).to_pylist()
    for run in runs:
        run["model"] = model_name(run["model"])
    board = leaderboard(runs)
    store.write(LEADERBOARD, board.table)
    html = board.write(store.root / "reports" / "leaderboard")
    plots = {f"plot_{name}": MetadataValue.md(image) for name, image in plots_markdown(board).items()}
    return MaterializeResult(
        metadata={
            "leaderboard": table(leaderboard_rows(board)),
            "columns": MetadataValue.md(definitions_markdown()),
            **plots,
            "report": MetadataValue.path(str(html)),
        }
    )


@asset(
    group_name="release",
    kinds={"huggingface"},
    **reading(
        TASKS, MERGED_TRAJECTORIES, TRAJECTORY_REWARDS, JUDGE_STEPS, PREFERENCE_PAIRS, HUMAN_LABELS, RUNS, BRANCH_PAIRS
    ),
    description="A versioned Hugging Face dataset (trajectories, preferences, step_rewards, tasks, and "
    "branch_steps and branch_continuations when there are branch pairs), "
    "byte-identical when rebuilt from the same store; refused if a secret is found.",
)
def hf_dataset_release(
    context: AssetExecutionContext, store: StoreResource, project: ProjectResource
) -> MaterializeResult:
    store, config = store.get(), project.load()
    inputs = release_inputs(store, config)
    if inputs is None:
        raise Failure(
            description=f"no release cut: there is no trajectory to release ({_why_empty(store)})", allow_retries=False
        )
    release = build_release(inputs, config.release, store.root)
    url = push_release(release, config.release)
    context.log.info(
        "release %s at %s%s",
        release.version,
        release.path,
        f", pushed: {url}" if url else " (not pushed: no hf_repo or token)",
    )
    return MaterializeResult(
        metadata=release.metadata() | {"pushed": url or "no", "card": MetadataValue.md(card_body(release.card))}
    )


def release_inputs(store: Store, config: ProjectConfig) -> ReleaseInputs | None:
    """What hf_dataset_release releases, read from the store one partition at a time as the
    release goes (None: no trajectory to release)."""
    runs = _run_groups(store) if MERGED_TRAJECTORIES.name in store.table_names() else iter(())
    first = next(runs, None)
    if first is None:
        return None
    pairs = sorted(store.partitions(PREFERENCE_PAIRS), key=lambda p: p["instance"])
    branch_pairs = sorted(store.partitions(BRANCH_PAIRS), key=lambda p: (model_name(p["model"]), p["instance"]))
    return ReleaseInputs(
        tasks=store.read(TASKS),
        runs=chain([first], runs),
        pairs=(store.read(PREFERENCE_PAIRS, p) for p in pairs),
        calibration=_calibration(store),
        models=[{"name": m.name, "scaffold": m.scaffold, "samples": m.samples} for m in config.models],
        reward_weights=config.rewards.trajectory_weights,
        pair_policy=vars(PairPolicy.from_config(config.release)),
        branch_pairs=(store.read(BRANCH_PAIRS, p) for p in branch_pairs),
        branching=store_accounting(store),
    )


def _run_groups(store: Store, read_ahead: int = 8) -> Iterator[RunGroup]:
    """Each (model, instance)'s main trajectories, rewards and steps, in (model name, instance)
    order. Parquet decodes without the GIL: two threads read the next partitions meanwhile."""
    partitions = sorted(store.partitions(MERGED_TRAJECTORIES), key=lambda p: (model_name(p["model"]), p["instance"]))
    with ThreadPoolExecutor(max_workers=2) as pool:
        reads = deque()
        for partition in partitions:
            reads.append((partition, pool.submit(_partition_tables, store, partition)))
            if len(reads) > read_ahead:
                yield from _run_group(*reads.popleft())
        while reads:
            yield from _run_group(*reads.popleft())


def _partition_tables(store: Store, partition: dict) -> list[pa.Table | None]:
    merged = store.read(MERGED_TRAJECTORIES, partition)
    scores = [
        store.read(t, partition) if store.exists(t, partition) else None for t in (TRAJECTORY_REWARDS, JUDGE_STEPS)
    ]
    return [merged.filter(pc.equal(merged["kind"], "main")), *scores]


def _run_group(partition: dict, read: Future) -> Iterator[RunGroup]:
    merged, rewards, steps = read.result()
    if merged.num_rows:
        model, instance = model_name(partition["model"]), partition["instance"]
        yield (
            table_to_conversations(merged, model=model, instance=instance),
            rewards.to_pylist() if rewards is not None else [],
            steps.to_pylist() if steps is not None else [],
        )


def _why_empty(store: Store) -> str:
    if RUNS.name not in store.table_names():
        return "no run has been recorded yet: materialize raw_trajectories first"
    runs, failed, first = (
        store.sql(
            "SELECT count(*), count(error), min(run_id || ': ' || error) FILTER (WHERE error IS NOT NULL) "
            f"FROM {RUNS.name}"
        )
        .to_pylist()[0]
        .values()
    )
    return (
        f"{runs} runs recorded, {failed} failed"
        + (f"; e.g. {first}" if first else "")
        + "; merged_trajectories holds no main conversation"
    )
