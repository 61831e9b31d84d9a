"""The raw_trajectories asset: run the attempts of a batch of (model, instance) partitions in
sandboxes, with every LLM call recorded by the proxy, and load the recordings into the store."""

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from trajhub_assets.config import ProjectConfig
from trajhub_assets.partitions import BATCHED, run_partitions, run_partitions_of
from trajhub_assets.recording.attempts import RUNS, Proxy, run_attempt
from trajhub_assets.recording.raw_calls import load_runs
from trajhub_assets.recording.resources import ProxyResource
from trajhub_assets.resources import ProjectResource, StoreResource
from trajhub_assets.sandbox import remove_orphans
from trajhub_assets.sandbox.docker import bridge_gateway
from trajhub_assets.sandbox.images import DEMO_IMAGE, ensure_demo_image
from trajhub_assets.scaffolds.baselines import ROUTE_PREFIX
from trajhub_assets.tasks.catalog import stored_tasks


def prepare_sandboxes(config: ProjectConfig, images: set[str], proxy: ProxyResource) -> Proxy:
    """Clear containers orphaned by crashed runs, build the demo image if a task needs it,
    and return where the agents reach the proxy from the host and from a sandbox."""
    if config.sandbox.backend != "docker":
        return Proxy(proxy.base_url, proxy.base_url, proxy.key)
    remove_orphans()
    if DEMO_IMAGE in images:
        ensure_demo_image()
    # Containers reach the host at its docker bridge address, so the proxy listens there.
    proxy.listen_on(bridge_gateway())
    return Proxy(proxy.base_url, f"http://host.docker.internal:{proxy.port}", proxy.key)


@asset(partitions_def=run_partitions, backfill_policy=BATCHED, group_name="recording",
       deps=["tasks"], kinds={"docker", "parquet"}, pool="sandboxes",
       description="Each (model, instance) run in a sandbox: the recorded calls (content-addressed "
                   "message blobs) and one row per attempt with its outcome.")
def raw_trajectories(context: AssetExecutionContext, store: StoreResource, project: ProjectResource,
                     proxy: ProxyResource) -> MaterializeResult:
    store, config = store.get(), project.load()
    tasks = stored_tasks(store)
    partitions = run_partitions_of(context)
    jobs = [(partition, attempt) for partition in partitions
            for attempt in range(config.model(partition["model"]).samples)]
    if any(config.model(p["model"]).route.startswith(ROUTE_PREFIX) for p in partitions):
        proxy.serve_baselines(list(tasks.values()))
    endpoint = prepare_sandboxes(config, {tasks[p["instance"]]["image"] for p in partitions}, proxy)

    def run(job):
        partition, attempt = job
        row = run_attempt(tasks[partition["instance"]], config.model(partition["model"]), attempt,
                          endpoint, config.sandbox)
        context.log.info("run %s: %s, %s/%s tests passed%s", row["run_id"], row["stop_reason"],
                         row["tests_passed"], row["tests_total"],
                         f", error: {row['error']}" if row["error"] else "")
        return partition, row

    context.log.info("%d attempts over %d partitions, %d at a time",
                     len(jobs), len(partitions), config.sandbox.max_concurrent)
    with ThreadPoolExecutor(config.sandbox.max_concurrent) as pool:
        results = list(pool.map(run, jobs))

    totals = Counter()
    for partition in partitions:
        rows = [row for p, row in results if p == partition]
        store.write(RUNS, pa.Table.from_pylist(rows, schema=RUNS.schema), partition)
        files = [proxy.recordings() / f"{row['run_id']}.jsonl" for row in rows]
        loaded = load_runs(store, [f for f in files if f.exists()], partition["model"], partition["instance"])
        totals.update(runs=len(rows), calls=loaded.calls, failed=sum(r["error"] is not None for r in rows),
                      resolved=sum(r["resolved"] for r in rows),
                      raw_bytes=loaded.raw_bytes, stored_bytes=loaded.stored_bytes)
    return MaterializeResult(metadata=dict(totals) | {
        "runs_table": MetadataValue.md("| run | stop | tests | error |\n|---|---|---|---|\n" + "\n".join(
            f"| {row['run_id']} | {row['stop_reason']} | {row['tests_passed']}/{row['tests_total']} "
            f"| {row['error'] or ''} |" for _, row in results))})
