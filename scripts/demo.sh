#!/usr/bin/env bash
# Create .venv (if absent), install Sluice into it, and run the invoices demo.
# Usage: bash scripts/demo.sh        (from any directory)
set -euo pipefail
# shellcheck source=scripts/venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"

echo "==> installing sluice into $VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e .

echo "==> python examples/invoices.py"
"$VENV/bin/python" examples/invoices.py
