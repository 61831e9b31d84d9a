"""The `trajhub` command: run the pipeline on one machine, query the store, check inputs."""

import argparse
import os
import warnings
import sys
from pathlib import Path

from trajhub_assets.automation import RELEASE_ASSETS
from trajhub_assets.errors import TrajhubError
from trajhub_assets.store import Store


def _dagster_instance(store: Store):
    """The persistent Dagster instance: $DAGSTER_HOME, else SQLite under the store root."""
    from dagster import DagsterInstance

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(store.root / "dagster")))
    home.mkdir(parents=True, exist_ok=True)
    settings = home / "dagster.yaml"
    if home == store.root / "dagster" and not settings.exists():
        # Ours: SQLite under it, as Dagster's default; no telemetry (and no banner about it).
        settings.write_text("telemetry:\n  enabled: false\n")
    return DagsterInstance.get()


RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}  # Dagster's steps log at DEBUG
PER_RUN = ["raw_trajectories", "merged_trajectories", "rule_rewards", "judge_rewards"]
RELEASE = RELEASE_ASSETS


def materialize_stage(instance, resources, selection: list[str], keys: list[str] | None = None,
                      run_config=None, tags: dict | None = None):
    """One Dagster run of `selection`, over the partition range from keys[0] to keys[-1] when given."""
    from dagster import materialize

    from trajhub_assets.definitions import defs

    tags = dict(tags or {}) | ({RANGE_START: str(keys[0]), RANGE_END: str(keys[-1])} if keys else {})
    return materialize(list(defs.assets), instance=instance, resources=resources, selection=selection,
                       tags=tags or None, raise_on_error=False, run_config=run_config)


def run_stage(instance, resources, selection: list[str], keys: list[str] | None = None,
              tags: dict | None = None) -> None:
    """materialize_stage, saying what it does, and stopping the command if the run fails."""
    print(f"trajhub: materializing {', '.join(selection)}"
          + (f" over {keys[0]} .. {keys[-1]}" if keys else ""), flush=True)
    result = materialize_stage(instance, resources, selection, keys, run_config=QUIET, tags=tags)
    if not result.success:
        raise SystemExit(f"trajhub: {selection} failed (run {result.run_id}): {_first_failure(result)}")


def _prepare(instance, store: Store, resources) -> None:
    """Load the catalog if it is not stored yet, register partitions, and set the pool limits."""
    from trajhub_assets.automation import apply_pool_limits
    from trajhub_assets.tasks.assets import register_partitions
    from trajhub_assets.tasks.schema import TASKS

    config = resources["project"].load()
    if not store.exists(TASKS):
        run_stage(instance, resources, ["tasks"])
    register_partitions(instance, store, config)
    apply_pool_limits(instance, config.pools)


def cmd_run(args) -> None:
    """Materialize the whole asset graph, stage by stage, each stage one Dagster run over
    all its partitions (as a backfill with BackfillPolicy.multi_run would batch them)."""
    from trajhub_assets.definitions import defs
    from trajhub_assets.partitions import contiguous_ranges, instances_partitions, models_partitions, run_key

    store = Store()
    instance = _dagster_instance(store)
    resources = defs.resources
    run_stage(instance, resources, ["tasks"])  # always reload: the sources may have changed
    _prepare(instance, store, resources)
    instances = instances_partitions.get_partition_keys(dynamic_partitions_store=instance)
    # Models imported from files (`trajhub import`) are partitions too, but have no agent to run.
    configured = [model.key for model in resources["project"].load().models]
    model_ranges = contiguous_ranges(models_partitions.get_partition_keys(dynamic_partitions_store=instance),
                                     configured)
    if not args.catalog_only and instances and model_ranges:
        for models in model_ranges:
            run_stage(instance, resources, PER_RUN,
                      [run_key(models[0], instances[0]), run_key(models[-1], instances[-1])])
        run_stage(instance, resources, ["preference_pairs"], instances)
        run_stage(instance, resources, RELEASE)
    catalog = store.write_catalog()
    print(f"store: {store.root}\ncatalog for notebooks: {catalog}\n"
          f"dagster instance: {os.environ['DAGSTER_HOME']} (UI: dagster dev -w workspace.yaml)")
    with store.connect() as con:
        for table, query in SUMMARIES:
            if table in store.table_names():
                con.sql(query).show(max_width=160)


SUMMARIES = [
    ("tasks", "SELECT category, count(*) AS tasks, count(test_command) AS runnable "
              "FROM tasks GROUP BY category ORDER BY category"),
    ("runs", "SELECT model, count(*) AS runs, count(*) FILTER (WHERE resolved) AS resolved, "
             "count(error) AS failed, any_value(error) AS an_error FROM runs GROUP BY model ORDER BY model"),
    ("leaderboard", "SELECT model, runs, round(test_pass_rate, 3) AS pass_rate, round(isr, 3) AS isr, "
                    "round(csr, 3) AS csr, round(mean_reward, 3) AS reward, mean_steps FROM leaderboard"),
    ("preference_pairs", "SELECT kind, count(*) AS pairs, round(avg(margin), 3) AS mean_margin "
                         "FROM preference_pairs GROUP BY kind"),
]


def _first_failure(result) -> str:
    for event in result.all_events:
        if event.is_step_failure:
            failure = event.step_failure_data.user_failure_data  # a dagster.Failure says it plainly
            if failure is not None and failure.description:
                return f"{event.step_key}: {failure.description}"
            error = event.step_failure_data.error
            while error.cause is not None:  # Dagster wraps the asset's own exception
                error = error.cause
            return error.message.strip()
    return "see the Dagster logs"


def cmd_backfill(args) -> None:
    """One model over every instance: the per-run stages in batches (one Dagster run each, as a
    BackfillPolicy.multi_run backfill batches them), then the pairs of those instances and a release;
    or, with --submit, one Dagster backfill for the daemon (`dagster dev`) to run."""
    import time

    from dagster import AssetKey

    from trajhub_assets.definitions import defs
    from trajhub_assets.partitions import BATCHED, contiguous_ranges, instances_partitions, run_key

    store = Store()
    instance = _dagster_instance(store)
    resources = defs.resources
    model = resources["project"].load().model(args.model)  # a ConfigError names the known models
    _prepare(instance, store, resources)
    instances = instances_partitions.get_partition_keys(dynamic_partitions_store=instance)
    wanted = instances
    if args.missing:
        done = instance.get_materialized_partitions(AssetKey("raw_trajectories"))
        wanted = [i for i in instances if run_key(model.key, i) not in done]
    if not wanted:
        print(f"trajhub: {model.name} has run every instance already (drop --missing to run them again)")
        return
    if args.submit:
        backfill_id = _submit_backfill(instance, [run_key(model.key, i) for i in wanted], model.name)
        print(f"trajhub: backfill {backfill_id} of {model.name} over {len(wanted)} instances submitted; "
              f"the daemon runs it in batches of up to {BATCHED.max_partitions_per_run} "
              "(UI: Overview > Backfills)")
        return
    batches = contiguous_ranges(instances, wanted, args.batch_size or BATCHED.max_partitions_per_run)
    tags = {"trajhub/backfill": f"{model.key}-{int(time.time())}"}
    print(f"trajhub: backfilling {model.name} over {len(wanted)} instances in {len(batches)} run(s) "
          f"(tag {tags['trajhub/backfill']})", flush=True)
    for number, batch in enumerate(batches, start=1):
        print(f"trajhub: batch {number}/{len(batches)}: {len(batch)} instances", flush=True)
        run_stage(instance, resources, PER_RUN, [run_key(model.key, batch[0]), run_key(model.key, batch[-1])],
                  tags=tags)
    for batch in contiguous_ranges(instances, wanted, BATCHED.max_partitions_per_run):
        run_stage(instance, resources, ["preference_pairs"], [batch[0], batch[-1]], tags=tags)
    if not args.no_release:
        run_stage(instance, resources, RELEASE, tags=tags)
    _print_status(store, instance)


def _submit_backfill(instance, keys: list[str], model_name: str) -> str:
    """One Dagster backfill of the per-run assets over `keys`, for the daemon to run."""
    import time

    from dagster import AssetKey
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    from trajhub_assets.definitions import defs

    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(), asset_graph=defs.resolve_asset_graph(), partition_names=keys,
        asset_selection=[AssetKey(name) for name in PER_RUN], backfill_timestamp=time.time(),
        tags={"trajhub/backfill": model_name.replace("/", "__")}, dynamic_partitions_store=instance,
        all_partitions=False, title=f"trajhub backfill {model_name}", description=None, run_config=None)
    instance.add_backfill(backfill)
    return backfill.backfill_id


def cmd_status(args) -> None:
    store = Store()
    _print_status(store, _dagster_instance(store))


def _print_status(store: Store, instance) -> None:
    """Partitions materialized per asset, and per model: runs, outcomes, tokens and cost."""
    from dagster import AssetKey, RunsFilter
    from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES

    from trajhub_assets.partitions import instances_partitions, run_partitions

    total_runs = len(run_partitions.get_partition_keys(dynamic_partitions_store=instance))
    total_instances = len(instances_partitions.get_partition_keys(dynamic_partitions_store=instance))
    for asset, total in [(name, total_runs) for name in PER_RUN] + [("preference_pairs", total_instances)]:
        done = len(instance.get_materialized_partitions(AssetKey(asset)))
        print(f"{asset:>20}: {done}/{total} partitions materialized")
    busy = instance.get_runs_count(RunsFilter(statuses=IN_PROGRESS_RUN_STATUSES))
    print(f"{'dagster runs':>20}: {busy} in progress")
    if {"runs", "raw_calls"} <= set(store.table_names()):
        with store.connect() as con:
            con.sql(STATUS_SQL).show(max_width=160)


STATUS_SQL = """
SELECT r.model, count(*) AS runs, count(*) FILTER (WHERE r.resolved) AS resolved,
       count(*) FILTER (WHERE r.error IS NOT NULL) AS failed,
       coalesce(sum(c.tokens_in), 0) AS tokens_in, coalesce(sum(c.tokens_out), 0) AS tokens_out,
       round(coalesce(sum(c.cost_usd), 0), 4) AS cost_usd
FROM runs r LEFT JOIN (
    SELECT run_id, sum(input_tokens) AS tokens_in, sum(output_tokens) AS tokens_out, sum(cost_usd) AS cost_usd
    FROM raw_calls GROUP BY run_id) c USING (run_id)
GROUP BY r.model ORDER BY r.model"""


def cmd_sql(args) -> None:
    store = Store()
    if not store.table_names():
        where = store.objects.uri() if store.objects else store.root / "tables"
        raise TrajhubError(f"no tables under {where} yet: run `trajhub run` first")
    import duckdb

    with store.connect() as con:
        try:
            con.sql(args.query).show(max_rows=args.max_rows, max_width=args.max_width)
        except duckdb.Error as error:  # the user's SQL: their error, not a traceback
            raise TrajhubError(f"sql: {error}") from None


def cmd_catalog(args) -> None:
    print(Store().write_catalog(args.path))


def cmd_tables(args) -> None:
    from trajhub_assets.tables import reference_markdown

    print(reference_markdown(), end="")


def cmd_proxy_config(args) -> None:
    from trajhub_assets.config import load_config
    from trajhub_assets.recording.routes import write_proxy_config

    path = write_proxy_config(load_config().models, args.out)
    print(f"wrote {path}: the bundled routes and one per model with its own api_base/api_key_env.\n"
          f"Start the proxy with: LITELLM_MASTER_KEY=... python proxy/start_proxy.py --config {path} "
          "--host 0.0.0.0 --port 4000 (the models' key variables set in its environment)")


def cmd_check_tasks(args) -> None:
    from trajhub_assets.tasks.catalog import check_unique, read_jsonl

    items = check_unique(item for path in args.files for item in read_jsonl(path))
    print(f"{len(items)} task records OK")


def cmd_label_export(args) -> None:
    from trajhub_assets.release.calibration import export_label_sheet

    pairs = Store().sql("SELECT * FROM preference_pairs")
    count = export_label_sheet(pairs, args.out, limit=args.limit, kinds=args.kind)
    print(f"wrote {count} pairs to label to {args.out}")


def cmd_label_import(args) -> None:
    from trajhub_assets.release.calibration import merge_labels, read_labels
    from trajhub_assets.release.schema import HUMAN_LABELS

    store = Store()
    pair_ids = store.sql("SELECT pair_id FROM preference_pairs").column("pair_id").to_pylist()
    labels = read_labels(args.files, pair_ids=pair_ids)  # all-or-nothing: a bad file stores nothing
    existing = store.read(HUMAN_LABELS) if store.exists(HUMAN_LABELS) else None
    merged = merge_labels(existing, labels)
    store.write(HUMAN_LABELS, merged)
    print(f"imported {labels.num_rows} labels; {merged.num_rows} stored. "
          "Materialize reward_calibration to see the agreement figures.")


def main(argv: list[str] | None = None) -> None:
    import dagster  # backfill policies and pools are beta in Dagster; we use them knowingly
    warnings.filterwarnings("ignore", category=dagster.BetaWarning)
    warnings.filterwarnings("ignore", category=dagster.PreviewWarning)
    parser = argparse.ArgumentParser(prog="trajhub", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="materialize the pipeline (config: $TRAJHUB_CONFIG, "
                                          "default the bundled demo)")
    run.add_argument("--catalog-only", action="store_true",
                     help="only load the task catalog and register partitions")
    run.set_defaults(func=cmd_run)

    backfill = commands.add_parser(
        "backfill", help="run one model (already in the config) over every instance, batched",
        description="Add the model to the config first; this registers its partition and runs it over "
                    "every instance of the catalog, in batches of one Dagster run each (tag "
                    "trajhub/backfill), then rebuilds the pairs of those instances and cuts a release.")
    backfill.add_argument("--model", required=True, help="the model's name (or partition key) in the config")
    backfill.add_argument("--missing", action="store_true",
                          help="only the instances this model has not run yet (resume an interrupted backfill)")
    backfill.add_argument("--batch-size", type=int, default=None,
                          help="partitions per Dagster run (default: the assets' BackfillPolicy, 200)")
    backfill.add_argument("--no-release", action="store_true", help="stop after the pairs")
    backfill.add_argument("--submit", action="store_true",
                          help="do not run here: submit one Dagster backfill for the daemon (dagster dev)")
    backfill.set_defaults(func=cmd_backfill)

    status = commands.add_parser("status", help="partitions materialized, runs in progress, tokens and cost")
    status.set_defaults(func=cmd_status)

    sql = commands.add_parser("sql", help="query the store with DuckDB; tables are views")
    sql.add_argument("query")
    sql.add_argument("--max-rows", type=int, default=40)
    sql.add_argument("--max-width", type=int, default=160)
    sql.set_defaults(func=cmd_sql)

    catalog = commands.add_parser("catalog", help="write a DuckDB file of views for notebooks")
    catalog.add_argument("--path", default=None)
    catalog.set_defaults(func=cmd_catalog)

    tables = commands.add_parser("tables", help="print the reference of every table (markdown)")
    tables.set_defaults(func=cmd_tables)

    proxy_config = commands.add_parser(
        "proxy-config", help="write the LiteLLM config for an external proxy serving this project's models")
    proxy_config.add_argument("--out", required=True, help="where to write it (YAML)")
    proxy_config.set_defaults(func=cmd_proxy_config)

    check = commands.add_parser("check-tasks", help="validate task JSONL files")
    check.add_argument("files", nargs="+")
    check.set_defaults(func=cmd_check_tasks)

    label = commands.add_parser("label", help="human preference labels for reward calibration")
    label_commands = label.add_subparsers(dest="label_command", required=True)
    export = label_commands.add_parser("export", help="write a blind labelling sheet of stored pairs")
    export.add_argument("--out", required=True, help="sheet path: .csv, or .jsonl")
    export.add_argument("--limit", type=int, default=None)
    export.add_argument("--kind", action="append", choices=["trajectory", "step"], default=None)
    export.set_defaults(func=cmd_label_export)
    load = label_commands.add_parser("import", help="load labelled sheets (CSV or JSONL) into the store")
    load.add_argument("files", nargs="+")
    load.set_defaults(func=cmd_label_import)

    from trajhub_assets.interchange.commands import register as register_interchange
    from trajhub_assets.replay.cli import register as register_replay

    register_interchange(commands)
    register_replay(commands)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except TrajhubError as error:
        sys.exit(f"trajhub: {error}")


if __name__ == "__main__":
    main()
