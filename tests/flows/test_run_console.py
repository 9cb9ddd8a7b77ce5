"""Run logs on the console: a script that runs a flow, and configures no logging, prints
its run loggers' records at INFO (and errors about runs, with tracebacks) on stderr,
naming the flow run and task run; it prints nothing of them once logging is configured
(the application's handlers get them) or with ``SLUICE_LOG_CONSOLE=0``.

Run as a program: the test runner itself configures logging (its capture handlers).
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

SCRIPT = """
import logging, sys
from sluice import flow, get_run_logger, task

if sys.argv[1] == "configured":
    logging.basicConfig(level=logging.INFO, format="mine: %(message)s")

@task
def extract() -> int:
    get_run_logger().info("fetched %d rows", 20)
    get_run_logger().debug("a debug line")
    return 20

@task
def load(rows: int) -> None:
    raise ValueError(f"cannot load {rows} rows")

@flow(name="etl")
def etl() -> None:
    get_run_logger().info("starting")
    logging.getLogger("sluice.limits").warning("a warning about no run")
    load.submit(extract.submit()).result()

if __name__ == "__main__":
    try:
        etl()
    except ValueError:
        pass
"""


def _run(tmp_path: Path, mode: str, **env: str) -> str:
    script = tmp_path / "etl.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), mode],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={
            **os.environ,
            "SLUICE_URL": f"sqlite:///{tmp_path / 'sluice.db'}",
            "SLUICE_PROGRESS": "0",
            **env,
        },
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.mark.timeout(120)
def test_run_logs_are_printed_at_info_naming_the_runs(tmp_path: Path) -> None:
    before = datetime.now(timezone.utc)
    err = _run(tmp_path, "plain").splitlines()
    starting = next(line for line in err if line.endswith("| INFO    | flow run 'etl' - starting"))
    # The time is UTC, ISO with a Z, like every time Sluice shows.
    printed = datetime.strptime(starting.split(" | ")[0], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert abs(printed.replace(tzinfo=timezone.utc) - before) < timedelta(minutes=2)
    assert any(
        line.endswith("| INFO    | task run 'extract' of flow run 'etl' - fetched 20 rows")
        for line in err
    )
    failed = next(i for i, line in enumerate(err) if "| ERROR   | task run 'load'" in line)
    assert "Failed: ValueError: cannot load 20 rows" in err[failed]
    assert err[failed + 1] == "Traceback (most recent call last):"
    assert not any("a debug line" in line for line in err)  # INFO and above
    assert not any("a warning about no run" in line for line in err)  # a library's own


@pytest.mark.timeout(120)
def test_nothing_is_printed_once_logging_is_configured_or_when_turned_off(
    tmp_path: Path,
) -> None:
    err = _run(tmp_path, "configured")
    assert "mine: fetched 20 rows" in err  # the application's handler got it ...
    assert "| INFO    |" not in err and err.count("fetched 20 rows") == 1  # ... only it
    quiet = _run(tmp_path, "plain", SLUICE_LOG_CONSOLE="0")
    assert "fetched 20 rows" not in quiet and "cannot load" not in quiet
