"""``sluice run ...``: list flow runs, show one with its task runs, and explain its waits."""

from __future__ import annotations

from collections.abc import Sequence

import click

from sluice.cli._common import (
    EXIT_NOT_FOUND,
    CLIError,
    SluiceGroup,
    echo_json,
    require_existing_store,
    resolved_url,
    url_option,
)
from sluice.errors import RunNotFound
from sluice.flows.why import explain_recorded
from sluice.report.runs import duration, iso, run_json, task_run_json
from sluice.runs import get as get_run
from sluice.runs import list as list_runs
from sluice.store.history import FlowRunDetail

__all__ = ["run"]

_JSON_HELP = "Print JSON (schema in docs/cli.md) instead of a table."


def _detail(run_id: str) -> FlowRunDetail:
    try:
        url = resolved_url().url
        require_existing_store(url)
        return get_run(run_id, url=url)
    except RunNotFound as exc:
        raise CLIError(
            f"no flow run with id {run_id!r} in the run history of this store; list them "
            "with `sluice run ls` (old runs are pruned past SLUICE_HISTORY_KEEP)",
            EXIT_NOT_FOUND,
        ) from exc


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


@click.group(cls=SluiceGroup)
@url_option
def run() -> None:
    """Flow runs recorded in the store: list them, show one, explain its waits."""


@run.command(name="ls")
@click.option(
    "--limit",
    "count",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="How many of the newest runs to list.",
)
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@url_option
def ls(count: int, as_json: bool) -> None:
    """List the newest flow runs: id, flow, state, start and duration."""
    url = resolved_url().url
    require_existing_store(url)
    runs = list_runs(count, url=url)
    if as_json:
        echo_json([run_json(r) for r in runs])
        return
    if not runs:
        click.echo("no flow runs recorded")
        return
    rows = [
        (
            r.id,
            r.flow,
            r.state,
            iso(r.started_at or r.created_at) or "-",
            _seconds(duration(r)) if r.ended_at is not None else "running",
        )
        for r in runs
    ]
    _table(("ID", "FLOW", "STATE", "STARTED", "DURATION"), rows)


@run.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@url_option
def show(run_id: str, as_json: bool) -> None:
    """Show flow run RUN_ID: each task run with its waited and ran time and final state."""
    detail = _detail(run_id)
    tasks = task_run_json(detail)
    if as_json:
        echo_json({**run_json(detail.run), "task_runs": tasks})
        return
    r = detail.run
    click.echo(f"flow run {r.id} ({r.flow}): {r.state}" + (f": {r.message}" if r.message else ""))
    click.echo(f"started {iso(r.started_at) or '-'}, duration {_seconds(duration(r))}")
    if not tasks:
        click.echo("no task runs")
        return
    click.echo("")
    rows = [
        (
            t["id"],
            t["task"],
            t["state"],
            f"{t['waited']:.3f}s",
            f"{t['ran']:.3f}s",
            str(t["attempts"]),
            ",".join(t["limits"]) or "-",
            t["message"][:60],
        )
        for t in tasks
    ]
    _table(("TASK RUN", "TASK", "STATE", "WAITED", "RAN", "TRIES", "LIMITS", "MESSAGE"), rows)


@run.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@url_option
def why(run_id: str, as_json: bool) -> None:
    """What held flow run RUN_ID back, who held the slots it waited for, what would have helped."""
    report = explain_recorded(_detail(run_id), resolved_url().url)
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(report.render())


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for line in (header, *rows):
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
