#!/usr/bin/env bash
# Create ./.venv with Python 3.11+ and install trajhub into it (idempotent).
# Usage: scripts/setup_venv.sh [extra]   e.g. `test` for the test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
"$python" -c 'import sys; assert sys.version_info >= (3, 11), "trajhub needs Python 3.11+"'
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
spec="."
[ $# -gt 0 ] && spec=".[$1]"
.venv/bin/python -m pip install --quiet --editable "$spec"
