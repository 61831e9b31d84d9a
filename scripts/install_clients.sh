#!/usr/bin/env bash
# Install the pinned agent clients (Claude Code, Kilo, Droid from npm; mini-swe-agent from PyPI)
# into the client cache ($TRAJHUB_CLIENTS_DIR, default ~/.cache/trajhub/clients). Idempotent:
# an installed client is left alone. The versions live in the scaffold registry
# (trajhub_assets/scaffolds/__init__.py).
# Usage: scripts/install_clients.sh [claude-code|kilo|droid|mini-swe-agent ...]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v npm >/dev/null || { echo "install_clients.sh: npm is needed (apt-get install npm)" >&2; exit 1; }
[ -x .venv/bin/python ] || scripts/setup_venv.sh
exec .venv/bin/python -c '
import logging, sys
from trajhub_assets.errors import TrajhubError
from trajhub_assets.scaffolds import install_clients
logging.basicConfig(level=logging.INFO, format="%(message)s")
try:
    print("\n".join(install_clients(sys.argv[1:])))
except TrajhubError as error:
    sys.exit(f"install_clients.sh: {error}")
' "$@"
