#!/usr/bin/env bash
# Quick start 1: set up, then run the pipeline end to end on the bundled demo tasks.
# Everything lands under ./.trajhub (store, DuckDB catalog, Dagster's SQLite instance).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_venv.sh
export TRAJHUB_HOME="${TRAJHUB_HOME:-$PWD/.trajhub}"
exec .venv/bin/trajhub run "$@"
