"""Logging from runs: run loggers, a formatter for their fields, the console and the history.

Sluice logs to the ``sluice`` hierarchy (``sluice.limits``, ``sluice.store.sqlite``,
``sluice.store.redis``, ``sluice.store.postgres``, ``sluice.flows``, ``sluice.runs``),
and puts a ``NullHandler`` on ``sluice``, as libraries do.

**Run loggers.** :func:`get_run_logger` gives the ``sluice.runs`` logger (at INFO
unless you set its level), whose records carry ``flow_run_id``, ``flow_run_name``,
``task_run_id`` and ``task_run_name``. Sluice's own records about a run (a task run
failed, is retrying ...) carry them too.

**Console.** While logging is not configured (no handler on the root logger, nor on
the way from a record's logger to it, but Sluice's own), the records of run loggers
at INFO and above, and the warnings and errors about runs, are printed on stderr,
naming the runs::

    14:03:12.345 | INFO    | task run 'extract' of flow run 'etl' - fetched 20 rows

``SLUICE_LOG_CONSOLE=0`` turns it off. Configure logging yourself (``basicConfig``,
``dictConfig``, a handler on ``sluice``) and Sluice prints nothing: your handlers
get the records, with :class:`RunFormatter` for a format that names run fields.

**History.** The same records (run loggers' at their logger's level, others' at
WARNING and above) are stored with their flow run in the run history, within the
bounds documented in :mod:`sluice.flows.context`; ``sluice run logs RUN_ID`` shows
them. Records logged in a worker process (``ProcessPoolTaskRunner``, Dask) reach
that process's console only.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any, TextIO

from sluice import settings
from sluice.errors import ConfigError
from sluice.flows import context

__all__ = ["CONSOLE_FORMAT", "RUN_LOGGER", "RunFormatter", "RunLoggerAdapter", "get_run_logger"]

RUN_LOGGER = "sluice.runs"
"""The logger of run loggers."""

CONSOLE_FORMAT = "%(asctime)s.%(msecs)03dZ | %(levelname)-7s | %(run)s - %(message)s"
"""How the console prints a record (``%(run)s`` names the flow run and task run); its time
is UTC, as everywhere Sluice shows a time."""

_FIELDS = ("flow_run_id", "flow_run_name", "task_run_id", "task_run_name")


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


def get_run_logger(name: str = RUN_LOGGER) -> RunLoggerAdapter:
    """A logger (``sluice.runs`` by default) whose records name the current runs."""
    return RunLoggerAdapter(logging.getLogger(name), run_fields())


def run_label(record: logging.LogRecord) -> str:
    """Which runs a record is about, in words (``-`` for none)."""
    flow = getattr(record, "flow_run_name", None)
    task = getattr(record, "task_run_name", None)
    if task and flow:
        return f"task run {task!r} of flow run {flow!r}"
    if task:
        return f"task run {task!r}"
    if flow:
        return f"flow run {flow!r}"
    return "-"


class RunFormatter(logging.Formatter):
    """A formatter whose format may name run fields (``%(flow_run_name)s`` ...) for any
    record: a record without them, or outside a run, shows ``-``; ``%(run)s`` names
    the runs in words."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as text, its run fields filled in (the record itself is not changed)."""
        if getattr(record, "run", None) is None or any(
            getattr(record, f, None) is None for f in _FIELDS
        ):
            record = copy.copy(record)
            record.run = run_label(record)
            for name in _FIELDS:
                if getattr(record, name, None) is None:
                    setattr(record, name, "-")
        return super().format(record)


def _from_run_logger(record: logging.LogRecord) -> bool:
    return record.name == RUN_LOGGER or record.name.startswith(RUN_LOGGER + ".")


def _about_a_run(record: logging.LogRecord) -> bool:
    return bool(getattr(record, "flow_run_id", None) or getattr(record, "task_run_id", None))


class _Own:
    """A handler Sluice put on its loggers (not a sign the user configured logging)."""


class _Null(logging.NullHandler, _Own):
    pass


class _History(logging.Handler, _Own):
    """Stores records about runs with their flow run (see the module docstring)."""

    def emit(self, record: logging.LogRecord) -> None:
        flow_run_id = getattr(record, "flow_run_id", None)
        if not flow_run_id or (record.levelno < logging.WARNING and not _from_run_logger(record)):
            return
        flow_run = context.flow_run_by_id(flow_run_id)
        if flow_run is None or flow_run.writer is None:
            return
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + _EXCEPTIONS.formatException(record.exc_info)
            if record.stack_info:
                text += "\n" + record.stack_info
            run_id = getattr(record, "task_run_id", None) or flow_run_id
            flow_run.add_log(run_id, record.levelno, record.name, text, record.created)
        except Exception:
            self.handleError(record)


_EXCEPTIONS = logging.Formatter()


class _Console(logging.StreamHandler, _Own):  # type: ignore[type-arg]
    """Prints run logs on stderr while nothing else would (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        formatter = RunFormatter(CONSOLE_FORMAT, "%Y-%m-%dT%H:%M:%S")
        formatter.converter = time.gmtime
        self.setFormatter(formatter)

    @property
    def stream(self) -> TextIO:
        return sys.stderr  # the current one (tests and tools replace it)

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass

    def filter(self, record: logging.LogRecord) -> bool:
        if not _from_run_logger(record) and (
            record.levelno < logging.WARNING or not _about_a_run(record)
        ):
            return False
        try:
            if not settings.log_console():
                return False
        except ConfigError:
            pass  # a bad value must not silence the run's logs
        return not _configured_elsewhere(record.name)


def _configured_elsewhere(name: str) -> bool:
    """Whether a handler that is not Sluice's would get a record of logger ``name``."""
    logger: logging.Logger | None = logging.getLogger(name)
    while logger is not None:
        if any(not isinstance(h, _Own) for h in logger.handlers):
            return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


def _install() -> None:
    """Sluice's handlers on ``sluice`` and the level of ``sluice.runs``, once."""
    root = logging.getLogger("sluice")
    if not any(isinstance(h, _Own) for h in root.handlers):
        for handler in (_Null(), _History(), _Console()):
            root.addHandler(handler)
    runs = logging.getLogger(RUN_LOGGER)
    if runs.level == logging.NOTSET:
        runs.setLevel(logging.INFO)


_install()
