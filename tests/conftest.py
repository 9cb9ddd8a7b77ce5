"""Shared fixtures: ONE table of stores that every conformance test runs against.

To add a backend, append a :class:`StoreEntry` to :data:`STORES`. Its factory is
a context manager that yields a URL naming a store no other test uses, and
cleans up afterwards. Server-backed entries call :func:`require_server` first,
so a developer without the server sees a skip that says how to start it, while
CI (``CI=true``) fails instead of silently testing less. For example::

    @contextlib.contextmanager
    def _redis_store(tmp_path: Path) -> Iterator[str]:
        require_server("localhost", 6379, "docker run --rm -p 6379:6379 redis:7")
        url = "redis://localhost:6379/15"
        yield url            # then FLUSHDB, or give each test its own key prefix

    StoreEntry("redis", _redis_store, cross_process=True)

``SLUICE_TEST_STORES=memory,sqlite`` (comma-separated ids) narrows a local run;
under CI=true it is an error, as a missing server or module is (:func:`on_ci`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest

from sluice import Limits


@dataclass(frozen=True)
class StoreEntry:
    """One backend the conformance suite runs against."""

    id: str
    make: Callable[[Path], AbstractContextManager[str]]
    """Given the test's tmp_path, a context manager yielding a fresh store URL."""
    cross_process: bool
    """Whether several processes on this host share the store (multi-process tests)."""
    sees_local_deaths: bool = True
    """Whether the store frees a SIGKILLed local process's leases and tickets at once.

    Stores shared across hosts (Redis, PostgreSQL) cannot tell a dead process
    from a slow one: they rely on lease expiry alone, so their crash tests use
    a short lease TTL and allow TTL plus a round trip.
    """


def on_ci() -> bool:
    """Whether this run is CI's (``CI=true``): there, testing less than everything fails."""
    return os.environ.get("CI", "").strip().lower() == "true"


def skip_or_fail(message: str) -> NoReturn:
    """Skip saying ``message`` (how to get what is missing); under CI=true, fail instead.

    Usable at module level too (in a conftest or a test module): the skip then skips it all.
    """
    if on_ci():
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require_server(host: str, port: int, how_to_start: str) -> None:
    """Skip (or fail under CI=true) unless a TCP server answers at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return
    except OSError as exc:
        message = f"no server reachable at {host}:{port} ({exc}); start one with: {how_to_start}"
    skip_or_fail(message)


def require_module(name: str, extra: str) -> ModuleType:
    """Import ``name``; if it is not installed, skip saying which extra installs it
    (``pip install 'sluice[EXTRA]'``), or fail under CI=true. Use it instead of
    ``pytest.importorskip``, which would skip silently on CI too."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        skip_or_fail(
            f"{name} is not installed ({exc}); install it with: pip install 'sluice[{extra}]'"
        )


@contextlib.contextmanager
def _memory_store(tmp_path: Path) -> Iterator[str]:
    # Each memory:// name is its own in-process store; a uuid keeps tests apart.
    yield f"memory://test-{uuid.uuid4().hex}"


@contextlib.contextmanager
def _sqlite_store(tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "sluice.db"  # tmp_path is absolute: sqlite:////abs/path.db
    yield f"sqlite:///{path}"


REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_START = 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no'


@contextlib.contextmanager
def _redis_store(tmp_path: Path) -> Iterator[str]:
    # One key prefix per test keeps tests apart on the shared server; its keys go after.
    redis = require_module("redis", "redis")
    require_server(REDIS_HOST, REDIS_PORT, REDIS_START)
    prefix = f"sluice-test-{uuid.uuid4().hex[:12]}"
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/0?prefix={prefix}"
    with redis.Redis(REDIS_HOST, REDIS_PORT) as client:
        keys = list(client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])


PG_DSN = os.environ.get("SLUICE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
"""The PostgreSQL test database; each test gets its own schema in it, dropped afterwards."""
PG_HOW_TO_START = (
    "docker run --rm -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust -e POSTGRES_DB=test "
    "postgres:15"
)


def drop_pg_schema(schema: str) -> None:
    """Close the schema's leftover connections (by application_name) and drop it."""
    psycopg = require_module("psycopg", "postgres")
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
            (f"%{schema}%",),
        )
        conn.execute("SET lock_timeout = '10s'")
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.contextmanager
def _postgres_store(tmp_path: Path) -> Iterator[str]:
    require_module("psycopg", "postgres")
    require_server("127.0.0.1", 5432, PG_HOW_TO_START)
    schema = f"sluice_t_{uuid.uuid4().hex}"
    try:
        yield f"{PG_DSN}?schema={schema}"
    finally:
        drop_pg_schema(schema)


STORES: list[StoreEntry] = [
    StoreEntry("memory", _memory_store, cross_process=False),
    StoreEntry("sqlite", _sqlite_store, cross_process=True),
    StoreEntry("redis", _redis_store, cross_process=True, sees_local_deaths=False),
    StoreEntry("postgres", _postgres_store, cross_process=True, sees_local_deaths=False),
]


STORE_IDS = tuple(entry.id for entry in STORES)


def selected_store_ids() -> tuple[str, ...]:
    """The store ids this run tests: all of them, or those ``SLUICE_TEST_STORES`` names."""
    wanted = os.environ.get("SLUICE_TEST_STORES", "").strip()
    if not wanted:
        return STORE_IDS
    ids = {part.strip() for part in wanted.split(",") if part.strip()}
    return tuple(store_id for store_id in STORE_IDS if store_id in ids)


_importorskip = pytest.importorskip


def importorskip_or_fail_on_ci(modname: str, *args: Any, **kwargs: Any) -> Any:
    """``pytest.importorskip`` while this suite runs: the same, except that under CI=true
    a missing module fails instead of skipping (tests should call :func:`require_module`;
    this keeps a direct ``pytest.importorskip`` from skipping silently on CI)."""
    try:
        return _importorskip(modname, *args, **kwargs)
    except pytest.skip.Exception as exc:
        if on_ci():
            pytest.fail(f"CI=true and {exc.msg}", pytrace=False)
        raise


def pytest_configure(config: pytest.Config) -> None:
    """Under CI=true, a narrowed store table is an error: CI tests every store; and
    ``pytest.importorskip`` fails instead of skipping (see importorskip_or_fail_on_ci)."""
    pytest.importorskip = importorskip_or_fail_on_ci
    if on_ci() and selected_store_ids() != STORE_IDS:
        raise pytest.UsageError(
            f"CI=true and SLUICE_TEST_STORES={os.environ['SLUICE_TEST_STORES']!r} leaves out"
            f" {', '.join(sorted(set(STORE_IDS) - set(selected_store_ids())))}: CI tests"
            " every store; unset SLUICE_TEST_STORES (or CI, to narrow a local run)"
        )


def _selected(entries: list[StoreEntry]) -> list[StoreEntry]:
    ids = selected_store_ids()
    return [entry for entry in entries if entry.id in ids]


_ALL = _selected(STORES)
_CROSS_PROCESS = [entry for entry in _ALL if entry.cross_process]
_CROSS_PROCESS_PARAMS: list[object] = [*_CROSS_PROCESS] or [
    pytest.param(None, marks=pytest.mark.skip("no cross-process store"))
]


cross_process_only = pytest.mark.parametrize(
    "store_entry",
    _CROSS_PROCESS_PARAMS,
    ids=[entry.id for entry in _CROSS_PROCESS] or ["none"],
    indirect=True,
)
"""Narrow a test that uses ``store_url`` (and fixtures on it) to cross-process stores:
for a test that starts other processes on the same store."""


@pytest.fixture(params=_ALL, ids=[entry.id for entry in _ALL])
def store_entry(request: pytest.FixtureRequest) -> StoreEntry:
    """The table entry of the store under test."""
    entry: StoreEntry = request.param
    return entry


@pytest.fixture
def store_url(store_entry: StoreEntry, tmp_path: Path) -> Iterator[str]:
    """A fresh store URL, used by this test only, for every store in the table."""
    with store_entry.make(tmp_path) as url:
        yield url


@pytest.fixture(
    params=_CROSS_PROCESS_PARAMS,
    ids=[entry.id for entry in _CROSS_PROCESS] or ["none"],
)
def cross_process_entry(request: pytest.FixtureRequest) -> StoreEntry:
    """The table entry of a store that several processes on this host share."""
    entry: StoreEntry = request.param
    return entry


@pytest.fixture
def cross_process_url(cross_process_entry: StoreEntry, tmp_path: Path) -> Iterator[str]:
    """A fresh store URL for stores that several processes on this host share."""
    with cross_process_entry.make(tmp_path) as url:
        yield url


@pytest.fixture
def limits(store_url: str) -> Iterator[Limits]:
    """A sync ``sluice.Limits`` on the test's fresh store, closed afterwards."""
    client = Limits(store_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def mp_limits(cross_process_url: str) -> Iterator[Limits]:
    """A sync ``sluice.Limits`` on a fresh cross-process store, closed afterwards."""
    client = Limits(cross_process_url)
    try:
        yield client
    finally:
        client.close()
