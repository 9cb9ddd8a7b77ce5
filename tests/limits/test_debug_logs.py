"""Sluice's loggers: a hierarchy under ``sluice`` with a ``NullHandler`` on it, and DEBUG
records on ``sluice.limits`` for each request, place in line, grant, give-up and release
(sync and async, every store)."""

from __future__ import annotations

import asyncio
import importlib
import logging

import pytest

import sluice
import sluice.aio
from sluice import AcquireTimeout, Limits


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "sluice.limits" and r.levelno == logging.DEBUG
    ]


def test_sluice_has_a_null_handler_and_each_part_logs_below_it() -> None:
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("sluice").handlers)
    modules = {
        "sluice.limits.line": "sluice.limits",
        "sluice.limits.lease": "sluice.limits",
        "sluice.limits.waiting": "sluice.limits",
        "sluice.flows.flow": "sluice.flows",
        "sluice.flows.engine": "sluice.flows",
        "sluice.store.sqlite.ipc": "sluice.store.sqlite",
        "sluice.store.redis.listener": "sluice.store.redis",
        "sluice.store.postgres.listener": "sluice.store.postgres",
    }
    for module, logger in modules.items():
        assert importlib.import_module(module).log.name == logger, module


def test_acquire_grant_wait_give_up_and_release_are_logged_at_debug(
    limits: Limits, caplog: pytest.LogCaptureFixture
) -> None:
    limits.create("db", slots=1)
    with caplog.at_level(logging.DEBUG, logger="sluice.limits"):
        lease = limits.acquire("db", holder="first")
        with pytest.raises(AcquireTimeout):
            limits.acquire("db", timeout=0.2, holder="second")
        lease.release()
    said = _messages(caplog)
    assert said[0] == "sluice: first asks for 1 unit(s) of db (concurrency)"
    assert any(m.startswith("sluice: first granted 1 unit(s) of db after") for m in said)
    assert any(m.endswith(f"lease {lease.id}") for m in said if "granted" in m)
    assert "sluice: second waits on db at position 1" in said
    assert any(m.startswith("sluice: second left the line of db") for m in said)
    assert any(m.endswith("AcquireTimeout") for m in said if "second left" in m)
    assert f"sluice: first released lease {lease.id} (1 unit(s) of db)" in said


def test_the_async_twins_log_the_same(store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> str:
        async with sluice.aio.Limits(store_url) as limits:
            await limits.create("api", slots=2)
            lease = await limits.acquire("api", occupy=2, holder="job")
            await lease.release()
            return lease.id

    with caplog.at_level(logging.DEBUG, logger="sluice.limits"):
        lease_id = asyncio.run(main())
    said = _messages(caplog)
    assert "sluice: job asks for 2 unit(s) of api (concurrency)" in said
    assert any(m.startswith("sluice: job granted 2 unit(s) of api after") for m in said)
    assert f"sluice: job released lease {lease_id} (2 unit(s) of api)" in said


def test_nothing_is_formatted_at_the_default_level(
    limits: Limits, caplog: pytest.LogCaptureFixture
) -> None:
    limits.create("db", slots=1)
    with caplog.at_level(logging.INFO, logger="sluice"):
        limits.acquire("db").release()
    assert _messages(caplog) == []
