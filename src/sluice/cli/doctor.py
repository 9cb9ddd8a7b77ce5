"""``sluice doctor``: which store, how it was chosen, and whether it is healthy."""

from __future__ import annotations

import time
from typing import Any

import click

from sluice.cli._common import (
    EXIT_ERROR,
    EXIT_UNAVAILABLE,
    CLIError,
    echo_json,
    mask_passwords,
    redacted,
    resolved_url,
    url_option,
)
from sluice.errors import LimitNotFound, StoreUnavailable
from sluice.limits.sync import Limits
from sluice.settings import ResolvedURL, find_config, home_dir
from sluice.store import acquire_store, release_store

__all__ = ["doctor"]

_SOURCES = {"argument": "flag", "env": "env", "file": "file", "default": "default"}


def _chosen_by(resolved: ResolvedURL) -> str:
    if resolved.source == "argument":
        return "flag --url"
    if resolved.source == "env":
        return "environment variable SLUICE_URL"
    if resolved.source == "file":
        return f"file {resolved.file}"
    return f"default (no --url, SLUICE_URL or config file; SLUICE_HOME is {home_dir()})"


def _count(url: str, report: dict[str, Any]) -> None:
    """Fill in how many limits, holders and waiters the store has."""
    leases: set[str] = set()
    tickets: dict[str, int] = {}
    with Limits(url) as limits:
        stored = limits.list()
        for limit in stored:
            try:
                status = limits.inspect(limit.name)
            except LimitNotFound:
                continue  # deleted meanwhile
            leases.update(h.lease_id for h in status.holders)
            tickets.update((w.ticket_id, w.count) for w in status.waiters)
    report["limits"] = len(stored)
    report["disabled_limits"] = sum(1 for limit in stored if not limit.active)
    report["holders"] = len(leases)
    report["waiters"] = sum(tickets.values())  # requests: a ticket stands for several


def _diagnose(resolved: ResolvedURL, report: dict[str, Any]) -> None:
    store = acquire_store(resolved.url)
    try:
        diagnosis = store.diagnose()
        before = time.time()
        store_now = store.now()
        after = time.time()
        report.update(
            reachable=True,
            backend=diagnosis.backend,
            detail=diagnosis.detail,
            schema_version=diagnosis.schema_version,
            schema_current=diagnosis.schema_current,
            clock_offset=round(store_now - (before + after) / 2, 6),
            expired_leases=diagnosis.expired_leases,
            write_error=diagnosis.write_error,
        )
        if diagnosis.schema_current:
            _count(resolved.url, report)
        elif diagnosis.schema_version is None:
            report.update(limits=0, disabled_limits=0, holders=0, waiters=0)
    finally:
        release_store(store)


def _text(report: dict[str, Any]) -> str:
    lines = [
        ("store", report["url"]),
        ("chosen by", report["chosen_by"]),
        ("config file", report["config_file"] or "none found here or in parent directories"),
    ]
    if not report["reachable"]:
        lines.append(("reachable", f"no: {report['error']}"))
        return "\n".join(f"{k:<12} {v}" for k, v in lines)
    lines.append(("reachable", f"yes, {report['backend']} store: {report['detail']}"))
    version = report["schema_version"]
    if version is None:
        lines.append(("schema", "none yet (created on first use)"))
    else:
        current = "current" if report["schema_current"] else "NOT the one this Sluice uses"
        lines.append(("schema", f"version {version} ({current})"))
    if report.get("write_error"):
        lines.append(("writes", f"FAIL: {report['write_error']}"))
    elif version is not None:
        lines.append(("writes", "ok"))
    offset = report["clock_offset"]
    lines.append(("clock", f"store {offset:+.3f}s from this host's clock"))
    if report.get("limits") is not None:
        disabled = report["disabled_limits"]
        lines += [
            ("limits", f"{report['limits']}" + (f" ({disabled} disabled)" if disabled else "")),
            ("holders", str(report["holders"])),
            ("waiters", str(report["waiters"])),
        ]
    lines.append(("expired", f"{report['expired_leases']} lease(s) past expiry, not reclaimed"))
    return "\n".join(f"{k:<12} {v}" for k, v in lines)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@url_option
def doctor(as_json: bool) -> None:
    """Check the setup: which store and why, reachable, writable, schema, clock, counts."""
    resolved = resolved_url()
    config = find_config()
    report: dict[str, Any] = {
        "url": redacted(resolved.url),
        "source": _SOURCES[resolved.source],
        "source_file": str(resolved.file) if resolved.file else None,
        "chosen_by": _chosen_by(resolved),
        "config_file": str(config.path) if config else None,
        "reachable": False,
        "error": None,
        "backend": None,
        "detail": None,
        "schema_version": None,
        "schema_current": None,
        "clock_offset": None,
        "limits": None,
        "disabled_limits": None,
        "holders": None,
        "waiters": None,
        "expired_leases": None,
        "write_error": None,
    }
    failure: CLIError | None = None
    try:
        _diagnose(resolved, report)
    except StoreUnavailable as exc:
        report["error"] = mask_passwords(str(exc))
        failure = CLIError(report["error"], EXIT_UNAVAILABLE)
    if (
        report["reachable"]
        and report["schema_version"] is not None
        and not report["schema_current"]
    ):
        failure = CLIError(
            f"store {report['url']} has schema version {report['schema_version']}, "
            "not the one this Sluice uses; upgrade Sluice to the release that wrote it",
            EXIT_ERROR,
        )
    if report["write_error"] and failure is None:
        failure = CLIError(
            f"store {report['url']} cannot be written by this process: "
            f"{report['write_error']}; limits cannot be acquired there",
            EXIT_ERROR,
        )
    if as_json:
        echo_json(report)
    else:
        click.echo(_text(report))
    if failure is not None:
        raise failure
