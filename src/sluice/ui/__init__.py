"""The web dashboard served by ``sluice ui``.

:mod:`sluice.ui.views` (pages' data, from :mod:`sluice.report`) needs only the
core package; :mod:`sluice.ui.app` needs the ``ui`` extra (``pip install 'sluice[ui]'``).
"""
