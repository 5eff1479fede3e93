#!/usr/bin/env bash
# Create (or confirm) the oracle venv that runs OHDSI's Circe SQL: tools/circe_oracle/run_circe.py.
# Idempotent and fast when nothing changed: the installed requirements are stamped inside the venv.
# Usage: bash tools/circe_oracle/setup.sh     (venv path: $MERCIA_ORACLE_VENV or <repo>/.venv-oracle)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VENV=${MERCIA_ORACLE_VENV:-$ROOT/.venv-oracle}
REQ=$HERE/requirements.txt
STAMP=$VENV/.mercia-oracle-requirements

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && cmp -s "$REQ" "$STAMP"; then
  echo "circe oracle venv up to date: $VENV"
  exit 0
fi

echo "building circe oracle venv: $VENV"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# The venv sits in the repo root; make it ignore itself (as Python >= 3.13 venvs do) so it is never
# committed, whatever the repo's .gitignore says.
printf '*\n' > "$VENV/.gitignore"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md

import circe  # noqa: F401  (the import itself is the check)
import duckdb

assert duckdb.__version__ == "2.0.1", duckdb.__version__
print("ohdsi-circepy", md.version("ohdsi-circepy"), "duckdb", duckdb.__version__)
PY
cp "$REQ" "$STAMP"
