# Sourced by demo.sh and test.sh: cd to the repository root and make sure the
# virtual environment $VENV exists (default .venv; SLUICE_VENV overrides it),
# created with $PYTHON (default python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
VENV="${SLUICE_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
