"""release_replay: replay a sample of each release's runs, the proof they are real and reproducible."""

from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
    MetadataValue,
    asset,
)

from trajhub_assets.automation import SANDBOX_POOL
from trajhub_assets.errors import TrajhubError
from trajhub_assets.lineage import reading
from trajhub_assets.metadata import table
from trajhub_assets.recording.schema import MESSAGE_BLOBS, RAW_CALLS, RUNS
from trajhub_assets.replay.compare import reports_rows
from trajhub_assets.replay.recorded import check_replayable, load_recorded_run
from trajhub_assets.replay.service import (
    ReplayService,
    newest_release,
    release_run_ids,
    report_row,
    sample_runs,
    store_reports,
)
from trajhub_assets.resources import ProjectResource, StoreResource
from trajhub_assets.tasks.schema import TASKS

CHECK = "sampled_runs_reproduce"


def _release_dir(context: AssetExecutionContext, root: Path, name: str) -> Path:
    """The release hf_dataset_release last made, else the newest on disk."""
    event = context.instance.get_latest_materialization_event(AssetKey("hf_dataset_release"))
    path = event.asset_materialization.metadata.get("path") if event and event.asset_materialization else None
    return Path(path.value) if path is not None else newest_release(root, name)


@asset(
    group_name="release",
    kinds={"docker", "parquet"},
    pool=SANDBOX_POOL,
    **reading(RUNS, RAW_CALLS, MESSAGE_BLOBS, TASKS, files_of=("hf_dataset_release",)),
    check_specs=[
        AssetCheckSpec(
            CHECK,
            asset="release_replay",
            description="Every sampled run replays with fidelity 1.0 and the same outcome.",
        )
    ],
    description="Replays release.replay_sample runs of the latest release (recorded responses "
    "served behind the real proxy, fresh sandboxes) and compares what the agents sent "
    "and how the runs ended with the recordings: the `replays` table.",
)
def release_replay(context: AssetExecutionContext, store: StoreResource, project: ProjectResource) -> MaterializeResult:
    store, config = store.get(), project.load()
    release = _release_dir(context, store.root, config.release.name)
    recorded, unreplayable = [], {}
    # replay_sample 0 reads nothing of the release: it may have been built on another worker.
    sampled = (
        sample_runs(release_run_ids(release), config.release.replay_sample) if config.release.replay_sample else []
    )
    for run_id in sampled:
        try:
            run = load_recorded_run(store, run_id, config)
            check_replayable(run)
            recorded.append(run)
        except TrajhubError as error:  # reported by the check, not hidden
            context.log.error("run %s cannot be replayed: %s", run_id, error)
            unreplayable[run_id] = str(error)
    reports = []
    if recorded:
        with ReplayService(recorded, store.root, config.sandbox) as service:
            for run in recorded:
                reports.append(service.replay(run))
                context.log.info(reports[-1].text())
    store_reports(store, [report_row(report, release.name) for report in reports])
    diverged = [r.run_id for r in reports if not r.reproduced]
    return MaterializeResult(
        metadata={
            "release": release.name,
            "replayed": len(reports),
            "reproduced": len(reports) - len(diverged),
            "mean_fidelity": sum(r.fidelity for r in reports) / len(reports) if reports else 1.0,
            "replays": table(reports_rows(reports), ["run", "fidelity", "first_divergence", "outcome_differs_in"]),
        },
        check_results=[
            AssetCheckResult(
                check_name=CHECK,
                passed=not diverged and not unreplayable,
                metadata={
                    "sampled": len(reports) + len(unreplayable),
                    "diverged": ", ".join(diverged) or "none",
                    "not_replayable": MetadataValue.json(unreplayable),
                },
            )
        ],
    )
