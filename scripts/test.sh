#!/usr/bin/env bash
# The test suite. Set MERCIA_TEST_PG_URL to run the PostgreSQL tests (.ci/run starts a server and sets it);
# MERCIA_TEST_SPARK=1 runs the Spark tests (needs pyspark and Java); MERCIA_TEST_SLOW=1 the slow ones (CI sets all
# three). The browser tests (marker `browser`) run when Chromium (/usr/bin/chromium) and playwright are there; in CI
# (CI=true, as .ci/run sets it) they fail if either is missing. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
if [ -f tools/circe_oracle/setup.sh ] && [ "${MERCIA_SKIP_ORACLE:-0}" != 1 ]; then
  bash tools/circe_oracle/setup.sh >&2 || echo "warning: the OHDSI Circe oracle could not be set up; oracle tests will skip" >&2
fi
# loadfile: a test file runs on one worker, so its module fixtures (servers, sites, the browser tests' reports) are
# built once and its tests run in file order (xdist's loadgroup ignores xdist_group marks under this pytest).
exec .venv/bin/python -m pytest -n 2 --dist loadfile --durations=15 "$@"
