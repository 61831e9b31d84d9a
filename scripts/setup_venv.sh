#!/usr/bin/env bash
# Create ./.venv with Python 3.11+ and install trajhub into it (idempotent).
# Usage: scripts/setup_venv.sh [extra]   e.g. `test` for the test dependencies.
# Prints a line per step; pip's own output goes to .venv/setup.log, shown only on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
"$python" -c 'import sys; assert sys.version_info >= (3, 11), "trajhub needs Python 3.11+"'
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $("$python" --version)"
    "$python" -m venv .venv
fi
log=.venv/setup.log
spec="."
[ $# -gt 0 ] && spec=".[$1]"
echo "setup: installing trajhub${1:+ with [$1]} into .venv (a few minutes the first time; log: $log)"
if ! { .venv/bin/python -m pip install --upgrade pip \
       && .venv/bin/python -m pip install --editable "$spec"; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "setup: pip install failed; the whole log is $log" >&2
    exit 1
fi
echo "setup: .venv ready ($(.venv/bin/python -m pip list --format=freeze 2>/dev/null | wc -l) packages)"
