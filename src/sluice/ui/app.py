"""The dashboard: a Starlette app with HTML pages, a JSON API under ``/api``, and ``/metrics``.

Pages are small HTML shells; ``static/*.js`` (``core.js`` the helpers, ``limits.js`` and
``runs.js`` the pages, ``app.js`` the start) fill them from the JSON API and refresh them
every sampling interval (a fetch; reading the shared sample and, at most once per
interval, each limit's past: never the store per viewer). Admin actions are POSTs
that need the token ``sluice ui`` prints, sent in the ``X-Sluice-Token`` header
(never a cookie, so another site cannot make a browser send it); without it they
answer 403 and change nothing. Each action leaves an audit record naming the token's
holder (by its fingerprint, never the token) and the client's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import html
import json
import os
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sluice import __version__, runs
from sluice.errors import (
    InvalidRequest,
    LimitBusy,
    LimitNotFound,
    RunNotFound,
    SluiceError,
    StoreUnavailable,
)
from sluice.limits.sync import Limits
from sluice.metrics import (
    CONTENT_TYPE,
    FlowsCollector,
    LimitsCollector,
    build_registry,
    exposition,
)
from sluice.report.audit import record_json
from sluice.report.limits import describe_limit
from sluice.report.run_query import AmbiguousRunId, RunFilter
from sluice.report.runs import logs_json
from sluice.report.sampler import Sampler
from sluice.report.times import parse_time
from sluice.report.units import parse_rate
from sluice.report.waits import head_of_line, wait_percentiles
from sluice.store.audit import Actor, acting_as
from sluice.ui.past import MAX_WINDOW, MIN_WINDOW, LimitPast
from sluice.ui.views import RunIndex, limit_json, limits_json, run_detail_json

__all__ = ["TOKEN_HEADER", "Dashboard", "create_app"]

TOKEN_HEADER: Final = "X-Sluice-Token"
STATIC: Final = Path(__file__).with_name("static")
_CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
_MAX_RUNS: Final = 500


@dataclass
class Dashboard:
    """What the app serves from: one store's limits, its sampler, its run history, the token."""

    limits: Limits
    sampler: Sampler
    runs: RunIndex
    token: str | None
    """The admin token; None: read-only, every admin action is refused."""
    past: LimitPast = field(init=False)
    """Each limit's timeline and audit record, read from the store."""

    def __post_init__(self) -> None:
        self.past = LimitPast(self.limits.url, self.runs, self.sampler)

    def actor(self, request: Request) -> Actor:
        """Who an admin request is recorded as: the holder of this dashboard's token (named
        by the token's fingerprint, never the token) and the client's address."""
        fingerprint = hashlib.sha256((self.token or "").encode()).hexdigest()[:8]
        client = request.client
        address = None
        if client is not None:
            host = f"[{client.host}]" if ":" in client.host else client.host
            address = f"{host}:{client.port}"
        return Actor(
            f"token holder {fingerprint}", socket.gethostname(), os.getpid(), "sluice ui", address
        )

    def authorized(self, request: Request) -> bool:
        """Whether the request carries the admin token (compared in constant time)."""
        given = request.headers.get(TOKEN_HEADER)
        if self.token is None or not given:
            return False
        return hmac.compare_digest(given.encode(), self.token.encode())


# --------------------------------------------------------------------------- pages

_NAV: Final = (("limits", "/", "Limits"), ("runs", "/runs", "Runs"))


def _page(
    page: str, title: str, heading: str, data: dict[str, str], status: int = 200
) -> HTMLResponse:
    attrs = "".join(f' data-{k}="{html.escape(v)}"' for k, v in data.items())
    current = ' aria-current="page"'
    nav = "".join(
        f'<li><a href="{href}"{current if key in (page, page + "s") else ""}>{label}</a></li>'
        for key, href, label in _NAV
    )
    body = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · Sluice</title>
<link rel="stylesheet" href="/static/app.css">
<script src="/static/core.js" defer></script>
<script src="/static/limits.js" defer></script>
<script src="/static/runs.js" defer></script>
<script src="/static/app.js" defer></script>
</head>
<body data-page="{page}"{attrs}>
<a class="skip" href="#main">Skip to content</a>
<header class="top">
<span class="brand">Sluice</span>
<nav aria-label="Main"><ul>{nav}</ul></nav>
<span id="mode" class="mode" role="status"></span>
</header>
<main id="main" tabindex="-1">
<h1>{html.escape(heading)}</h1>
<p id="updated" class="updated" aria-live="polite"></p>
<div id="error" class="error" role="alert" hidden></div>
<div id="content"><noscript>This page needs JavaScript; the same data is at
<a href="/api/limits">/api/limits</a> and <a href="/api/runs">/api/runs</a>.</noscript></div>
</main>
<footer class="foot">Sluice {__version__} · <a href="/metrics">metrics</a></footer>
</body>
</html>
"""
    return HTMLResponse(body, status_code=status)


def _not_found_page(what: str) -> HTMLResponse:
    return _page("missing", "Not found", "Not found", {"message": what}, status=404)


# --------------------------------------------------------------------------- errors


def _error(exc: SluiceError) -> JSONResponse:
    status = 500
    if isinstance(exc, InvalidRequest):
        status = 400
    elif isinstance(exc, (LimitNotFound, RunNotFound)):
        status = 404
    elif isinstance(exc, LimitBusy):
        status = 409
    elif isinstance(exc, StoreUnavailable):
        status = 503
    return JSONResponse({"error": str(exc)}, status_code=status)


def _ambiguous(exc: AmbiguousRunId) -> JSONResponse:
    candidates = [{"id": r.id, "flow": r.flow} for r in exc.candidates]
    return JSONResponse({"error": str(exc), "candidates": candidates}, status_code=404)


def _json_error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


# --------------------------------------------------------------------------- runs


def _run_filter(request: Request) -> RunFilter:
    """The runs list's filter from the query: flow, state (repeated or comma-separated),
    since and until (an ISO time or an age such as 2h), id (a prefix)."""
    query = request.query_params
    states = [s for raw in query.getlist("state") for s in raw.split(",") if s.strip()]
    times: dict[str, float | None] = {}
    for key in ("since", "until"):
        raw = query.get(key, "").strip()
        try:
            times[key] = parse_time(raw) if raw else None
        except ValueError as exc:
            raise InvalidRequest(f"{key}: {exc}") from exc
    return RunFilter(
        query.get("flow") or None,
        tuple(states),
        times["since"],
        times["until"],
        query.get("id") or None,
    )


# --------------------------------------------------------------------------- admin


_MAX_BODY: Final = 64 * 1024
"""Bytes an admin action's JSON body may have (an action names a limit and a few numbers)."""


async def _body(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise InvalidRequest("send the action as JSON (Content-Type: application/json)")
    body = await request.body()
    if len(body) > _MAX_BODY:
        raise InvalidRequest(f"the request body is {len(body):,} bytes: send at most {_MAX_BODY:,}")
    try:
        data = json.loads(body)
    except RecursionError as exc:
        raise InvalidRequest("the request body is JSON nested too deeply") from exc
    except ValueError as exc:
        raise InvalidRequest(f"the request body is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("limit"), str):
        raise InvalidRequest('the request body must be a JSON object with "limit": NAME')
    return data


def _rate(value: object) -> object:
    """A rate given as a number (per second) or as text such as ``10/s``; None removes it."""
    if isinstance(value, str):
        try:
            return parse_rate(value)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
    return value


def _update(limits: Limits, name: str, data: dict[str, Any]) -> str:
    changes = {k: data[k] for k in ("slots", "rate", "burst") if k in data}
    if "rate" in changes:
        changes["rate"] = _rate(changes["rate"])
    unknown = sorted(set(data) - {"limit", "slots", "rate", "burst"})
    if unknown:
        raise InvalidRequest(f"unknown field(s) {unknown}: give slots, rate, burst")
    after = limits.update(name, **changes)
    return f"updated limit {name!r}: {describe_limit(after)}"


def _delete(limits: Limits, name: str, data: dict[str, Any]) -> str:
    force = data.get("force", False)
    if not isinstance(force, bool):
        raise InvalidRequest(f'"force" must be true or false, got {force!r}')
    limits.delete(name, force=force)
    return f"deleted limit {name!r}"


_ACTIONS: Final[dict[str, Callable[[Limits, str, dict[str, Any]], str]]] = {
    "enable": lambda limits, name, _: f"enabled limit {limits.enable(name).name!r}",
    "disable": lambda limits, name, _: (
        f"disabled limit {limits.disable(name).name!r}: it admits everyone until enabled"
    ),
    "reset": lambda limits, name, _: (
        f"reset limit {name!r}: released {limits.reset(name)} holder(s)"
    ),
    "update": _update,
    "delete": lambda limits, name, data: _delete(limits, name, data),
}


# --------------------------------------------------------------------------- app


class _SecurityHeaders:
    """Adds a strict content security policy and friends to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", _CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                    (b"cache-control", b"no-store"),
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


LOOPBACK_HOSTS: Final = ("127.0.0.1", "localhost")
"""Host headers a dashboard bound to loopback answers (others: 400, against DNS rebinding)."""


def create_app(
    dashboard: Dashboard,
    *,
    sample_in_background: bool = True,
    allowed_hosts: Sequence[str] | None = None,
) -> Starlette:
    """The dashboard app on ``dashboard``'s store; the sampler runs while the app does.

    With ``allowed_hosts``, a request whose Host header names another host is
    refused (400), so a web page elsewhere cannot read the dashboard through a
    DNS name rebound to this machine.
    """
    d = dashboard
    registry = build_registry([LimitsCollector(d.sampler), FlowsCollector(d.runs.url)])

    async def limits_page(request: Request) -> Response:
        return _page("limits", "Limits", "Limits", {})

    async def limit_page(request: Request) -> Response:
        name = request.path_params["name"]
        sample = await run_in_threadpool(d.sampler.latest)
        if sample.error is None and sample.status(name) is None:
            return _not_found_page(f"No limit named {name!r}.")
        return _page("limit", name, f"Limit {name}", {"name": name})

    async def runs_page(request: Request) -> Response:
        return _page("runs", "Runs", "Flow runs", {})

    async def run_page(request: Request) -> Response:
        given = request.path_params["run_id"]
        try:
            run_id = await run_in_threadpool(d.runs.resolve, given)
            detail = await run_in_threadpool(d.runs.detail, run_id)
        except AmbiguousRunId as exc:
            return _not_found_page(str(exc))
        except RunNotFound:
            return _not_found_page(f"No flow run with id {given!r} in the run history.")
        if run_id != given:  # a prefix: the page's address names the run
            return RedirectResponse(f"/runs/{run_id}", status_code=303)
        run = detail.run
        return _page("run", f"Run {run.flow}", f"Flow run {run.flow}", {"run": run_id})

    async def task_run(request: Request) -> Response:
        task_run_id = request.path_params["task_run_id"]
        flow_run = await run_in_threadpool(d.runs.flow_run_of, task_run_id)
        if flow_run is None:
            return _not_found_page(
                f"Task run {task_run_id!r} is not among the newest 100 flow runs yet "
                "(its history may not be written until the flow ends)."
            )
        return RedirectResponse(f"/runs/{flow_run}#task-{task_run_id}", status_code=303)

    async def api_limits(request: Request) -> Response:
        sample = await run_in_threadpool(d.sampler.latest)
        data = limits_json(sample, d.sampler.delivered_rate)
        return JSONResponse({**data, "interval": d.sampler.interval})

    async def api_limit(request: Request) -> Response:
        name = request.path_params["name"]
        sample = await run_in_threadpool(d.sampler.latest)
        if sample.error is not None:
            return _json_error(sample.error, 503)
        status = sample.status(name)
        if status is None:
            return _json_error(f"no limit named {name!r}", 404)
        raw = request.query_params.get("window", str(int(d.sampler.keep_seconds)))
        try:
            window = float(raw)
        except ValueError:
            window = -1.0
        if not MIN_WINDOW <= window <= MAX_WINDOW:
            return _json_error(
                f"window must be seconds from {MIN_WINDOW:g} to {MAX_WINDOW:g}, got {raw!r}", 400
            )
        delivered = d.sampler.delivered_rate(name)
        data = limit_json(status, d.sampler.history(name), sample, delivered)
        try:
            timeline = await run_in_threadpool(d.past.timeline, status, window)
            audit = await run_in_threadpool(d.past.audit, name, 20)
        except SluiceError as exc:
            return _error(exc)
        data["head"] = head_of_line(status).to_json()
        data["wait_percentiles"] = [p.to_json() for p in wait_percentiles(status.totals)]
        data["timeline"] = timeline.to_json()
        data["audit"] = [record_json(r) for r in audit]
        return JSONResponse(data)

    async def api_runs(request: Request) -> Response:
        raw = request.query_params.get("limit", "50")
        if not raw.isdigit() or not 1 <= int(raw) <= _MAX_RUNS:
            return _json_error(
                f"limit must be a whole number from 1 to {_MAX_RUNS}, got {raw!r}", 400
            )
        try:
            where = _run_filter(request)
            found = await run_in_threadpool(d.runs.list_json, int(raw), where)
        except SluiceError as exc:
            return _error(exc)
        return JSONResponse({"runs": found})

    async def api_run(request: Request) -> Response:
        try:
            run_id = await run_in_threadpool(d.runs.resolve, request.path_params["run_id"])
            detail = await run_in_threadpool(d.runs.detail, run_id)
            body = await run_in_threadpool(run_detail_json, detail, d.runs.url)
        except AmbiguousRunId as exc:
            return _ambiguous(exc)
        except SluiceError as exc:
            return _error(exc)
        return JSONResponse(body)

    async def api_run_logs(request: Request) -> Response:
        try:
            run_id = await run_in_threadpool(d.runs.resolve, request.path_params["run_id"])
            detail = await run_in_threadpool(d.runs.detail, run_id)
            records = await run_in_threadpool(lambda: runs.logs(run_id, url=d.runs.url))
        except AmbiguousRunId as exc:
            return _ambiguous(exc)
        except SluiceError as exc:
            return _error(exc)
        body = {"id": run_id, "traceback": detail.run.traceback, "logs": logs_json(detail, records)}
        return JSONResponse(body)

    async def api_session(request: Request) -> Response:
        return JSONResponse(
            {
                "admin": d.authorized(request),
                "read_only": d.token is None,
                "interval": d.sampler.interval,
                "store": d.limits.url,
            }
        )

    async def api_admin(request: Request) -> Response:
        action = _ACTIONS.get(request.path_params["action"])
        if action is None:
            return _json_error(
                f"unknown action {request.path_params['action']!r}: use one of {sorted(_ACTIONS)}",
                404,
            )
        if not d.authorized(request):
            reason = (
                "this dashboard is read-only (started with --read-only)"
                if d.token is None
                else f"admin actions need the token `sluice ui` printed, in {TOKEN_HEADER}"
            )
            return _json_error(reason, 403)
        actor = d.actor(request)

        def act(data: dict[str, Any]) -> str:
            with acting_as(actor):  # the audit record names the token holder and address
                return action(d.limits, data["limit"], data)

        try:
            data = await _body(request)
            message = await run_in_threadpool(act, data)
        except SluiceError as exc:
            return _error(exc)
        await run_in_threadpool(d.sampler.sample, True)
        return JSONResponse({"ok": True, "message": message})

    async def metrics(request: Request) -> Response:
        body = await run_in_threadpool(exposition, registry)
        return Response(body, media_type=CONTENT_TYPE)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if sample_in_background:
            d.sampler.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, d.sampler.stop)

    routes = [
        Route("/", limits_page),
        Route("/limits/{name:path}", limit_page),
        Route("/runs", runs_page),
        Route("/runs/{run_id}", run_page),
        Route("/task-runs/{task_run_id}", task_run),
        Route("/api/session", api_session),
        Route("/api/limits", api_limits),
        Route("/api/limits/{name:path}", api_limit),
        Route("/api/runs", api_runs),
        Route("/api/runs/{run_id}", api_run),
        Route("/api/runs/{run_id}/logs", api_run_logs),
        Route("/api/admin/{action}", api_admin, methods=["POST"]),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.add_middleware(_SecurityHeaders)
    return app
