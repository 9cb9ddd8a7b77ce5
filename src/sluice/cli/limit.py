"""``sluice limit ...``: create, list, inspect, watch, change, reset, delete and apply limits,
and show who changed them (``history``)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click

from sluice.cli._common import (
    EXIT_USAGE,
    CLIError,
    SluiceGroup,
    echo_json,
    open_limits,
    redacted,
    url_option,
)
from sluice.cli._params import DURATION, RATE, REMOVE, OrNone
from sluice.cli._plan import ActionKind, Plan, apply_plan, make_plan, read_declared
from sluice.errors import LimitNotFound
from sluice.limits.model import LimitStatus
from sluice.report.audit import history_text, read_history, record_json
from sluice.report.limits import (
    changes_text,
    describe_limit,
    diff_limits,
    inspect_text,
    list_text,
    status_json,
    summary_json,
)
from sluice.report.times import clock
from sluice.report.units import format_duration
from sluice.settings import find_config, load_config
from sluice.store.audit import ADMIN_KEEP

__all__ = ["limit"]

_JSON_HELP = "Print JSON (schema in docs/cli.md) instead of a table."
_DONE: tuple[tuple[ActionKind, str], ...] = (
    ("create", "created"),
    ("update", "updated"),
    ("unchanged", "unchanged"),
    ("delete", "deleted"),
)


@click.group(cls=SluiceGroup)
@url_option
def limit() -> None:
    """Manage limits: concurrency slots and rates shared by every process."""


@limit.command()
@click.argument("name")
@click.option("--slots", type=click.INT, help="Units held at once (a concurrency limit).")
@click.option("--rate", type=RATE, help="Units started per period: 10/s, 600/min, 1/5s ...")
@click.option("--burst", type=click.INT, help="Units that may start at once (default: ceil(rate)).")
@click.option("--lease-ttl", type=DURATION, default="30s", show_default=True, help="Lease TTL.")
@click.option("--disabled", is_flag=True, help="Create it disabled (admitting everyone).")
@url_option
def create(
    name: str,
    slots: int | None,
    rate: float | None,
    burst: int | None,
    lease_ttl: float,
    disabled: bool,
) -> None:
    """Create limit NAME with --slots, --rate, or both."""
    if slots is None and rate is None:
        raise click.UsageError("give --slots N (units held at once), --rate R (10/s), or both")
    with open_limits() as limits:
        created = limits.create(
            name, slots=slots, rate=rate, burst=burst, lease_ttl=lease_ttl, active=not disabled
        )
    click.echo(f"created limit {created.name!r}: {describe_limit(created)}")


def _statuses(names: list[str], inspect: Callable[[str], LimitStatus]) -> list[LimitStatus]:
    statuses = []
    for name in names:
        try:
            statuses.append(inspect(name))
        except LimitNotFound:
            continue  # deleted since it was listed
    return statuses


@limit.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@url_option
def list_limits(as_json: bool) -> None:
    """List every limit: slots in use, rate, burst, waiters, whether active."""
    with open_limits(existing=True) as limits:
        statuses = _statuses([lim.name for lim in limits.list()], limits.inspect)
    if as_json:
        echo_json({"limits": [summary_json(s) for s in statuses]})
    else:
        click.echo(list_text(statuses))


@limit.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@url_option
def inspect(name: str, as_json: bool) -> None:
    """Show limit NAME, who holds it, who waits, and when the next rate token is due."""
    with open_limits(existing=True) as limits:
        status = limits.inspect(name)
    if as_json:
        echo_json(status_json(status))
    else:
        click.echo(inspect_text(status))


@limit.command()
@click.argument("name")
@click.option(
    "--interval",
    type=DURATION,
    default="1s",
    show_default=True,
    help="Time between snapshots (at least 50ms).",
)
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many snapshots.")
@click.option("--json", "as_json", is_flag=True, help="Print each snapshot as one JSON line.")
@url_option
def watch(name: str, interval: float, count: int | None, as_json: bool) -> None:
    """Show limit NAME as `inspect` does, refreshed until Ctrl-C."""
    if interval < 0.05:
        raise click.BadParameter(
            f"{format_duration(interval)} is too short; use at least 50ms",
            param_hint="'--interval'",
        )
    terminal = sys.stdout.isatty()
    shown = 0
    with open_limits(existing=True) as limits:
        try:
            while True:
                status = limits.inspect(name)
                stamp = clock(time.time())  # UTC, as every time shown
                if as_json:
                    click.echo(json.dumps(status_json(status)))
                elif terminal:
                    click.clear()
                    every = format_duration(interval)
                    click.echo(f"every {every}, Ctrl-C to stop   {stamp}\n\n{inspect_text(status)}")
                else:
                    click.echo(f"--- {stamp}\n{inspect_text(status)}\n")
                shown += 1
                if count is not None and shown >= count:
                    return
                time.sleep(interval)
        except KeyboardInterrupt:
            return  # Ctrl-C is how a watch ends: success


@limit.command()
@click.argument("name")
@click.option("--slots", type=OrNone(click.INT), help="Units held at once; none removes them.")
@click.option("--rate", type=OrNone(RATE), help="10/s, 600/min ...; none removes the rate.")
@click.option("--burst", type=OrNone(click.INT), help="Burst; none resets it to ceil(rate).")
@click.option("--lease-ttl", type=DURATION, help="Lease TTL: 30s, 5m ...")
@url_option
def update(
    name: str,
    slots: object,
    rate: object,
    burst: object,
    lease_ttl: float | None,
) -> None:
    """Change only the given settings of limit NAME; holders keep their units."""
    given = {"slots": slots, "rate": rate, "burst": burst, "lease_ttl": lease_ttl}
    changes = {k: (None if v is REMOVE else v) for k, v in given.items() if v is not None}
    if not changes:
        raise click.UsageError("give at least one of --slots, --rate, --burst, --lease-ttl")
    with open_limits() as limits:
        before = limits.get(name)
        after = limits.update(name, **changes)
    diff = diff_limits(before, after)
    summary = changes_text(diff) if diff else "no change"
    click.echo(f"updated limit {after.name!r}: {summary}")


@limit.command()
@click.argument("name")
@url_option
def enable(name: str) -> None:
    """Make limit NAME count again."""
    with open_limits() as limits:
        limits.enable(name)
    click.echo(f"enabled limit {name!r}")


@limit.command()
@click.argument("name")
@url_option
def disable(name: str) -> None:
    """Make limit NAME admit everyone, recording nothing, until enabled."""
    with open_limits() as limits:
        limits.disable(name)
    click.echo(f"disabled limit {name!r}: it admits everyone until enabled")


def _confirm(question: str) -> None:
    try:
        agreed = click.confirm(question, err=True)
    except click.Abort:  # end of input, or Ctrl-C
        click.echo(err=True)
        agreed = False
    if not agreed:
        raise CLIError("cancelled; nothing changed (pass --yes to skip the question)")


@limit.command()
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@url_option
def reset(name: str, yes: bool) -> None:
    """Revoke every lease on limit NAME at once and refill its rate bucket.

    \b
    The units are free at once: waiters start right away. The store tells
    each holder's process in the same step, so its lease is marked lost as
    soon as that word arrives (milliseconds; lease.lost, LeaseLost on
    release), and flow task runs holding it are stopped: they fail with
    LeaseLost (retries apply). A holder that misses the word learns at its
    next renewal, within a third of the lease TTL (10 s for 30 s). Other
    code runs on until it looks, so old and new holders may overlap for a
    while: a resource that must not see both can refuse the lower fence.
    """
    with open_limits() as limits:
        if not yes:
            held = len(limits.inspect(name).holders)
            _confirm(f"Release all {held} holder(s) of limit {name!r}?")
        released = limits.reset(name)
    click.echo(f"reset limit {name!r}: released {released} holder(s)")


@limit.command()
@click.argument("name")
@click.option("--force", is_flag=True, help="Delete it even while held, revoking the leases.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@url_option
def delete(name: str, force: bool, yes: bool) -> None:
    """Delete limit NAME; refused while it has holders unless --force."""
    with open_limits() as limits:
        if not yes:
            held = len(limits.inspect(name).holders)
            _confirm(f"Delete limit {name!r} ({held} holder(s))?")
        limits.delete(name, force=force)
    click.echo(f"deleted limit {name!r}")


@limit.command()
@click.argument("name")
@click.option(
    "--count",
    type=click.IntRange(1, ADMIN_KEEP),
    default=20,
    show_default=True,
    help="How many of the newest records to show.",
)
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@url_option
def history(name: str, count: int, as_json: bool) -> None:
    """Show who changed limit NAME, what, and when: its update, enable, disable, reset and
    delete actions, newest first (kept after the limit is deleted)."""
    with open_limits(existing=True) as limits:
        records = read_history(limits.url, name, count)
        if not records:
            limits.get(name)  # no limit and no record of one: not found (exit 3)
    if as_json:
        echo_json({"limit": name, "records": [record_json(r) for r in records]})
    else:
        click.echo(history_text(name, records))


@limit.command()
@click.argument(
    "file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--prune", is_flag=True, help="Also delete stored limits the file does not declare.")
@click.option("--force", is_flag=True, help="With --prune: delete held limits too.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@url_option
def apply(file: Path | None, dry_run: bool, prune: bool, force: bool, as_json: bool) -> None:
    """Create or update the limits declared in FILE to match it.

    FILE defaults to the nearest sluice.toml, or pyproject.toml with [tool.sluice],
    in this directory or its parents. Running it twice changes nothing the second time.
    """
    config = load_config(file) if file is not None else find_config()
    if config is None:
        raise CLIError(
            f"no sluice.toml, or pyproject.toml with [tool.sluice], in {Path.cwd()} or its "
            "parents; give FILE",
            EXIT_USAGE,
        )
    declared = read_declared(config)
    with open_limits(config) as limits:
        url = redacted(limits.url)
        plan = make_plan(limits, declared, prune, force)
        changing = any(a.kind != "unchanged" for a in plan.actions)
        if not as_json:
            _echo_plan(config.path, url, plan)  # the plan first, then the changes
        if changing and not dry_run:
            apply_plan(limits, plan, force)
    applied = changing and not dry_run
    if as_json:
        echo_json(
            {
                "file": str(config.path),
                "url": url,
                "dry_run": dry_run,
                "applied": applied,
                "actions": [a.to_json() for a in plan.actions],
                "unmanaged": plan.unmanaged,
            }
        )
        return
    counts = ", ".join(
        f"{plan.count(kind)} {word}" for kind, word in _DONE if plan.count(kind) or kind != "delete"
    )
    if dry_run:
        click.echo("dry run: nothing changed; run without --dry-run to apply")
    elif applied:
        click.echo(f"applied: {counts}")
    else:
        click.echo("nothing to change")


def _echo_plan(path: Path, url: str, plan: Plan) -> None:
    click.echo(f"plan for {path} on {url}:")
    if not plan.actions:
        click.echo("  (no limits declared)")
    width = max((len(a.name) for a in plan.actions), default=0)
    for action in plan.actions:
        if action.kind == "create":
            detail = describe_limit(action.limit)
        elif action.kind == "update":
            detail = changes_text(action.changes)
        elif action.kind == "delete":
            detail = f"{action.holders} holder(s)" + (", revoked" if action.holders else "")
        else:
            detail = ""
        click.echo(f"  {action.kind:<9}  {action.name:<{width}}  {detail}".rstrip())
    if plan.unmanaged:
        click.echo(
            f"  ({len(plan.unmanaged)} stored limit(s) not in the file left alone: "
            f"{', '.join(plan.unmanaged)}; --prune deletes them)"
        )
