"""Task runners: ``ThreadPoolTaskRunner`` (the default), ``ProcessPoolTaskRunner`` and
``DaskTaskRunner`` (``pip install 'sluice[dask]'``), with ``get_dask_client``."""

from __future__ import annotations

from sluice.flows.dask import DaskTaskRunner, get_dask_client
from sluice.flows.runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

__all__ = [
    "DaskTaskRunner",
    "ProcessPoolTaskRunner",
    "TaskRunner",
    "ThreadPoolTaskRunner",
    "get_dask_client",
]
