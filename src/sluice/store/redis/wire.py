"""What the Redis store's scripts are sent and what their replies mean: no I/O.

Each step script answers one JSON document; times and other fractions travel as
strings (cjson keeps only 14 significant digits). An empty Lua table encodes as
``{}`` whether it was meant as a list or an object, so readers here accept both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sluice.errors import (
    InvalidRequest,
    LimitBusy,
    LimitExists,
    LimitNotFound,
    SluiceError,
    StoreError,
)
from sluice.limits.model import Holder, Limit, LimitStatus, LimitTotals, Waiter, utc
from sluice.store.base import (
    AcquireRequest,
    Exchange,
    Exchanged,
    Granted,
    HeldSpan,
    Queued,
    StoreDiagnosis,
)
from sluice.store.redis.config import SCHEMA_VERSION

__all__ = [
    "batch_json",
    "diagnosis",
    "error_of",
    "exchanged",
    "held_spans_of",
    "limit_args",
    "limit_of",
    "raise_for",
    "status_of",
]


# --------------------------------------------------------------------------- limits


def limit_args(limit: Limit) -> list[object]:
    """A limit's definition as create_limit.lua takes it."""
    return [
        limit.name,
        "" if limit.slots is None else limit.slots,
        "" if limit.rate is None else repr(float(limit.rate)),
        "" if limit.burst is None else limit.burst,
        "1" if limit.active else "0",
        repr(float(limit.lease_ttl)),
    ]


def limit_of(data: Mapping[str, Any]) -> Limit:
    """A limit as the scripts reply it."""
    return Limit(
        str(data["name"]),
        None if data.get("slots") is None else int(data["slots"]),
        None if data.get("rate") is None else float(data["rate"]),
        None if data.get("burst") is None else int(data["burst"]),
        bool(data["active"]),
        float(data["lease_ttl"]),
    )


def _totals(data: Mapping[str, Any]) -> LimitTotals:
    """Totals as inspect_limit.lua sends them: numbers as strings."""
    return LimitTotals.from_store(
        int(data.get("grants", 0)),
        int(data.get("granted_units", 0)),
        int(data.get("timeouts", 0)),
        int(data.get("reclaimed", 0)),
        [int(n) for n in data.get("queued_waits") or ()],
        float(data.get("wait_seconds", 0)),
    )


def status_of(reply: Mapping[str, Any]) -> LimitStatus:
    """A limit's status as inspect_limit.lua replies it."""
    holders = [
        Holder(
            str(h[0]),
            int(h[1]),
            str(h[2]),
            str(h[3]),
            int(h[4]),
            utc(float(h[5])),
            utc(float(h[6])),
        )
        for h in reply.get("holders") or ()
    ]
    waiters = [
        Waiter(
            str(w[0]),
            int(w[1]),
            str(w[2]),
            str(w[3]),
            int(w[4]),
            utc(float(w[5])),
            int(w[6]),
            int(w[7]),
        )
        for w in reply.get("waiters") or ()
    ]
    token_in = reply.get("next_token_in")
    return LimitStatus(
        limit=limit_of(reply["limit"]),
        in_use=sum(h.occupy for h in holders),
        holders=holders,
        waiters=waiters,
        next_token_in=None if token_in is None else float(token_in),
        taken_at=utc(float(reply["now"])),
        totals=_totals(reply.get("totals") or {}),
    )


# --------------------------------------------------------------------------- errors


def error_of(reply: Mapping[str, Any]) -> SluiceError | None:
    """The error a script's reply (or one refusal in it) reports, if any."""
    code = reply.get("error")
    if code is None:
        return None
    if code == "not_found":
        return LimitNotFound(list(reply["names"]))
    if code == "exists":
        return LimitExists(reply["name"])
    if code == "busy":
        return LimitBusy(reply["name"], int(reply["holders"]))
    if code == "rate_without_rate":
        return InvalidRequest(
            f"rate_limit() on limit {reply['name']!r}, which has no rate; "
            "give it one with update(rate=...) or use concurrency()"
        )
    if code == "occupy_too_big":
        bound = int(reply["bound"])
        return InvalidRequest(
            f"occupy={reply.get('occupy', '?')} can never be met by limit {reply['name']!r} "
            f"({reply['what']}={bound}); ask for at most {bound}"
        )
    return StoreError(f"Redis store refused the step: {code}")


def raise_for(reply: Mapping[str, Any]) -> None:
    """Raise the error a script's reply reports, if any."""
    error = error_of(reply)
    if error is not None:
        raise error


# --------------------------------------------------------------------------- the exchange


def _request(request: AcquireRequest) -> list[object]:
    return [
        request.request_id,
        list(request.names),
        request.occupy,
        request.kind.value,
        request.holder,
        request.missing,
        request.count,
        request.join or "",
    ]


def batch_json(
    batch: Exchange, exchange_id: str, host: str, pid: int, epochs: Mapping[str, str]
) -> str:
    """The batch as exchange.lua takes it (``epochs``: the epoch of each asked ticket's seq)."""
    document = {
        "x": exchange_id,
        "h": host,
        "p": pid,
        "w": [
            [w.ticket_id, -1 if w.count is None else w.count, w.timed_out_on or ""]
            for w in batch.withdrawals
        ],
        "r": list(batch.releases),
        "a": [
            [a.ticket_id, a.seq, a.count, epochs.get(a.ticket_id, ""), _request(a.request)]
            for a in batch.asks
        ],
        "q": [_request(r) for r in batch.requests],
    }
    return json.dumps(document, separators=(",", ":"))


def _time(value: object) -> float | None:
    return None if value is None or value is False else float(str(value))


def _names(value: object) -> tuple[str, ...]:
    return tuple(str(n) for n in value) if isinstance(value, list) else ()


def exchanged(reply: Mapping[str, Any]) -> Exchanged:
    """What exchange.lua's reply says the step did."""
    grants = tuple(
        Granted(
            str(g[1]) if g[1] else None,
            tuple(n for n in str(g[2]).split(",") if n),
            float(g[3]),
            _time(g[4]),
            _time(g[5]),
            _names(g[6]),
            str(g[0]),
        )
        for g in reply.get("grants") or ()
    )
    queued = {
        str(ticket_id): Queued(
            str(ticket_id),
            int(q[0]),
            str(q[1]),
            int(q[2]),
            _time(q[3]),
            float(q[4]),
            _names(q[6]),
            int(q[5]),
        )
        for ticket_id, q in (reply.get("queued") or {}).items()
    }
    refused: dict[str, SluiceError] = {}
    for request_id, detail in (reply.get("refused") or {}).items():
        error = error_of(detail)
        if error is not None:
            refused[str(request_id)] = error
    return Exchanged(
        {str(k): bool(v) for k, v in (reply.get("released") or {}).items()},
        grants,
        queued,
        refused,
        {str(k): str(v) for k, v in (reply.get("joined") or {}).items()},
        {str(k): _names(v) for k, v in (reply.get("missing") or {}).items()},
    )


# --------------------------------------------------------------------------- doctor


def diagnosis(
    raw: object, server: Mapping[str, Any], persistence: Mapping[str, Any], prefix: str
) -> StoreDiagnosis:
    """What ``sluice doctor`` shows of a deployment: diagnose.lua's reply and INFO."""
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    reply = json.loads(text)
    schema = reply.get("schema")
    version = None if schema is None else int(schema)
    aof = "AOF on" if str(persistence.get("aof_enabled", 0)) == "1" else "AOF off"
    detail = (
        f"Redis {server.get('redis_version', '?')}, {aof}, "
        f"keys under {{{prefix}}}, {int(reply['limits'])} limits"
    )
    return StoreDiagnosis(
        "redis", detail, version, version == SCHEMA_VERSION, int(reply["expired_leases"])
    )


def held_spans_of(raw: object) -> list[HeldSpan]:
    """The held_spans script's reply as spans, by acquisition time."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    data = json.loads(str(text))
    spans: list[HeldSpan] = []
    for name, found in data.items():
        for entry in found.get("ended") or []:
            acquired, released, units, lease_id, holder = str(entry).split("|", 4)
            spans.append(
                HeldSpan(name, holder, int(units), float(acquired), float(released), lease_id)
            )
        for lease_id, units, holder, acquired in found.get("held") or []:
            spans.append(HeldSpan(name, str(holder), int(units), float(acquired), None, lease_id))
    spans.sort(key=lambda span: span.acquired_at)
    return spans
