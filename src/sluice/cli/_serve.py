"""What ``sluice ui`` and ``sluice metrics serve`` share: extras, listening sockets, warnings."""

from __future__ import annotations

import importlib.util
import ipaddress
import socket
from collections.abc import Callable
from typing import Any, TypeVar

import click

from sluice.cli._common import EXIT_ERROR, CLIError
from sluice.cli._params import DURATION
from sluice.report.units import format_duration

_F = TypeVar("_F", bound=Callable[..., Any])

__all__ = [
    "bind",
    "browser_url",
    "check_interval",
    "is_loopback",
    "listen_options",
    "require_modules",
    "warn_if_exposed",
]


def listen_options(port: int, interval_help: str) -> Callable[[_F], _F]:
    """The ``--host``, ``--port`` and ``--interval`` options of a server command."""

    def decorate(command: _F) -> _F:
        command = click.option(
            "--interval",
            type=DURATION,
            default="1s",
            show_default=True,
            help=f"{interval_help} (250ms to 60s).",
        )(command)
        command = click.option(
            "--port",
            type=click.IntRange(0, 65535),
            default=port,
            show_default=True,
            help="Port to listen on (0: any free port).",
        )(command)
        return click.option(
            "--host", default="127.0.0.1", show_default=True, help="Address to listen on."
        )(command)

    return decorate


def check_interval(interval: float) -> float:
    """The sampling interval, if it is between 250ms and 60s."""
    if not 0.25 <= interval <= 60:
        raise click.BadParameter(
            f"{format_duration(interval)} is out of range; use 250ms to 60s",
            param_hint="'--interval'",
        )
    return interval


def require_modules(command: str, extra: str, modules: tuple[str, ...]) -> None:
    """Exit with one line saying how to install ``extra`` if any of ``modules`` is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise CLIError(
            f"`{command}` needs {', '.join(missing)}: pip install 'sluice[{extra}]'", EXIT_ERROR
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_exposed(host: str, port: int, what: str) -> None:
    """Print a warning on stderr when listening beyond this machine."""
    if not is_loopback(host):
        click.echo(
            f"warning: {what} listens on {host}:{port}, reachable from other machines; "
            "anyone who can reach it can read it. Use --host 127.0.0.1 to keep it local.",
            err=True,
        )


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); one-line error if not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise CLIError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port "
            "or --host",
            EXIT_ERROR,
        ) from exc
    return sock


def browser_url(host: str, port: int) -> str:
    """The address to open for a server listening on ``host:port``."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"
