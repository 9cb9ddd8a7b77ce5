"""``python -m sluice``: the ``sluice`` command."""

from sluice.cli import main

main()
