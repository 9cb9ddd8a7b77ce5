"""Shared helpers for the benchmarks: result tables, temporary stores, raw SQLite.

Every benchmark prints one table with the columns
``figure | value | baseline | baseline value | ratio | target``, where ``ratio``
is value / baseline value, both measured in the same run on the same machine.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Row",
    "parse_args",
    "percentile",
    "print_table",
    "raw_sqlite_transaction",
    "temp_sqlite_url",
]


@dataclass(frozen=True)
class Row:
    """One measured figure, its same-run baseline and its target."""

    figure: str
    value: float
    unit: str = ""
    baseline: str = "-"
    baseline_value: float | None = None
    target: str = "-"
    met: bool | None = None  # None: no target for this row
    digits: int = 3

    def cells(self) -> list[str]:
        ratio = "-"
        if self.baseline_value is not None and self.baseline_value != 0:
            ratio = f"{self.value / self.baseline_value:.2f}x"
        elif self.baseline_value == 0 and self.value != 0:
            ratio = "inf"
        target = self.target
        if self.met is not None:
            target += "  [met]" if self.met else "  [MISSED]"
        return [
            self.figure,
            _fmt(self.value, self.unit, self.digits),
            self.baseline,
            "-"
            if self.baseline_value is None
            else _fmt(self.baseline_value, self.unit, self.digits),
            ratio,
            target,
        ]


HEADER = ["figure", "value", "baseline", "baseline value", "ratio", "target"]


def _fmt(value: float, unit: str, digits: int) -> str:
    if math.isnan(value):
        return "n/a"
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}" if unit else text


def print_table(
    title: str, rows: Sequence[Row], notes: Sequence[str] = (), *, markdown: bool = False
) -> None:
    """Print the rows as an aligned text table (or a Markdown table), then the notes."""
    body = [r.cells() for r in rows]
    print()
    if markdown:
        print(f"**{title}**")
        print()
        print("| " + " | ".join(HEADER) + " |")
        print("|" + "|".join("---" for _ in HEADER) + "|")
        for cells in body:
            print("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    else:
        widths = [max(len(line[i]) for line in [HEADER, *body]) for i in range(len(HEADER))]
        print(title)
        print("  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True)).rstrip())
        print("  ".join("-" * w for w in widths))
        for cells in body:
            print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    for note in notes:
        print(f"  note: {note}")
    missed = [r.figure for r in rows if r.met is False]
    print(
        f"  targets: {sum(r.met is True for r in rows)} met, {len(missed)} missed"
        + (f" ({', '.join(missed)})" if missed else "")
    )
    print(
        f"  machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )
    sys.stdout.flush()


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line every benchmark shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    return parser.parse_args(argv)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of ``values``, interpolating between ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@contextmanager
def temp_sqlite_url(prefix: str) -> Iterator[tuple[str, str]]:
    """Yield ``(url, directory)`` of a fresh SQLite store in a new temp dir, removed after."""
    directory = tempfile.mkdtemp(prefix=f"sluice-bench-{prefix}-")
    try:
        yield f"sqlite:///{os.path.join(directory, 'sluice.db')}", directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def raw_sqlite_transaction(path: str) -> Iterator[Callable[[], None]]:
    """Yield a function that runs one small write transaction on a fresh database.

    Same settings a store would use: WAL journal, synchronous=NORMAL; the
    transaction is ``BEGIN IMMEDIATE; UPDATE one row; COMMIT``.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, n INTEGER)")
        conn.execute("INSERT OR REPLACE INTO counter (id, n) VALUES (1, 0)")

        def transaction() -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
            conn.execute("COMMIT")

        yield transaction
    finally:
        conn.close()


def reap(procs: Sequence[Any], errors: Sequence[str]) -> None:
    """Join benchmark child processes (killing stragglers), then raise their errors."""
    for proc in procs:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    if errors:
        raise RuntimeError("; ".join(errors))
