"""The web dashboard served by ``sluice ui``, and what it shares with ``sluice metrics serve``.

:mod:`sluice.ui.sampler` and :mod:`sluice.ui.views` need only the core package;
:mod:`sluice.ui.app` needs the ``ui`` extra (``pip install 'sluice[ui]'``).
"""
