#!/usr/bin/env bash
# Quick start 2: set up, then run the whole test suite.
# As root (CI, a fresh machine) it also installs and starts the Docker engine; the
# Docker tests fail under CI=true when no engine can run, and say so loudly elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_venv.sh test
if [ "$(id -u)" = 0 ]; then
    bash scripts/docker_setup.sh
else
    echo "test.sh: not root, so the Docker engine is not installed or started here" >&2
fi
# The pinned agent CLIs (Claude Code, Kilo, Droid, mini-swe-agent) for the end-to-end tests.
if command -v npm >/dev/null; then
    bash scripts/install_clients.sh
else
    echo "test.sh: npm not found, so the agent CLIs are not installed; their tests will say so" >&2
fi
exec .venv/bin/python -m pytest "$@"
