"""How limits look: JSON documents with a stable schema, and tables for people."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sluice.limits.model import WAIT_BUCKETS, Limit, LimitStatus, LimitTotals
from sluice.report.units import format_age, format_duration, format_rate

__all__ = [
    "changes_json",
    "changes_text",
    "describe_limit",
    "diff_limits",
    "inspect_text",
    "limit_json",
    "list_text",
    "status_json",
    "summary_json",
    "table",
]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    """Columns padded to their widest cell, the last one left ragged."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=False)]
    lines = []
    for row in (headers, *rows):
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=True)]
        lines.append((indent + "  ".join(cells)).rstrip())
    return "\n".join(lines)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def limit_json(limit: Limit) -> dict[str, Any]:
    """A limit's definition: name, slots, rate (per second), burst, lease_ttl, active."""
    return {
        "name": limit.name,
        "slots": limit.slots,
        "rate": limit.rate,
        "burst": limit.burst,
        "lease_ttl": limit.lease_ttl,
        "active": limit.active,
    }


def summary_json(status: LimitStatus) -> dict[str, Any]:
    """One row of ``limit ls --json``: the definition and how busy the limit is."""
    return {
        **limit_json(status.limit),
        "in_use": status.in_use,
        "holders": len(status.holders),
        "waiters": sum(w.count for w in status.waiters),
    }


def status_json(status: LimitStatus) -> dict[str, Any]:
    """``limit inspect --json``: the definition, every holder and waiter, the next token."""
    now = status.taken_at
    return {
        **limit_json(status.limit),
        "in_use": status.in_use,
        "next_token_in": status.next_token_in,
        "taken_at": _iso(now),
        "holders": [
            {
                "lease_id": h.lease_id,
                "fence": h.fence,
                "occupy": h.occupy,
                "holder": h.holder,
                "host": h.host,
                "pid": h.pid,
                "since": _iso(h.since),
                "expires_at": _iso(h.expires_at),
                "held_for": (now - h.since).total_seconds() if now else None,
                "expires_in": (h.expires_at - now).total_seconds() if now else None,
            }
            for h in status.holders
        ],
        "waiters": [
            {
                "position": w.position,
                "ticket_id": w.ticket_id,
                "count": w.count,
                "occupy": w.occupy,
                "holder": w.holder,
                "host": w.host,
                "pid": w.pid,
                "since": _iso(w.since),
                "waiting_for": (now - w.since).total_seconds() if now else None,
            }
            for w in status.waiters
        ],
        "totals": totals_json(status.totals),
    }


def totals_json(totals: LimitTotals) -> dict[str, Any]:
    """A limit's totals since it was created, every process's (``inspect --json``)."""
    return {
        "grants": totals.grants,
        "granted_units": totals.granted_units,
        "timeouts": totals.timeouts,
        "expired_leases_reclaimed": totals.expired_leases_reclaimed,
        "wait_seconds": totals.wait_seconds,
        "wait_buckets": [
            {"le": bound, "count": count}
            for bound, count in zip((*WAIT_BUCKETS, None), totals.wait_buckets, strict=True)
        ],
    }


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _totals_text(totals: LimitTotals) -> str:
    if not totals.grants and not totals.timeouts and not totals.expired_leases_reclaimed:
        return "nothing granted yet"
    mean = totals.wait_seconds / totals.grants if totals.grants else 0.0
    return (
        f"{_count(totals.grants, 'grant')} ({_count(totals.granted_units, 'unit')}), mean wait "
        f"{f'{mean * 1000:.0f}ms' if mean < 1 else format_age(mean)}, {totals.timeouts} timed out, "
        f"{totals.expired_leases_reclaimed} expired leases reclaimed"
    )


def describe_limit(limit: Limit) -> str:
    """``slots 20, rate 10/s, burst 10, lease TTL 30s, disabled`` (what is set)."""
    parts = []
    if limit.slots is not None:
        parts.append(f"slots {limit.slots}")
    if limit.rate is not None:
        parts.append(f"rate {format_rate(limit.rate)}, burst {limit.burst}")
    parts.append(f"lease TTL {format_duration(limit.lease_ttl)}")
    if not limit.active:
        parts.append("disabled")
    return ", ".join(parts)


def _slots_cell(status: LimitStatus) -> str:
    slots = status.limit.slots
    return f"{status.in_use}/{slots if slots is not None else '-'}"


def list_text(statuses: Sequence[LimitStatus]) -> str:
    """``limit ls``: one line per limit."""
    if not statuses:
        return "no limits; create one with `sluice limit create NAME --slots N`"
    rows = [
        [
            s.limit.name,
            _slots_cell(s),
            format_rate(s.limit.rate) if s.limit.rate is not None else "-",
            str(s.limit.burst) if s.limit.burst is not None else "-",
            str(sum(w.count for w in s.waiters)),
            "yes" if s.limit.active else "no",
        ]
        for s in statuses
    ]
    return table(["NAME", "IN USE/SLOTS", "RATE", "BURST", "WAITERS", "ACTIVE"], rows)


def _token_text(status: LimitStatus) -> str:
    if status.next_token_in is None:
        return "-"
    if status.next_token_in <= 0:
        return "available now"
    return f"in {status.next_token_in:.3f}s"


def inspect_text(status: LimitStatus) -> str:
    """``limit inspect``: the limit, its holders and its waiters, for a person."""
    limit, now = status.limit, status.taken_at
    lines = [
        f"limit {limit.name} ({'active' if limit.active else 'disabled: admits everyone'})",
        f"  slots       {_slots_cell(status)} in use",
        f"  rate        {format_rate(limit.rate) if limit.rate is not None else '-'}"
        + (f", burst {limit.burst}" if limit.burst is not None else ""),
        f"  next token  {_token_text(status)}",
        f"  lease TTL   {format_duration(limit.lease_ttl)}",
        f"  totals      {_totals_text(status.totals)}",
        "",
        f"holders ({len(status.holders)})",
    ]
    if status.holders:
        rows = [
            [
                h.lease_id,
                str(h.fence),
                str(h.occupy),
                h.holder,
                f"{h.host}:{h.pid}",
                format_age((now - h.since).total_seconds()) if now else "?",
                format_age((h.expires_at - now).total_seconds()) if now else "?",
            ]
            for h in status.holders
        ]
        lines.append(
            table(
                ["LEASE", "FENCE", "OCCUPY", "HOLDER", "HOST:PID", "HELD FOR", "EXPIRES IN"],
                rows,
                "  ",
            )
        )
    waiting = sum(w.count for w in status.waiters)
    lines += ["", f"waiters ({waiting})"]
    if status.waiters:
        rows = [
            [
                str(w.position) if w.count == 1 else f"{w.position}-{w.position + w.count - 1}",
                str(w.occupy),
                w.holder if w.count == 1 else f"{w.holder} (x{w.count})",
                f"{w.host}:{w.pid}",
                format_age((now - w.since).total_seconds()) if now else "?",
            ]
            for w in status.waiters
        ]
        lines.append(table(["POS", "OCCUPY", "WHO", "HOST:PID", "WAITING FOR"], rows, "  "))
    return "\n".join(lines)


_FIELDS = ("slots", "rate", "burst", "lease_ttl", "active")


def diff_limits(old: Limit, new: Limit) -> dict[str, tuple[Any, Any]]:
    """The fields that differ between two definitions of a limit: name -> (old, new)."""
    changes = {}
    for name in _FIELDS:
        before, after = getattr(old, name), getattr(new, name)
        same = (
            before == after
            if before is None or after is None or isinstance(before, bool)
            else math.isclose(before, after, rel_tol=1e-12)
        )
        if not same:
            changes[name] = (before, after)
    return changes


def _field_text(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name == "rate":
        return format_rate(value)
    if name == "lease_ttl":
        return format_duration(value)
    if name == "active":
        return "yes" if value else "no"
    return str(value)


def changes_text(changes: dict[str, tuple[Any, Any]]) -> str:
    """``slots 20 -> 30, rate - -> 10/s``."""
    label = {"lease_ttl": "lease TTL"}
    return ", ".join(
        f"{label.get(k, k)} {_field_text(k, a)} -> {_field_text(k, b)}"
        for k, (a, b) in changes.items()
    )


def changes_json(changes: dict[str, tuple[Any, Any]]) -> dict[str, dict[str, Any]]:
    """``{"slots": {"from": 20, "to": 30}}``."""
    return {k: {"from": a, "to": b} for k, (a, b) in changes.items()}
