#!/usr/bin/env bash
# Re-pin, on purpose, the versions scripts/test.sh installs: resolve the newest
# releases pyproject.toml allows in a fresh virtual environment and write them to
# constraints/test.txt. Review the diff, run scripts/test.sh, commit both.
# Usage: bash scripts/lock.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

echo "==> resolving sluice[$(cat constraints/extras)] in a fresh virtual environment"
"$PYTHON" -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -e ".[$(cat constraints/extras)]"
{
    echo "# The versions scripts/test.sh installs, resolved by scripts/lock.sh on"
    echo "# $(date -u +%Y-%m-%d) with $("$scratch/venv/bin/python" --version). Edit by"
    echo "# running that script, not by hand."
    "$scratch/venv/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check
} > constraints/test.txt
echo "wrote constraints/test.txt ($(grep -vc '^#' constraints/test.txt) packages)"
