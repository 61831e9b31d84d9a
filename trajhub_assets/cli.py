"""The `trajhub` command: run the pipeline on one machine, query the store, check inputs.

The commands that run something are thin: trajhub_assets/orchestration.py does the running, and
logs its progress, which this prints."""

import argparse
import logging
import os
import sys
import warnings

from trajhub_assets.branching.schema import BRANCH_PAIRS
from trajhub_assets.errors import TrajhubError
from trajhub_assets.pairs.schema import PREFERENCE_PAIRS
from trajhub_assets.recording.schema import RAW_CALLS, RUNS
from trajhub_assets.release.schema import LEADERBOARD
from trajhub_assets.store import Store
from trajhub_assets.tasks.schema import TASKS


def cmd_run(args) -> None:
    """Materialize the whole asset graph, stage by stage, each stage one Dagster run."""
    from trajhub_assets.orchestration import dagster_instance, run_pipeline

    store = Store()
    run_pipeline(dagster_instance(store), catalog_only=args.catalog_only)
    catalog = store.write_catalog()
    print(
        f"store: {store.root}\ncatalog for notebooks: {catalog}\n"
        f"dagster instance: {os.environ['DAGSTER_HOME']} (UI: dagster dev -w workspace.yaml)"
    )
    with store.connect() as con:
        for table, query in SUMMARIES:
            if table.name in store.table_names():
                con.sql(query).show(max_width=160)


SUMMARIES = [
    (
        TASKS,
        "SELECT category, count(*) AS tasks, count(test_command) AS runnable "
        f"FROM {TASKS.name} GROUP BY category ORDER BY category",
    ),
    (
        RUNS,
        "SELECT model, count(*) AS runs, count(*) FILTER (WHERE resolved) AS resolved, "
        f"count(error) AS failed, any_value(error) AS an_error FROM {RUNS.name} GROUP BY model ORDER BY model",
    ),
    (
        LEADERBOARD,
        "SELECT model, runs, round(test_pass_rate, 3) AS pass_rate, round(isr, 3) AS isr, "
        f"round(csr, 3) AS csr, round(mean_reward, 3) AS reward, mean_steps FROM {LEADERBOARD.name}",
    ),
    (
        PREFERENCE_PAIRS,
        "SELECT kind, count(*) AS pairs, round(avg(margin), 3) AS mean_margin "
        f"FROM {PREFERENCE_PAIRS.name} GROUP BY kind",
    ),
    (
        BRANCH_PAIRS,
        "SELECT kind, count(*) AS pairs, count(*) FILTER (WHERE basis = 'tests') AS by_tests, "
        f"count(DISTINCT parent_run_id || ':' || branch_step) AS branch_points FROM {BRANCH_PAIRS.name} GROUP BY kind",
    ),
]


def cmd_backfill(args) -> None:
    """One model over every instance, in batches here; or, with --submit, one Dagster backfill
    for the daemon (`dagster dev`) to run."""
    from trajhub_assets.orchestration import backfill_model, dagster_instance, submit_backfill
    from trajhub_assets.partitions import BATCHED

    store = Store()
    instance = dagster_instance(store)
    if args.submit:
        backfill = submit_backfill(instance, args.model, missing=args.missing)
    else:
        backfill = backfill_model(
            instance, args.model, missing=args.missing, batch_size=args.batch_size, release=not args.no_release
        )
    if not backfill.instances:
        print(f"trajhub: {backfill.model.name} has run every instance already (drop --missing to run them again)")
    elif args.submit:
        print(
            f"trajhub: backfill {backfill.backfill_id} of {backfill.model.name} over {len(backfill.instances)} "
            f"instances submitted; the daemon runs it in batches of up to {BATCHED.max_partitions_per_run} "
            "(UI: Overview > Backfills)"
        )
    else:
        _print_status(store, instance)


def cmd_status(args) -> None:
    from trajhub_assets.orchestration import dagster_instance

    store = Store()
    _print_status(store, dagster_instance(store))


def _print_status(store: Store, instance) -> None:
    """Partitions materialized per asset, and per model: runs, outcomes, tokens and cost."""
    from dagster import AssetKey, RunsFilter

    from trajhub_assets.jobs import IN_PROGRESS, RECORD_AND_SCORE_ASSETS
    from trajhub_assets.partitions import instances_partitions, run_partitions

    total_runs = len(run_partitions.get_partition_keys(dynamic_partitions_store=instance))
    total_instances = len(instances_partitions.get_partition_keys(dynamic_partitions_store=instance))
    for asset, total in [(name, total_runs) for name in RECORD_AND_SCORE_ASSETS] + [
        ("preference_pairs", total_instances)
    ]:
        done = len(instance.get_materialized_partitions(AssetKey(asset)))
        print(f"{asset:>20}: {done}/{total} partitions materialized")
    busy = instance.get_runs_count(RunsFilter(statuses=IN_PROGRESS))
    print(f"{'dagster runs':>20}: {busy} in progress")
    if {RUNS.name, RAW_CALLS.name} <= set(store.table_names()):
        with store.connect() as con:
            con.sql(STATUS_SQL).show(max_width=160)


STATUS_SQL = f"""
SELECT r.model, count(*) AS runs, count(*) FILTER (WHERE r.resolved) AS resolved,
       count(*) FILTER (WHERE r.error IS NOT NULL) AS failed,
       coalesce(sum(c.tokens_in), 0) AS tokens_in, coalesce(sum(c.tokens_out), 0) AS tokens_out,
       round(coalesce(sum(c.cost_usd), 0), 4) AS cost_usd
FROM {RUNS.name} r LEFT JOIN (
    SELECT run_id, sum(input_tokens) AS tokens_in, sum(output_tokens) AS tokens_out, sum(cost_usd) AS cost_usd
    FROM {RAW_CALLS.name} GROUP BY run_id) c USING (run_id)
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


def cmd_graph(args) -> None:
    from trajhub_assets.definitions import defs
    from trajhub_assets.lineage import graph_mermaid

    print(graph_mermaid(defs), end="")


def cmd_proxy_config(args) -> None:
    from trajhub_assets.config import load_config
    from trajhub_assets.recording.routes import write_proxy_config

    path = write_proxy_config(load_config().models, args.out)
    print(
        f"wrote {path}: the bundled routes and one per model with its own api_base/api_key_env.\n"
        f"Start the proxy with: LITELLM_MASTER_KEY=... python proxy/start_proxy.py --config {path} "
        "--host 0.0.0.0 --port 4000 (the models' key variables set in its environment)"
    )


def cmd_check_tasks(args) -> None:
    from trajhub_assets.tasks.catalog import check_unique, read_jsonl

    items = check_unique(item for path in args.files for item in read_jsonl(path))
    print(f"{len(items)} task records OK")


def cmd_label_export(args) -> None:
    from trajhub_assets.release.calibration import export_label_sheet

    pairs = Store().sql(f"SELECT * FROM {PREFERENCE_PAIRS.name}")
    count = export_label_sheet(pairs, args.out, limit=args.limit, kinds=args.kind)
    print(f"wrote {count} pairs to label to {args.out}")


def cmd_label_import(args) -> None:
    from trajhub_assets.release.calibration import merge_labels, read_labels
    from trajhub_assets.release.schema import HUMAN_LABELS

    store = Store()
    pair_ids = store.sql(f"SELECT pair_id FROM {PREFERENCE_PAIRS.name}").column("pair_id").to_pylist()
    labels = read_labels(args.files, pair_ids=pair_ids)  # all-or-nothing: a bad file stores nothing
    existing = store.read(HUMAN_LABELS) if store.exists(HUMAN_LABELS) else None
    merged = merge_labels(existing, labels)
    store.write(HUMAN_LABELS, merged)
    print(
        f"imported {labels.num_rows} labels; {merged.num_rows} stored. "
        "Materialize reward_calibration to see the agreement figures."
    )


def _print_progress() -> None:
    """What orchestration logs (a stage starting, a batch), on stdout as the command's own lines."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("trajhub: %(message)s"))
    logger = logging.getLogger("trajhub_assets.orchestration")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> None:
    import dagster  # backfill policies and pools are beta in Dagster; we use them knowingly

    warnings.filterwarnings("ignore", category=dagster.BetaWarning)
    warnings.filterwarnings("ignore", category=dagster.PreviewWarning)
    _print_progress()
    parser = argparse.ArgumentParser(prog="trajhub", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run", help="materialize the pipeline (config: $TRAJHUB_CONFIG, default the bundled demo)"
    )
    run.add_argument("--catalog-only", action="store_true", help="only load the task catalog and register partitions")
    run.set_defaults(func=cmd_run)

    backfill = commands.add_parser(
        "backfill",
        help="run one model (already in the config) over every instance, batched",
        description="Add the model to the config first; this registers its partition and runs it over "
        "every instance of the catalog, in batches of one Dagster run each (tag "
        "trajhub/backfill), then rebuilds the pairs of those instances and cuts a release.",
    )
    backfill.add_argument("--model", required=True, help="the model's name (or partition key) in the config")
    backfill.add_argument(
        "--missing",
        action="store_true",
        help="only the instances this model has not run yet (resume an interrupted backfill)",
    )
    backfill.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="partitions per Dagster run (default: the assets' BackfillPolicy, 200)",
    )
    backfill.add_argument("--no-release", action="store_true", help="stop after the pairs")
    backfill.add_argument(
        "--submit",
        action="store_true",
        help="do not run here: submit one Dagster backfill for the daemon (dagster dev)",
    )
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
    graph = commands.add_parser("graph", help="print the asset graph as README.md shows it (Mermaid)")
    graph.set_defaults(func=cmd_graph)

    proxy_config = commands.add_parser(
        "proxy-config", help="write the LiteLLM config for an external proxy serving this project's models"
    )
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

    from trajhub_assets.branching.cli import register as register_branching
    from trajhub_assets.interchange.commands import register as register_interchange
    from trajhub_assets.replay.cli import register as register_replay

    register_interchange(commands)
    register_replay(commands)
    register_branching(commands)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except TrajhubError as error:
        sys.exit(f"trajhub: {error}")


if __name__ == "__main__":
    main()
