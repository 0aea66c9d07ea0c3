#!/usr/bin/env bash
# The test command: the whole suite, against SQLite and a real PostgreSQL, with the browser
# tests in Debian's Chromium. Extra arguments go to pytest (e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. .venv/bin/activate
if [ -z "${WHETSTONE_TEST_PG_URL:-}" ]; then
  bash scripts/postgres.sh start >/dev/null
  WHETSTONE_TEST_PG_URL=$(bash scripts/postgres.sh url)
  export WHETSTONE_TEST_PG_URL
fi
[ -x /usr/bin/chromium ] || bash scripts/install_browser.sh
ruff check src tests benchmarks scripts
lint-imports  # the layers contract in pyproject.toml: no backward import between layers
mypy          # the type checker over src/ ([tool.mypy] in pyproject.toml)
python -m pytest -q -p no:cacheprovider "$@"
