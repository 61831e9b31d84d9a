"""The raw_trajectories asset: run the attempts of a batch of (model, instance) partitions in
sandboxes, with every LLM call recorded by the proxy, and load the recordings into the store."""

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
from dagster import AssetExecutionContext, Failure, MaterializeResult, asset

from trajhub_assets.automation import RUN_NEW_PARTITIONS, SANDBOX_POOL
from trajhub_assets.checks import RAW_CHECK_SPECS, every_run_has_calls, no_credentials, read_batch
from trajhub_assets.config import ProjectConfig
from trajhub_assets.errors import ConfigError, TrajhubError
from trajhub_assets.lineage import reading
from trajhub_assets.metadata import PartitionMetadata, batch_totals, table
from trajhub_assets.partitions import BATCHED, run_key, run_partitions, run_partitions_of
from trajhub_assets.progress import Progress, fail_if_all_failed, recording_usage
from trajhub_assets.recording.attempts import Proxy, run_attempt, runs_preview, runs_summary
from trajhub_assets.recording.raw_calls import load_runs
from trajhub_assets.recording.resources import ProxyResource
from trajhub_assets.recording.routes import missing_keys
from trajhub_assets.recording.schema import MESSAGE_BLOBS, RAW_CALLS, RUNS
from trajhub_assets.resources import ProjectResource, StoreResource
from trajhub_assets.sandbox import remove_orphans
from trajhub_assets.sandbox.images import prepare_engine
from trajhub_assets.tasks.catalog import stored_tasks
from trajhub_assets.tasks.schema import TASKS


def prepare_sandboxes(config: ProjectConfig, images: set[str], proxy: ProxyResource) -> Proxy:
    """Clear containers orphaned by crashed runs, build the demo image if a task needs it,
    and return where the agents reach the proxy from the host and from a sandbox."""
    if config.sandbox.backend != "docker":
        return Proxy(proxy.base_url, proxy.base_url, proxy.key)
    host = config.sandbox.docker_host
    if host and not config.proxy.url and not proxy.url:
        raise ConfigError(
            "sandbox.docker_host: sandboxes on another machine cannot reach a proxy "
            "started here; set proxy.url (README: From one machine to a cluster)"
        )
    # Containers reach the host at its docker bridge address, so the proxy listens there.
    proxy.listen_on(prepare_engine(host, images, config.sandbox.network))
    return Proxy(proxy.base_url, f"http://host.docker.internal:{proxy.port}", proxy.key)


@asset(
    partitions_def=run_partitions,
    backfill_policy=BATCHED,
    group_name="recording",
    **reading(TASKS),
    kinds={"docker", "parquet"},
    pool=SANDBOX_POOL,
    check_specs=RAW_CHECK_SPECS,
    automation_condition=RUN_NEW_PARTITIONS,
    description="Each (model, instance) run in a sandbox: the recorded calls (content-addressed "
    "message blobs) and one row per attempt with its outcome.",
)
def raw_trajectories(
    context: AssetExecutionContext, store: StoreResource, project: ProjectResource, proxy: ProxyResource
) -> MaterializeResult:
    store, config = store.get(), project.load()
    tasks = stored_tasks(store)
    partitions = run_partitions_of(context)
    metadata = PartitionMetadata(context, len(partitions))
    jobs = [
        (partition, attempt) for partition in partitions for attempt in range(config.model(partition["model"]).samples)
    ]
    models = {p["model"]: config.model(p["model"]) for p in partitions}.values()
    if missing := missing_keys(models):
        raise ConfigError(f"models[].api_key_env: not set in this environment: {', '.join(missing)}")
    try:
        endpoint = prepare_sandboxes(config, {tasks[p["instance"]]["image"] for p in partitions}, proxy)
    except TrajhubError as error:
        # An engine down, an image or the network missing: one line that names the cause, without
        # the chain of docker, requests and urllib3 exceptions behind it.
        raise Failure(description=str(error)) from None

    progress = Progress(context.log, len(jobs), "runs")

    def run(job):
        partition, attempt = job
        row = run_attempt(
            tasks[partition["instance"]], config.model(partition["model"]), attempt, endpoint, config.sandbox
        )
        recording = proxy.recording(row["run_id"])  # fetched here when the proxy is on another machine
        usage = recording_usage(recording)
        progress.advance(
            f"{row['run_id']}: {row['stop_reason']}, {row['tests_passed']}/{row['tests_total']} "
            f"tests passed" + (f", error: {row['error']}" if row["error"] else ""),
            failed=row["error"] is not None,
            resolved=row["resolved"],
            **usage,
        )
        return partition, row, usage, recording

    context.log.info(
        "%d attempts over %d partitions, %d at a time", len(jobs), len(partitions), config.sandbox.max_concurrent
    )
    pool = ThreadPoolExecutor(config.sandbox.max_concurrent)
    try:
        results = list(pool.map(run, jobs))
    except BaseException:  # cancelled (Dagster interrupts the step) or broken: stop what still runs
        pool.shutdown(wait=False, cancel_futures=True)
        if config.sandbox.backend == "docker":
            context.log.warning(
                "stopped sandboxes: %s", remove_orphans(mine=True, docker_host=config.sandbox.docker_host)
            )
        raise
    pool.shutdown()

    totals = Counter()
    for partition in partitions:
        rows = [row for p, row, _, _ in results if p == partition]
        store.write(RUNS, pa.Table.from_pylist(rows, schema=RUNS.schema), partition)
        files = [recording for p, _, _, recording in results if p == partition and recording.exists()]
        loaded = load_runs(store, files, partition["model"], partition["instance"])
        summary = runs_summary(rows, [usage for p, _, usage, _ in results if p == partition]) | {
            "calls": loaded.calls,
            "raw_bytes": loaded.raw_bytes,
            "stored_bytes": loaded.stored_bytes,
        }
        metadata.add(
            run_key(partition["model"], partition["instance"]), summary | {"runs_table": table(runs_preview(rows))}
        )
        totals.update(summary)
    # After the store has every row and call: a failed run is data, even when all failed.
    failed = [row for _, row, _, _ in results if row["error"] is not None]
    fail_if_all_failed(
        "runs of this batch",
        len(results),
        len(failed),
        f"{failed[0]['run_id']}: {failed[0]['error']}" if failed else "",
    )
    runs, calls = read_batch(store, RUNS, partitions), read_batch(store, RAW_CALLS, partitions)
    checks = [
        every_run_has_calls(runs, calls),
        no_credentials(
            {"runs": runs, "raw_calls": calls, "message_blobs": read_batch(store, MESSAGE_BLOBS, partitions)}
        ),
    ]
    totals["cost_usd"] = round(totals["cost_usd"], 6)
    return MaterializeResult(check_results=checks, metadata=batch_totals(totals, len(partitions)) | metadata.batch())
