"""The `trajhub` command: run the pipeline on one machine, query the store, check inputs."""

import argparse
import os
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


def cmd_run(args) -> None:
    """Materialize the asset graph, stage by stage, as far as it reaches."""
    from dagster import materialize

    from trajhub_assets.definitions import defs
    from trajhub_assets.tasks.assets import partition_requests, tasks

    store = Store()
    instance = _dagster_instance(store)
    resources = defs.resources
    result = materialize([tasks], instance=instance, resources=resources, raise_on_error=False)
    if not result.success:
        raise SystemExit(f"trajhub: materializing `tasks` failed: {_first_failure(result)}")
    for request in partition_requests(instance, store, resources["project"].load()):
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    catalog = store.write_catalog()
    con = store.connect()
    print(f"store: {store.root}\ncatalog for notebooks: {catalog}")
    print(f"dagster instance: {os.environ['DAGSTER_HOME']} (open the UI: dagster dev -w workspace.yaml)")
    con.sql("SELECT category, count(*) AS tasks, count(test_command) AS runnable "
            "FROM tasks GROUP BY category ORDER BY category").show()
    print("partitions: models =", instance.get_dynamic_partitions("models"),
          "| instances =", len(instance.get_dynamic_partitions("instances")))


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


def cmd_check_tasks(args) -> None:
    from trajhub_assets.tasks.catalog import check_unique, read_jsonl

    items = check_unique(item for path in args.files for item in read_jsonl(path))
    print(f"{len(items)} task records OK")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="trajhub", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="materialize the pipeline (config: $TRAJHUB_CONFIG, "
                                          "default the bundled demo)")
    run.set_defaults(func=cmd_run)

    sql = commands.add_parser("sql", help="query the store with DuckDB; tables are views")
    sql.add_argument("query")
    sql.add_argument("--max-rows", type=int, default=40)
    sql.add_argument("--max-width", type=int, default=160)
    sql.set_defaults(func=cmd_sql)

    catalog = commands.add_parser("catalog", help="write a DuckDB file of views for notebooks")
    catalog.add_argument("--path", default=None)
    catalog.set_defaults(func=cmd_catalog)

    check = commands.add_parser("check-tasks", help="validate task JSONL files")
    check.add_argument("files", nargs="+")
    check.set_defaults(func=cmd_check_tasks)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except TrajhubError as error:
        sys.exit(f"trajhub: {error}")


if __name__ == "__main__":
    main()
