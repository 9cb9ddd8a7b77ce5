"""Generate src/sluice/limits/sync.py from src/sluice/limits/aio.py.

The async front door is the one source of truth; the sync one is derived from
it by plain token rewriting, so the two cannot drift. The only code that
differs between them lives, twinned by hand, in src/sluice/limits/waiting.py.

    python scripts/unasync.py           # rewrite sync.py
    python scripts/unasync.py --check   # exit 1 if sync.py is not current (CI)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "sluice" / "limits" / "aio.py"
TARGET = ROOT / "src" / "sluice" / "limits" / "sync.py"

HEADER = '''"""The synchronous front door: :class:`Limits`, :class:`Lease` and module-level helpers.

GENERATED from aio.py by scripts/unasync.py: edit aio.py, then run the script.
"""
'''

# Exact lines rewritten as a whole, before the token rules.
LINES = {
    "from sluice.store.base import AsyncStore, Store": "from sluice.store.base import Store",
}

# (pattern, replacement), applied in order to every other line.
TOKENS = [
    (r"\basync def ", "def "),
    (r"\basync with\b", "with"),
    (r"\bawait ", ""),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\baclose\b", "close"),
    (r"\b(\w+)_async\b", r"\1"),
    (r"\bAsyncStore\b", "Store"),
    (r"\bself\._astore\b", "self._store"),
    (r"\bastore\b", "store"),
    (r"\baio\.Limits\(", "Limits("),
]


def _strip_docstring(text: str) -> str:
    """Drop the module docstring (the generated file gets HEADER instead)."""
    match = re.match(r'\s*""".*?"""\n', text, re.DOTALL)
    return text[match.end() :] if match else text


def generate(source: str) -> str:
    """The sync module for an async module's source."""
    out = []
    for line in _strip_docstring(source).splitlines():
        if "# unasync: remove" in line:
            continue
        stripped = line.strip()
        if stripped in LINES:
            line = line.replace(stripped, LINES[stripped])
        else:
            for pattern, replacement in TOKENS:
                line = re.sub(pattern, replacement, line)
        out.append(line)
    return _format(HEADER + "\n".join(out).rstrip() + "\n")


def _format(code: str) -> str:
    """Format as the rest of the tree is (ruff format), so the output is stable."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--stdin-filename", str(TARGET), "-"],
        input=code,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return result.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if sync.py is not current")
    args = parser.parse_args(argv)
    expected = generate(SOURCE.read_text())
    if args.check:
        if TARGET.read_text() != expected:
            print(f"{TARGET.relative_to(ROOT)} is stale: run python scripts/unasync.py")
            return 1
        print(f"{TARGET.relative_to(ROOT)} is current")
        return 0
    TARGET.write_text(expected)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
