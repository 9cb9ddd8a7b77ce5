"""``sluice ui``: serve the web dashboard (needs ``pip install 'sluice[ui]'``)."""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass
from typing import Any

import click

from sluice.cli._common import redacted, resolved_url, url_option
from sluice.cli._serve import (
    bind,
    browser_url,
    check_interval,
    listen_options,
    require_modules,
    warn_if_exposed,
)
from sluice.report.units import format_duration

__all__ = ["UIPlan", "plan_ui", "ui"]

_MODULES = ("starlette", "uvicorn", "prometheus_client")


@dataclass
class UIPlan:
    """A dashboard ready to serve: its app, its listening socket and what to print."""

    app: Any
    sock: socket.socket
    url: str
    """The address to open (without the token)."""
    token: str | None
    lines: list[str]


def plan_ui(store_url: str, host: str, port: int, interval: float, read_only: bool) -> UIPlan:
    """Build the dashboard on ``store_url`` and bind its socket, without serving yet."""
    require_modules("sluice ui", "ui", _MODULES)
    from sluice.limits.sync import Limits
    from sluice.report.sampler import Sampler
    from sluice.ui.app import LOOPBACK_HOSTS, Dashboard, create_app
    from sluice.ui.views import RunIndex

    token = None if read_only else secrets.token_urlsafe(32)
    limits = Limits(store_url)
    dashboard = Dashboard(limits, Sampler(limits, interval), RunIndex(store_url), token)
    sock = bind(host, port)
    url = browser_url(host, sock.getsockname()[1])
    lines = [f"sluice ui: {redacted(limits.url)} on {url}"]
    if token is None:
        lines.append("read-only: admin actions are disabled (--read-only)")
    else:
        lines.append(f"admin: open {url}?token={token}")
        lines.append("  (printed once; the page without the token is read-only)")
    lines.append(
        f"every limit is inspected every {format_duration(interval)}, which reclaims expired "
        "leases; Ctrl-C to stop"
    )
    # Bound to loopback: answer only to loopback names, so DNS rebinding cannot reach it.
    hosts = LOOPBACK_HOSTS if host in LOOPBACK_HOSTS else None
    return UIPlan(create_app(dashboard, allowed_hosts=hosts), sock, url, token, lines)


def serve(plan: UIPlan) -> None:
    """Serve the dashboard until Ctrl-C (access log off: the first request carries the token)."""
    import uvicorn

    config = uvicorn.Config(plan.app, log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[plan.sock])


@click.command()
@listen_options(8787, "How often every limit is inspected, for every viewer at once")
@click.option("--read-only", is_flag=True, help="Print no admin token: nothing can be changed.")
@url_option
def ui(host: str, port: int, interval: float, read_only: bool) -> None:
    """Serve the web dashboard: limits, holders, waiters and flow runs, live."""
    check_interval(interval)
    plan = plan_ui(resolved_url().url, host, port, interval, read_only)
    warn_if_exposed(host, port, "the dashboard")
    for line in plan.lines:
        click.echo(line)
    try:
        serve(plan)
    except KeyboardInterrupt:
        return
