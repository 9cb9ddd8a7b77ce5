"""The ``sluice`` command: manage limits from a shell and from version-controlled files.

Split by noun: :mod:`sluice.cli.limit` (``sluice limit ...``),
:mod:`sluice.cli.doctor` (``sluice doctor``), :mod:`sluice.cli.run`
(``sluice run ...``, the flow run history), :mod:`sluice.cli.ui` (``sluice ui``, the
web dashboard) and :mod:`sluice.cli.metrics` (``sluice metrics serve``). Every command
takes ``--url``; exit codes: 0 success, 1 other error, 2 usage, 3 not found, 4 exists or busy,
5 store unreachable (see docs/cli.md).
"""

from __future__ import annotations

import click

from sluice import __version__
from sluice.cli._common import SluiceGroup, url_option
from sluice.cli.doctor import doctor
from sluice.cli.limit import limit
from sluice.cli.metrics import metrics
from sluice.cli.run import run
from sluice.cli.ui import ui

__all__ = ["cli", "main"]


@click.group(cls=SluiceGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sluice")
@url_option
def cli() -> None:
    """Sluice: global concurrency and rate limits, shared by every process.

    The store is chosen by --url, else $SLUICE_URL, else `url` in sluice.toml
    (or [tool.sluice] in pyproject.toml), else sqlite:///~/.sluice/sluice.db.

    Exit codes: 0 success, 1 other error, 2 usage error, 3 limit or run not found,
    4 limit exists or is busy, 5 store unreachable. Reference: docs/cli.md.
    """


cli.add_command(limit)
cli.add_command(doctor)
cli.add_command(run)
cli.add_command(ui)
cli.add_command(metrics)


def main() -> None:
    """Run the ``sluice`` command (the console script and ``python -m sluice``).

    Output cut short by a closed pipe (``sluice run show ID | head -2``) ends the
    command quietly with exit code 1: click's own handling, which the group lets through.
    """
    cli(prog_name="sluice")
