"""`trajhub replay RUN_ID`: replay a stored run and say how faithfully it reproduced.

cli.py wires it in with `replay_cli.register(commands)`.
"""

from __future__ import annotations

import sys

DIVERGED_EXIT_CODE = 3  # 0: reproduced; 1: could not replay (trajhub's error exit)

HELP = (
    "Re-run a recorded run's scaffold on its task in a fresh sandbox, with the recorded "
    "responses served behind the real proxy in place of the model, and compare what the agent "
    "sent back (tool results, file contents, test output) and how the run ended with the "
    "recording. Prints the fidelity (recorded agent calls whose request the replay sent "
    "again, after masking volatile tokens), the first divergence (call, expected, actual) "
    "and the outcome compared; stores the report in the `replays` table. Exit code 0 when "
    f"reproduced, {DIVERGED_EXIT_CODE} on a divergence, 1 when the run cannot be replayed."
)


def register(commands) -> None:
    """Add the `replay` command to trajhub's subcommands."""
    parser = commands.add_parser("replay", help="replay a recorded run and report its fidelity", description=HELP)
    parser.add_argument("run_id", help='a run id of the runs table, e.g. from `trajhub sql "SELECT run_id FROM runs"`')
    parser.add_argument("--no-store", action="store_true", help="print the report only")
    parser.add_argument("--masks", action="store_true", help="also print the masks applied")
    parser.set_defaults(func=cmd_replay)


def cmd_replay(args) -> None:
    from trajhub_assets.config import load_config
    from trajhub_assets.replay.masks import masks_markdown
    from trajhub_assets.replay.recorded import load_recorded_run
    from trajhub_assets.replay.service import ReplayService, report_row, store_reports
    from trajhub_assets.store import Store

    store, config = Store(), load_config()
    recorded = load_recorded_run(store, args.run_id, config)
    with ReplayService([recorded], store.root, config.sandbox) as service:
        report = service.replay(recorded)
    if not args.no_store:
        store_reports(store, [report_row(report)])
    print(report.text())
    if args.masks:
        print("\nmasks:\n" + masks_markdown(), end="")
    if not report.reproduced:
        sys.exit(DIVERGED_EXIT_CODE)
