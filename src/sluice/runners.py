"""Task runners: ``ThreadPoolTaskRunner`` (the default) and ``ProcessPoolTaskRunner``."""

from __future__ import annotations

from sluice.flows.runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

__all__ = ["ProcessPoolTaskRunner", "TaskRunner", "ThreadPoolTaskRunner"]
