"""What every command shares: ``--url``, opening the store, exit codes and error messages."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import click

from sluice._urls import redact_url, scrub
from sluice.errors import (
    InvalidRequest,
    LimitBusy,
    LimitExists,
    LimitNotFound,
    SluiceError,
    StoreUnavailable,
)
from sluice.limits.sync import Limits
from sluice.settings import ConfigFile, ResolvedURL, resolve_url
from sluice.store import acquire_store, release_store

__all__ = [
    "EXIT_CONFLICT",
    "EXIT_ERROR",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "CLIError",
    "SluiceGroup",
    "echo_json",
    "mask_passwords",
    "open_limits",
    "redacted",
    "require_existing_store",
    "resolved_url",
    "url_option",
]

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_FOUND: Final = 3
EXIT_CONFLICT: Final = 4
EXIT_UNAVAILABLE: Final = 5

_F = TypeVar("_F", bound=Callable[..., Any])

URL_HELP: Final = (
    "Store URL. Default: $SLUICE_URL, then `url` in sluice.toml or [tool.sluice] in "
    "pyproject.toml, then sqlite:///~/.sluice/sluice.db."
)


class CLIError(click.ClickException):
    """An error shown as one line on stderr, exiting with its own code."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc, unused-ignore]


@dataclass
class State:
    """Per invocation: the innermost ``--url`` given, if any."""

    url: str | None = None


def _remember_url(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    state = ctx.ensure_object(State)
    if value is not None:
        state.url = value


def url_option(command: _F) -> _F:
    """Add ``--url`` to a command or group; a sub-command's value wins over its parent's."""
    return click.option(
        "--url",
        metavar="URL",
        expose_value=False,
        callback=_remember_url,
        help=URL_HELP,
    )(command)


def resolved_url(config: ConfigFile | None = None) -> ResolvedURL:
    """The store URL for this invocation, resolved in the documented order (``config``:
    the configuration file to read instead of searching for one)."""
    ctx = click.get_current_context()
    return resolve_url(ctx.ensure_object(State).url, config=config)


@contextmanager
def open_limits(config: ConfigFile | None = None, *, existing: bool = False) -> Iterator[Limits]:
    """A Limits client on this invocation's store, closed afterwards.

    ``existing``: a command that only reads refuses a store that does not exist yet
    (exit 5) instead of creating it: a mistyped path or URL is an error, not an empty
    store.
    """
    url = resolved_url(config).url
    if existing:
        require_existing_store(url)
    limits = Limits(url)
    try:
        yield limits
    finally:
        limits.close()


def require_existing_store(url: str) -> None:
    """Exit 5, creating nothing, unless a Sluice store exists at ``url``."""
    store = acquire_store(url)
    try:
        diagnosis = store.diagnose()
    finally:
        release_store(store)
    if diagnosis.schema_version is None:
        raise CLIError(
            f"no Sluice store at {redact_url(url)} ({diagnosis.detail}); nothing was created. "
            "Check the path or URL (--url, SLUICE_URL, sluice.toml); commands that write, "
            "such as `sluice limit create`, create the store",
            EXIT_UNAVAILABLE,
        )


def redacted(url: str) -> str:
    """The URL with any password masked: the only form in which a URL is printed."""
    return redact_url(url)


def echo_json(value: object) -> None:
    """Print one JSON document (``--json`` output)."""
    click.echo(json.dumps(value, indent=2, sort_keys=False))


def mask_passwords(message: str, ctx: click.Context | None = None) -> str:
    """The message with the password of this invocation's store URL masked (from the flag,
    the environment or the configuration file), wherever it appears."""
    ctx = ctx or click.get_current_context()
    flag = ctx.ensure_object(State).url
    urls = [flag, os.environ.get("SLUICE_URL")]
    with contextlib.suppress(Exception):  # the configuration file's URL, if that is used
        urls.append(resolve_url(flag).url)
    return scrub(message, urls)


def translate(exc: SluiceError) -> CLIError:
    """The one-line message and exit code for a library error."""
    if isinstance(exc, LimitNotFound):
        listed = ", ".join(repr(n) for n in exc.names)
        return CLIError(
            f"no limit named {listed}; list them with `sluice limit ls`, "
            "or create it with `sluice limit create NAME --slots N`",
            EXIT_NOT_FOUND,
        )
    if isinstance(exc, LimitExists):
        return CLIError(
            f"limit {exc.name!r} already exists; change it with `sluice limit update "
            f"{exc.name} ...`, or declare it in sluice.toml and run `sluice limit apply`",
            EXIT_CONFLICT,
        )
    if isinstance(exc, LimitBusy):
        return CLIError(
            f"limit {exc.name!r} has {exc.holders} holder(s); wait for them, release them "
            f"with `sluice limit reset {exc.name}`, or pass --force",
            EXIT_CONFLICT,
        )
    if isinstance(exc, InvalidRequest):  # ConfigError included
        return CLIError(str(exc), EXIT_USAGE)
    if isinstance(exc, StoreUnavailable):
        return CLIError(str(exc), EXIT_UNAVAILABLE)
    return CLIError(str(exc), EXIT_ERROR)


class SluiceGroup(click.Group):
    """A group that turns library errors into one-line messages with their exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CLIError as exc:
            error = exc
        except (click.exceptions.Exit, click.Abort, click.ClickException, BrokenPipeError):
            raise
        except SluiceError as exc:
            error = translate(exc)
        except Exception as exc:
            if os.environ.get("SLUICE_DEBUG"):
                raise
            error = CLIError(
                f"unexpected {type(exc).__name__}: {exc}; set SLUICE_DEBUG=1 for a traceback "
                "and please report it",
                EXIT_ERROR,
            )
        raise CLIError(mask_passwords(error.message, ctx), error.exit_code) from None
