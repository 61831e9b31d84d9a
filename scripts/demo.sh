#!/usr/bin/env bash
# Quick start 1: set up, then run the pipeline end to end on the bundled demo tasks.
# As root it also installs and starts the Docker engine the sandboxes need. Everything
# lands under ./.trajhub (store, DuckDB catalog, recordings, release, Dagster's instance).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_venv.sh
if [ "$(id -u)" = 0 ]; then
    bash scripts/docker_setup.sh
fi
export TRAJHUB_HOME="${TRAJHUB_HOME:-$PWD/.trajhub}"
exec .venv/bin/trajhub run "$@"
