"""The `trajhub` command: run the pipeline on one machine, query the store, check inputs."""

import argparse
import os
import warnings
import sys
from pathlib import Path

from trajhub_assets.errors import TrajhubError
from trajhub_assets.store import Store


def _dagster_instance(store: Store):
    """The persistent Dagster instance: $DAGSTER_HOME, else SQLite under the store root."""
    from dagster import DagsterInstance

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(store.root / "dagster")))
    home.mkdir(parents=True, exist_ok=True)
    return DagsterInstance.get()


RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}  # Dagster's steps log at DEBUG
PER_RUN = ["raw_trajectories", "merged_trajectories", "rule_rewards", "judge_rewards"]
RELEASE = ["reward_calibration", "leaderboard", "hf_dataset_release"]


def materialize_stage(instance, resources, selection: list[str], keys: list[str] | None = None,
                      run_config=None):
    """One Dagster run of `selection`, over all of `keys` (a partition range) when given."""
    from dagster import materialize

    from trajhub_assets.definitions import defs

    tags = {RANGE_START: str(keys[0]), RANGE_END: str(keys[-1])} if keys else None
    return materialize(list(defs.assets), instance=instance, resources=resources, selection=selection,
                       tags=tags, raise_on_error=False, run_config=run_config)


def cmd_run(args) -> None:
    """Materialize the whole asset graph, stage by stage, each stage one Dagster run over
    all its partitions (as a backfill with BackfillPolicy.multi_run would batch them)."""
    from trajhub_assets.definitions import defs
    from trajhub_assets.partitions import instances_partitions, run_partitions
    from trajhub_assets.tasks.assets import register_partitions

    store = Store()
    instance = _dagster_instance(store)
    resources = defs.resources

    def stage(selection: list[str], keys: list[str] | None = None) -> None:
        print(f"trajhub: materializing {', '.join(selection)}"
              + (f" over {len(keys)} partitions" if keys else ""), flush=True)
        result = materialize_stage(instance, resources, selection, keys, run_config=QUIET)
        if not result.success:
            raise SystemExit(f"trajhub: {selection} failed: {_first_failure(result)}")

    stage(["tasks"])
    register_partitions(instance, store, resources["project"].load())
    run_keys = run_partitions.get_partition_keys(dynamic_partitions_store=instance)
    if not args.catalog_only and run_keys:
        stage(PER_RUN, run_keys)
        stage(["preference_pairs"], instances_partitions.get_partition_keys(dynamic_partitions_store=instance))
        stage(RELEASE)
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
    ("leaderboard", "SELECT model, runs, round(test_pass_rate, 3) AS pass_rate, round(isr, 3) AS isr, "
                    "round(csr, 3) AS csr, round(mean_reward, 3) AS reward, mean_steps FROM leaderboard"),
    ("preference_pairs", "SELECT kind, count(*) AS pairs, round(avg(margin), 3) AS mean_margin "
                         "FROM preference_pairs GROUP BY kind"),
]


def _first_failure(result) -> str:
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error.cause is not None:  # Dagster wraps the asset's own exception
                error = error.cause
            return error.message.strip()
    return "see the Dagster logs"


def cmd_sql(args) -> None:
    store = Store()
    if not store.table_names():
        raise TrajhubError(f"no tables under {store.root} yet: run `trajhub run` first")
    with store.connect() as con:
        con.sql(args.query).show(max_rows=args.max_rows, max_width=args.max_width)


def cmd_catalog(args) -> None:
    print(Store().write_catalog(args.path))


def cmd_tables(args) -> None:
    from trajhub_assets.tables import reference_markdown

    print(reference_markdown(), end="")


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
    from trajhub_assets.release.calibration import HUMAN_LABELS, merge_labels, read_labels

    store = Store()
    pair_ids = store.sql("SELECT pair_id FROM preference_pairs").column("pair_id").to_pylist()
    labels = read_labels(args.files, pair_ids=pair_ids)  # all-or-nothing: a bad file stores nothing
    existing = store.read(HUMAN_LABELS) if store.exists(HUMAN_LABELS) else None
    merged = merge_labels(existing, labels)
    store.write(HUMAN_LABELS, merged)
    print(f"imported {labels.num_rows} labels; {merged.num_rows} stored. "
          "Materialize reward_calibration to see the agreement figures.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="trajhub", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="materialize the pipeline (config: $TRAJHUB_CONFIG, "
                                          "default the bundled demo)")
    run.add_argument("--catalog-only", action="store_true",
                     help="only load the task catalog and register partitions")
    run.set_defaults(func=cmd_run)

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

    args = parser.parse_args(argv)
    import dagster  # backfill policies and pools are beta in Dagster; we use them knowingly
    warnings.filterwarnings("ignore", category=dagster.BetaWarning)
    try:
        args.func(args)
    except TrajhubError as error:
        sys.exit(f"trajhub: {error}")


if __name__ == "__main__":
    main()
