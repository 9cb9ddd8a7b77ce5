"""Logging from runs: the standard ``logging`` module, ``sluice`` logger, runs in each record.

Records logged through :func:`get_run_logger` (and Sluice's own records about
runs) carry ``flow_run_id``, ``flow_run_name``, ``task_run_id`` and
``task_run_name`` attributes, usable in a format string::

    logging.basicConfig(format="%(asctime)s %(flow_run_name)s/%(task_run_name)s %(message)s")
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from sluice.flows import context

__all__ = ["RunLoggerAdapter", "get_run_logger"]


class RunLoggerAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger that adds the current flow run and task run to every record."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs


def run_fields() -> dict[str, Any]:
    """The record attributes naming the runs current in this context."""
    flow, task = context.current_flow_run(), context.current_task_run()
    remote = context.current_remote()
    if flow is None and task is None and remote is not None:
        return {
            "flow_run_id": remote[0] or None,
            "flow_run_name": remote[1] or None,
            "task_run_id": remote[2],
            "task_run_name": remote[3],
        }
    return {
        "flow_run_id": flow.id if flow else None,
        "flow_run_name": flow.name if flow else None,
        "task_run_id": task.id if task else None,
        "task_run_name": task.name if task else None,
    }


def get_run_logger(name: str = "sluice") -> RunLoggerAdapter:
    """A logger (the ``sluice`` logger by default) whose records name the current runs."""
    return RunLoggerAdapter(logging.getLogger(name), run_fields())
