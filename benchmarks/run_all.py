"""Run every benchmark, one fresh process each, and print their tables.

Run: ``python benchmarks/run_all.py [--markdown] [--only NAME ...]``
Each benchmark also runs on its own: ``python benchmarks/handoff.py``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    "handoff",
    "throughput",
    "seed_workload",
    "rate_accuracy",
    "idle_cost",
    "commands_per_grant",
    "flows_seed",
    "flows_overhead",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=BENCHMARKS,
        metavar="NAME",
        help=f"run only these: {', '.join(BENCHMARKS)}",
    )
    args = parser.parse_args(argv)
    failed: list[str] = []
    for name in args.only or BENCHMARKS:
        command = [sys.executable, str(HERE / f"{name}.py")]
        if args.markdown:
            command.append("--markdown")
        print(f"==> {name}", flush=True)
        started = time.monotonic()
        code = subprocess.call(command)
        print(f"    ({name}: {time.monotonic() - started:.1f} s, exit {code})", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
