"""Fail on sleeps in tests that the allow-list does not explain.

A fixed sleep used as synchronisation ("by now it has happened") makes a test pass
without the case under test ever happening on a fast machine, and fail on a slow
one. Tests wait for observed states instead (``wait_until`` and friends in
``tests/conformance/_helpers.py``). The sleeps that remain are listed, each with its
reason, in ``scripts/test_sleeps_allowed.txt``:

    tests/path/to/file.py: text on the line -> why this sleep is not synchronisation

The text is matched against the stripped source line; one entry may cover several
lines of its file. An entry that matches nothing is an error too (the allow-list
stays current). ``asyncio.sleep(0)``, one turn of the event loop, is not a sleep.

Usage: python scripts/check_test_sleeps.py [--list]   (from any directory)
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
ALLOW_LIST = ROOT / "scripts" / "test_sleeps_allowed.txt"
SLEEP_MODULES = {"time", "asyncio"}


@dataclass(frozen=True)
class Sleep:
    path: str
    """Relative to the repository root, with forward slashes."""
    line: int
    text: str
    """The stripped source line."""


@dataclass
class Entry:
    path: str
    pattern: str
    reason: str
    where: int
    """Line number in the allow-list."""
    used: bool = False


def _is_zero(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value == 0


def sleeps_in(path: Path, root: Path = ROOT) -> list[Sleep]:
    """Every call of time.sleep / asyncio.sleep (or a bare ``sleep`` imported from them)."""
    source = path.read_text()
    tree = ast.parse(source, str(path))
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module in SLEEP_MODULES
        for alias in node.names
        if alias.name == "sleep"
    }
    lines = source.splitlines()
    rel = path.relative_to(root).as_posix()
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        is_sleep = (
            isinstance(func, ast.Attribute)
            and func.attr == "sleep"
            and isinstance(func.value, ast.Name)
            and func.value.id in SLEEP_MODULES
        ) or (isinstance(func, ast.Name) and func.id in imported)
        if not is_sleep or (node.args and _is_zero(node.args[0])):
            continue
        found.append(Sleep(rel, node.lineno, lines[node.lineno - 1].strip()))
    return sorted(found, key=lambda s: (s.path, s.line))


def read_allow_list(path: Path) -> tuple[list[Entry], list[str]]:
    """The entries, and what is wrong with the file's lines."""
    entries: list[Entry] = []
    problems: list[str] = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where, sep, rest = line.partition(":")
        pattern, arrow, reason = rest.partition(" -> ")
        if not sep or not arrow or not where.strip() or not pattern.strip():
            problems.append(f"{path.name}:{number}: not 'path: text -> reason': {line!r}")
            continue
        if not reason.strip():
            problems.append(f"{path.name}:{number}: no reason given: {line!r}")
            continue
        entries.append(Entry(where.strip(), pattern.strip(), reason.strip(), number))
    return entries, problems


def check(root: Path = ROOT, allow_list: Path = ALLOW_LIST) -> list[str]:
    """Everything wrong in ``root``/tests: unexplained sleeps, stale or malformed entries."""
    entries, problems = read_allow_list(allow_list)
    for path in sorted((root / "tests").rglob("*.py")):
        for sleep in sleeps_in(path, root):
            matching = [e for e in entries if e.path == sleep.path and e.pattern in sleep.text]
            for entry in matching:
                entry.used = True
            if not matching:
                problems.append(
                    f"{sleep.path}:{sleep.line}: {sleep.text}\n"
                    "    a sleep the allow-list does not explain: wait for an observed state"
                    " (tests/conformance/_helpers.py), or add\n"
                    f"    '{sleep.path}: {sleep.text} -> <why it is not synchronisation>'"
                    f" to {allow_list.name}"
                )
    for entry in entries:
        if not entry.used:
            problems.append(
                f"{allow_list.name}:{entry.where}: matches no sleep in {entry.path}"
                f" ({entry.pattern!r}): remove it"
            )
    return problems


def main(argv: list[str]) -> int:
    if "--list" in argv:
        for path in sorted(TESTS.rglob("*.py")):
            for sleep in sleeps_in(path):
                print(f"{sleep.path}:{sleep.line}: {sleep.text}")
        return 0
    problems = check()
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) with sleeps in tests", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
