#!/usr/bin/env bash
# Create .venv (if absent), install Sluice with its dev extras, then lint,
# type-check and run every test. Extra arguments go to pytest.
# Usage: bash scripts/test.sh [pytest args...]        (from any directory)
set -euo pipefail
# shellcheck source=scripts/venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"

echo "==> installing sluice[dev,redis,postgres,ui] into .venv"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev,redis,postgres,ui]'

echo "==> ruff check src tests benchmarks examples scripts"
.venv/bin/python -m ruff check src tests benchmarks examples scripts

echo "==> the sync front door is generated from the async one and current"
.venv/bin/python scripts/unasync.py --check

echo "==> the tree's shape: import layers, no cycles (lint-imports), modules <= 600 lines"
.venv/bin/lint-imports --no-cache
.venv/bin/python scripts/check_layout.py

echo "==> mypy (strict, configured in pyproject.toml)"
.venv/bin/python -m mypy

echo "==> python -m pytest"
.venv/bin/python -m pytest "$@"
