"""`trajhub import` and `trajhub export`: the interchange formats from the command line.

cli.py calls `register(commands)` with its subparsers; the handlers raise TrajhubError on
bad input, which cli.py prints as one line.
"""

from __future__ import annotations

from trajhub_assets.interchange.registry import export_formats, import_formats
from trajhub_assets.interchange.sources import export_files, import_files
from trajhub_assets.store import Store


def cmd_import(args) -> None:
    from trajhub_assets.orchestration import dagster_instance

    store = Store()
    stored = import_files(
        store,
        args.format,
        args.files,
        model=args.model,
        instance=args.instance,
        replace=args.replace,
        dagster_instance=dagster_instance(store),
    )
    for s in stored:
        print(
            f"{s.partition['model']} / {s.partition['instance']}: {s.runs} run(s), "
            f"{s.conversations} conversation(s){f', {s.calls} call(s)' if s.calls else ''} "
            f"from {', '.join(s.sources)}"
        )
    print(f"imported into {store.root}; materialize rule_rewards / judge_rewards for these partitions to score them")


def cmd_export(args) -> None:
    count = export_files(
        Store(), args.format, args.out, models=args.model or (), instances=args.instance or (), kinds=args.kind or ()
    )
    print(f"wrote {count} conversation(s) to {args.out}")


def register(commands) -> None:
    """Add `import` and `export` to the `trajhub` command's subparsers."""
    load = commands.add_parser(
        "import",
        help="store mini-vela raw calls, ATIF trajectories or OpenAI/TRL JSONL as runs",
        description="Read every file first (nothing is stored if one is malformed), then store each run "
        "in its (model, instance) partition with its provenance in the `imports` table.",
    )
    load.add_argument("format", choices=import_formats())
    load.add_argument("files", nargs="+")
    load.add_argument("--model", help="model name (or partition key), when the file does not say it")
    load.add_argument("--instance", help="task instance id, when the file does not say it")
    load.add_argument(
        "--replace", action="store_true", help="replace a partition that holds recorded runs instead of refusing"
    )
    load.set_defaults(func=cmd_import)

    dump = commands.add_parser(
        "export",
        help="write stored conversations as ATIF or OpenAI/TRL JSONL",
        description="atif: a .jsonl file (one trajectory a line) or a directory of <conversation_id>.json; "
        "openai: a .jsonl file of {messages, tools, trajhub} records.",
    )
    dump.add_argument("format", choices=export_formats())
    dump.add_argument("--out", required=True)
    dump.add_argument("--model", action="append", help="only this model (repeatable)")
    dump.add_argument("--instance", action="append", help="only this instance (repeatable)")
    dump.add_argument(
        "--kind", action="append", help="only conversations of this kind: main, subagent, ... (repeatable)"
    )
    dump.set_defaults(func=cmd_export)
