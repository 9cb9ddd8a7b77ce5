"""The runs the current code belongs to: ``sluice.runtime.flow_run.id``, ``task_run.id``.

Each attribute is None outside a flow run (``flow_run``) or a task body (``task_run``).
"""

from __future__ import annotations

from sluice.flows.logs import run_fields

__all__ = ["flow_run", "task_run"]


class _FlowRunView:
    """The current flow run."""

    @property
    def id(self) -> str | None:
        """The current flow run's id."""
        value = run_fields()["flow_run_id"]
        return str(value) if value else None

    @property
    def name(self) -> str | None:
        """The current flow's name."""
        value = run_fields()["flow_run_name"]
        return str(value) if value else None

    def __repr__(self) -> str:
        return f"<flow_run id={self.id!r} name={self.name!r}>"


class _TaskRunView:
    """The current task run."""

    @property
    def id(self) -> str | None:
        """The current task run's id."""
        value = run_fields()["task_run_id"]
        return str(value) if value else None

    @property
    def name(self) -> str | None:
        """The current task's name."""
        value = run_fields()["task_run_name"]
        return str(value) if value else None

    def __repr__(self) -> str:
        return f"<task_run id={self.id!r} name={self.name!r}>"


flow_run = _FlowRunView()
task_run = _TaskRunView()
