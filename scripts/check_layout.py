"""Check the tree's shape rules that no linter knows: no module of src/ over MAX_LINES lines.

Usage: python scripts/check_layout.py     (exit 1, naming each module, if one is too long)
The import rules (layers, no cycles) are checked by ``lint-imports`` (pyproject.toml).
"""

from __future__ import annotations

import sys
from pathlib import Path

MAX_LINES = 600
"""Past this, a module holds more than one responsibility: split it."""

ROOT = Path(__file__).resolve().parent.parent / "src" / "sluice"


def main() -> int:
    too_long = []
    for path in sorted(ROOT.rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            too_long.append((lines, path.relative_to(ROOT.parent.parent)))
    for lines, path in too_long:
        print(f"{path}: {lines} lines, over {MAX_LINES}: split it by responsibility")
    if not too_long:
        print(f"every module of src/sluice has at most {MAX_LINES} lines")
    return 1 if too_long else 0


if __name__ == "__main__":
    sys.exit(main())
