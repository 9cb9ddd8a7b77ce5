"""Running ``sluice`` in tests: through click's runner, and as the installed program."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from sluice.cli import cli

SLUICE = Path(sys.executable).with_name("sluice")
"""The installed console script, next to this interpreter."""


@dataclass(frozen=True)
class Ran:
    """What one run of ``sluice`` did."""

    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """stdout parsed as one JSON document."""
        return json.loads(self.stdout)

    @property
    def error(self) -> str:
        """The last stderr line: the one-line message (after click's usage lines, if any)."""
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""


def _runner() -> CliRunner:
    try:  # click < 8.2 mixes stderr into stdout unless told not to
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg, unused-ignore]
    except TypeError:
        return CliRunner()


def sluice(*args: str, input: str | None = None) -> Ran:
    """Run ``sluice ARGS`` in this process through click's test runner."""
    result = _runner().invoke(cli, list(args), input=input, catch_exceptions=False)
    return Ran(result.exit_code, result.stdout, result.stderr)


def sluice_process(*args: str, cwd: Path | None = None, timeout: float = 30) -> Ran:
    """Run the installed ``sluice`` program, with this test's environment."""
    done = subprocess.run(
        [str(SLUICE), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(os.environ),
        timeout=timeout,
        check=False,
    )
    return Ran(done.returncode, done.stdout, done.stderr)
