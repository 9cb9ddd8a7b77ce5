"""``sluice run ...``: list flow runs, show one with its task runs, its logs, and its waits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
from sluice.errors import InvalidRequest, RunNotFound
from sluice.flows.why import explain_recorded
from sluice.report.run_query import RUN_STATES, AmbiguousRunId, RunFilter, find_runs, resolve_run_id
from sluice.report.runs import (
    duration,
    log_lines,
    logs_json,
    run_json,
    show_json,
    task_run_json,
)
from sluice.report.times import parse_time, shown
from sluice.runs import get as get_run
from sluice.runs import logs as get_logs
from sluice.store.history import FlowRunDetail

__all__ = ["run"]

_JSON_HELP = "Print JSON (schema in docs/cli.md) instead of a table."


class _Time(click.ParamType):  # type: ignore[type-arg, unused-ignore]
    """A time given as an age (``2h``: that long ago) or in ISO 8601 (no zone: UTC)."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float):
            return value
        try:
            return parse_time(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


TIME = _Time()


def _detail(run_id: str) -> FlowRunDetail:
    """The flow run whose id is RUN_ID, or the one whose id starts with it (4+ hex digits)."""
    try:
        url = resolved_url().url
        require_existing_store(url)
        return get_run(resolve_run_id(run_id, url=url), url=url)
    except AmbiguousRunId as exc:
        raise CLIError(str(exc), EXIT_NOT_FOUND) from exc
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
    """Flow runs recorded in the store: list them, show one, its logs, explain its waits."""


@run.command(name="ls")
@click.option(
    "--limit",
    "count",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="How many of the newest runs to list.",
)
@click.option("--flow", help="Only runs of this flow (its name).")
@click.option(
    "--state",
    "states",
    multiple=True,
    help=f"Only runs in this state (repeat for several): {', '.join(RUN_STATES)}.",
)
@click.option("--since", type=TIME, help="Only runs created since: 2h (ago), or an ISO time.")
@click.option("--until", type=TIME, help="Only runs created until: 30m (ago), or an ISO time.")
@click.option("--id", "id_prefix", help="Only runs whose id starts with this (hex digits).")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@url_option
def ls(
    count: int,
    flow: str | None,
    states: tuple[str, ...],
    since: float | None,
    until: float | None,
    id_prefix: str | None,
    as_json: bool,
) -> None:
    """List the newest flow runs: id, flow, state, start (UTC) and duration."""
    url = resolved_url().url
    require_existing_store(url)
    try:
        where = RunFilter(flow, states, since, until, id_prefix)
    except InvalidRequest as exc:
        hint = "'--id'" if "prefix" in str(exc) else "'--state'"
        raise click.BadParameter(str(exc), param_hint=hint) from exc
    runs = find_runs(count, where, url=url)
    if as_json:
        echo_json({"runs": [run_json(r) for r in runs]})
        return
    if not runs:
        click.echo("no flow runs recorded" if where.empty else "no flow runs match")
        return
    rows = [
        (
            r.id,
            r.flow,
            r.state,
            shown(r.started_at or r.created_at),
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
    """Show flow run RUN_ID: each task run with its waited and ran time and final state,
    and the traceback of each run that failed."""
    detail = _detail(run_id)
    tasks = task_run_json(detail)
    if as_json:
        echo_json(show_json(detail))
        return
    r = detail.run
    click.echo(f"flow run {r.id} ({r.flow}): {r.state}" + (f": {r.message}" if r.message else ""))
    click.echo(f"started {shown(r.started_at)}, duration {_seconds(duration(r))}")
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
    _tracebacks(detail)


def _tracebacks(detail: FlowRunDetail) -> None:
    failed = [(f"task run {t.run.id} ({t.run.task})", t.run.traceback) for t in detail.task_runs]
    failed.append((f"flow run {detail.run.id} ({detail.run.flow})", detail.run.traceback))
    for who, text in failed:
        if text:
            click.echo(f"\ntraceback of {who}:")
            click.echo("\n".join(f"  {line}" for line in text.rstrip().splitlines()))


@run.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@url_option
def logs(run_id: str, as_json: bool) -> None:
    """Print what flow run RUN_ID and its task runs logged, in order: their run loggers'
    records and Sluice's warnings and errors about them, with tracebacks."""
    detail = _detail(run_id)
    try:
        records = get_logs(detail.run.id, url=resolved_url().url)
    except RunNotFound:  # pruned in between
        records = []
    if as_json:
        echo_json({"logs": logs_json(detail, records)})
        return
    if not records:
        click.echo(f"flow run {detail.run.id} ({detail.run.flow}): no log records")
        return
    for line in log_lines(detail, records):
        click.echo(line)


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
