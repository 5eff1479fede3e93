#!/usr/bin/env bash
# Creates .venv in the checkout (Python >= 3.11) and installs Mercia with everything the tests need.
# Reinstalls only when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=""
for cand in python3 python3.11 python3.12 python3.13; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import sys; sys.exit(sys.version_info < (3, 11))" 2>/dev/null; then
    PY=$cand; break
  fi
done
[ -n "$PY" ] || { echo "error: Mercia needs Python 3.11 or newer on PATH" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.mercia-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing Mercia and its dependencies into .venv ..." >&2
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' >&2 || true
  .venv/bin/python -m pip install -q -e ".[stats,web,dev]" 2>&1 | grep -v '^WARNING: Location' >&2 || true
  .venv/bin/python -c "import mercia, duckdb, sqlglot, pytest" || { echo "error: install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
