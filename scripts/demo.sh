#!/usr/bin/env bash
# Create .venv (if absent), install Sluice into it, and run the invoices demo.
# Usage: bash scripts/demo.sh        (from any directory)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv .venv
fi

echo "==> installing sluice into .venv"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .

echo "==> python examples/invoices.py"
.venv/bin/python examples/invoices.py
