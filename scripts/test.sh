#!/usr/bin/env bash
# Quick start 2: set up, then run the test suite (`-m cluster`: the Celery cluster lane).
# As root (CI, a fresh machine) it also installs and starts the Docker engine; the
# Docker tests fail under CI=true when no engine can run, and say so loudly elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_venv.sh test
if [ "$(id -u)" = 0 ]; then
    bash scripts/docker_setup.sh
    # test_cluster_settings.py starts a real Postgres and an SSH server in front of dockerd;
    # test_celery_cluster.py a Postgres and a Redis (the Celery broker).
    if [ ! -x /usr/sbin/sshd ] || [ ! -x /usr/bin/redis-server ] || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            openssh-server postgresql redis-server >/dev/null
    fi
else
    echo "test.sh: not root, so the Docker engine is not installed or started here" >&2
fi
# The pinned agent CLIs (Claude Code, Kilo, Droid, mini-swe-agent) for the end-to-end tests.
if command -v npm >/dev/null; then
    bash scripts/install_clients.sh
else
    echo "test.sh: npm not found, so the agent CLIs are not installed; their tests will say so" >&2
fi
# Lint and format (ruff, configured in pyproject.toml); a finding fails the run after the tests.
lint=0
.venv/bin/ruff check --quiet . || lint=1
.venv/bin/ruff format --check --quiet . || { echo "test.sh: run .venv/bin/ruff format ." >&2; lint=1; }
status=0
.venv/bin/python -m pytest "$@" || status=$?
[ "$lint" = 0 ] || echo "test.sh: ruff found problems (above)" >&2
exit $(( status ? status : lint ))
