#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, build the three-site synthetic federation under
# ./demo (DuckDB, no server to install) and run the demo on it. Extra arguments go to `mercia demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
exec .venv/bin/mercia demo "$@"
