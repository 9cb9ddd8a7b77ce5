"""The states a flow run or task run goes through, each with a timestamp and a message.

::

    Pending ─► Waiting ─► Running ─► Completed | Failed | TimedOut | Crashed | Cancelled
                 ▲  (limit, position)    │
                 └───── Retrying ◄───────┘   (slots released for the retry delay)

``Waiting`` names what the run waits for: a limit (``state.limit``, with its
queue position) or, with ``state.limit`` None, a free worker of the task runner.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum

__all__ = ["FINAL_STATES", "State", "StateName"]


class StateName(str, Enum):
    """The name of a run's state; compares equal to its string value."""

    PENDING = "Pending"
    WAITING = "Waiting"
    RUNNING = "Running"
    RETRYING = "Retrying"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CRASHED = "Crashed"
    CANCELLED = "Cancelled"
    TIMED_OUT = "TimedOut"

    def __str__(self) -> str:
        return self.value


FINAL_STATES = frozenset(
    {
        StateName.COMPLETED,
        StateName.FAILED,
        StateName.CRASHED,
        StateName.CANCELLED,
        StateName.TIMED_OUT,
    }
)


@dataclass(frozen=True)
class State:
    """One state of a run: its name, when it was entered, and why."""

    name: StateName
    timestamp: float = field(default_factory=time.time)
    """When the state was entered, in seconds since the epoch."""
    message: str = ""
    limit: str | None = None
    """For Waiting: the limit waited on (None: waiting for a free worker)."""
    position: int | None = None
    """For Waiting on a limit: the 1-based queue position last reported by the store."""

    @property
    def is_final(self) -> bool:
        """Whether the run has ended (Completed, Failed, Crashed, Cancelled or TimedOut)."""
        return self.name in FINAL_STATES

    def __str__(self) -> str:
        text = self.name.value
        if self.message:
            text += f": {self.message}"
        return text
