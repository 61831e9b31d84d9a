#!/usr/bin/env bash
# Quick start 2: set up, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_venv.sh test
exec .venv/bin/python -m pytest "$@"
