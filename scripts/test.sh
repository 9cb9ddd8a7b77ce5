#!/usr/bin/env bash
# Create .venv (if absent), install Sluice with its dev extras at the pinned
# versions of constraints/test.txt, then lint, type-check and run every test; then
# run the store tests again with the oldest store clients pyproject.toml accepts
# (constraints/oldest.txt) in a second environment.
# Usage: bash scripts/test.sh [pytest args...]        (from any directory)
# Extra arguments go to pytest and skip the oldest-clients pass (a narrowed run).
set -euo pipefail
# shellcheck source=scripts/venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"

extras="$(cat constraints/extras)"
py="$VENV/bin/python"

echo "==> installing sluice[$extras] into $VENV, pinned by constraints/test.txt"
"$py" -m pip install --quiet --disable-pip-version-check \
    -c constraints/test.txt -e ".[$extras]"

echo "==> ruff check src tests benchmarks examples scripts"
"$py" -m ruff check src tests benchmarks examples scripts

echo "==> the sync front door is generated from the async one and current"
"$py" scripts/unasync.py --check

echo "==> the tree's shape: import layers, no cycles (lint-imports), modules <= 600 lines"
"$VENV/bin/lint-imports" --no-cache
"$py" scripts/check_layout.py

echo "==> no sleep in tests/ as synchronisation (allow-list: scripts/test_sleeps_allowed.txt)"
"$py" scripts/check_test_sleeps.py

echo "==> mypy (strict, configured in pyproject.toml)"
"$py" -m mypy

echo "==> python -m pytest"
"$py" -m pytest "$@"

if [ "$#" -gt 0 ]; then
    exit 0
fi

oldest="${VENV}-oldest"
if [ ! -x "$oldest/bin/python" ]; then
    echo "==> creating $oldest"
    "$PYTHON" -m venv "$oldest"
fi
echo "==> the store tests again with the oldest store clients (constraints/oldest.txt)"
grep -v -E '^(redis|psycopg|psycopg-binary)==' constraints/test.txt > "$oldest/others.txt"
"$oldest/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c constraints/oldest.txt -c "$oldest/others.txt" -e ".[dev,redis,postgres]"
"$oldest/bin/python" -c 'import redis, psycopg; print(f"redis-py {redis.__version__}, psycopg {psycopg.__version__}")'
"$oldest/bin/python" -m pytest -q -k "redis or postgres" \
    tests/store/test_redis.py tests/store/test_postgres.py \
    tests/conformance/test_acquire.py tests/conformance/test_async.py \
    tests/conformance/test_tickets.py
