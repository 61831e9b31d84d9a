"""`trajhub branch RUN_ID --at STEP --samples N`: continue a stored run from one of its steps.

cli.py wires it in with `branching_cli.register(commands)`.
"""

from __future__ import annotations

import sys

REFUSED_EXIT_CODE = 3  # every continuation was refused: the run's prefix no longer reproduces

HELP = (
    "Replay a stored run up to main step STEP (0-based, as rule_rewards counts them) in a fresh "
    "sandbox, with its recorded responses served behind the real proxy, checking that every call "
    "of the prefix asks what it asked when recorded; then let the run's model continue live from "
    "STEP to the end of the task and its tests, N times. Each continuation is stored as a run of "
    "its own in the branch tables (branch_runs, branch_raw_calls, branch_message_blobs) with its "
    "parent, step and sample. A branch whose prefix does not reproduce is refused, naming the call "
    f"and the difference. Exit code 0 when a continuation ran, {REFUSED_EXIT_CODE} when all were refused."
)


def register(commands) -> None:
    parser = commands.add_parser("branch", help="continue a recorded run from one of its steps", description=HELP)
    parser.add_argument("run_id", help='a run id of the runs table, e.g. from `trajhub sql "SELECT run_id FROM runs"`')
    parser.add_argument("--at", type=int, required=True, metavar="STEP", help="the main step to resample (>= 1)")
    parser.add_argument("--samples", type=int, default=2, metavar="N", help="continuations to sample (default 2)")
    parser.set_defaults(func=cmd_branch)


def cmd_branch(args) -> None:
    from trajhub_assets.branching.branches import is_refused, record_branches
    from trajhub_assets.config import load_config
    from trajhub_assets.definitions import environment, environment_resources
    from trajhub_assets.resources import ProjectResource
    from trajhub_assets.store import Store

    config = load_config()
    # The proxy of a normal run: a provider's model continues through it (started on first use).
    proxy = environment_resources(ProjectResource(), environment(config))["proxy"]
    try:
        rows = record_branches(Store(), config, args.run_id, args.at, args.samples, proxy)
    finally:
        proxy.teardown_after_execution(None)
    for row in rows:
        if row["error"]:
            print(f"{row['run_id']}: {row['error']}")
        else:
            tests = f"{row['tests_passed']}/{row['tests_total']} tests passed" if row["tests_total"] else "no tests"
            print(f"{row['run_id']}: {row['stop_reason']}, {tests}, resolved={row['resolved']}")
    if all(is_refused(row) for row in rows):
        sys.exit(REFUSED_EXIT_CODE)
