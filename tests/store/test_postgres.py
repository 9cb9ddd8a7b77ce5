"""The PostgreSQL store's own behaviour, against the real server (never a mock).

Connections killed server-side (``pg_terminate_backend``: the wake-up listener, a
holder's step connections, a step whose reply never arrives), server errors
surfacing as Sluice errors, the schema (created once by racing processes,
versioned, migrated in place with live holders and waiters, usable when made by
an administrator beforehand), the connections a busy process uses, and URL
parsing. Every test uses its own schema in the ``test`` database and kills only
backends of that schema (by application_name) or of a role it created.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import threading
import time
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from conformance._helpers import peak_units
from conftest import PG_DSN, PG_HOW_TO_START, drop_pg_schema, require_module, require_server
from sluice import Limits, aio
from sluice.errors import AcquireTimeout, ConfigError, LeaseLost, StoreError, StoreUnavailable
from sluice.limits.model import WAIT_BUCKETS, Limit, LimitTotals, wait_bucket
from sluice.store.base import (
    CLAIM_WINDOW,
    AcquireRequest,
    Ask,
    Exchange,
    StoreDiagnosis,
    ThreadedAsyncStore,
    Withdrawal,
)

psycopg = require_module("psycopg", "postgres")

from sluice.store.postgres.config import SCHEMA_VERSION, migration_sql, parse_url  # noqa: E402
from sluice.store.postgres.store import PostgresStore  # noqa: E402
from sluice.store.sqlite import engine as sqlite_engine  # noqa: E402

from ._parity import Parity  # noqa: E402
from ._pg_proxy import ReplyDropper  # noqa: E402

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def schema() -> Iterator[str]:
    """A fresh schema name in the test database, dropped afterwards."""
    require_server("127.0.0.1", 5432, PG_HOW_TO_START)
    name = f"sluice_t_{uuid.uuid4().hex}"
    try:
        yield name
    finally:
        drop_pg_schema(name)


@pytest.fixture
def url(schema: str) -> str:
    return f"{PG_DSN}?schema={schema}"


def admin(sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement as the test's superuser; return its rows (if any)."""
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def step_backends(schema: str) -> list[int]:
    """Server pids of the step connections (not the listener) working on ``schema``."""
    rows = admin(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (f"sluice/{schema}",)
    )
    return [r[0] for r in rows]


def connections(schema: str) -> list[int]:
    """Server pids of every connection (steps and listener) of the stores on ``schema``."""
    rows = admin(
        "SELECT pid FROM pg_stat_activity WHERE application_name IN (%s, %s)",
        (f"sluice/{schema}", f"sluice/{schema}:listen"),
    )
    return [r[0] for r in rows]


def terminate(pids: list[int]) -> None:
    for pid in pids:
        admin("SELECT pg_terminate_backend(%s)", (pid,))


def store_of(limits: Limits) -> PostgresStore:
    store = limits._store
    assert isinstance(store, PostgresStore)
    return store


def wait_until(probe: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}")
        time.sleep(0.01)


class Waiter(threading.Thread):
    """``limits.acquire(name)`` in a thread, recording the lease and when it came."""

    def __init__(
        self, limits: Limits, name: str, timeout: float = 20.0, holder: str | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.limits, self.name, self.timeout, self.holder = limits, name, timeout, holder
        self.lease: Any = None
        self.error: BaseException | None = None
        self.granted_at = 0.0
        self.start()

    def run(self) -> None:
        try:
            self.lease = self.limits.acquire(self.name, timeout=self.timeout, holder=self.holder)
            self.granted_at = time.monotonic()
        except BaseException as exc:
            self.error = exc


# --------------------------------------------------------------------------- URLs


def test_url_defaults_and_options() -> None:
    config = parse_url("postgresql://me:pw@db.example:5433/app")
    assert config.schema == "sluice"
    assert config.pool_size == 4
    assert config.url == "postgresql://me:***@db.example:5433/app"
    assert config.conninfo == "postgresql://me:pw@db.example:5433/app"
    assert config.listen_conninfo == config.conninfo
    assert config.application_name == "sluice/sluice"

    config = parse_url(
        "postgres://me@pgbouncer:6432/app?schema=limits_2&sslmode=require&pool_size=2"
        "&listen_url=postgresql://me@db:5432/app&application_name=billing"
    )
    assert config.schema == "limits_2"
    assert config.pool_size == 2
    assert config.conninfo == "postgresql://me@pgbouncer:6432/app?sslmode=require"
    assert config.listen_conninfo == "postgresql://me@db:5432/app"
    assert config.application_name == "billing"
    assert config.prepared is True
    assert parse_url("postgresql://h/db?prepared=false").prepared is False

    # libpq decodes %20 but not "+": options with spaces must survive the round trip.
    config = parse_url("postgresql://127.0.0.1/test?options=-c%20synchronous_commit%3Doff")
    assert config.conninfo == "postgresql://127.0.0.1/test?options=-c%20synchronous_commit%3Doff"


@pytest.mark.parametrize("bad", ["Sluice", "1st", "my-schema", "a.b", "x" * 64, ""])
def test_a_bad_schema_is_a_config_error_naming_it(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Limits(f"postgresql://me:hunter2@127.0.0.1/test?schema={bad}")
    assert repr(bad) in str(caught.value)
    assert "lowercase" in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("bad", ["0", "x", "101"])
def test_a_bad_pool_size_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match=f"pool_size {bad!r}"):
        parse_url(f"postgresql://127.0.0.1/test?pool_size={bad}")


def test_prepared_must_be_true_or_false() -> None:
    with pytest.raises(ConfigError, match="prepared 'maybe'"):
        parse_url("postgresql://127.0.0.1/test?prepared=maybe")


def test_a_listen_url_must_be_postgresql() -> None:
    with pytest.raises(ConfigError, match="listen_url"):
        parse_url("postgresql://127.0.0.1/test?listen_url=redis://x")


def test_an_unreachable_server_is_store_unavailable_without_the_password() -> None:
    with (
        Limits("postgresql://me:hunter2@127.0.0.1:1/test") as limits,
        pytest.raises(StoreUnavailable) as caught,
    ):
        limits.list()
    assert "hunter2" not in str(caught.value)
    assert "***" in str(caught.value)
    assert isinstance(caught.value.__cause__, psycopg.Error)


def test_both_schemes_open_the_store(schema: str) -> None:
    with Limits(f"postgres://postgres@127.0.0.1:5432/test?schema={schema}") as limits:
        limits.create("db", slots=2)
    with Limits(f"postgresql://postgres@127.0.0.1:5432/test?schema={schema}") as limits:
        assert limits.get("db") == Limit("db", slots=2)


# --------------------------------------------------------------------------- connection kills


def test_a_killed_listener_reconnects_and_its_waiter_still_gets_the_release(
    url: str, schema: str
) -> None:
    # Two stores on one schema stand for two processes: the release comes from
    # the other one, so the waiter can only learn of it through its listener.
    with Limits(url) as limits, Limits(f"{url}&application_name=other-{schema}") as other:
        limits.create("db", slots=1)
        held = other.acquire("db")
        waiter = Waiter(limits, "db")
        wait_until(lambda: limits.inspect("db").waiters, 5, "the waiter to queue")
        listener = store_of(limits).listener
        assert listener is not None and listener.backend_pid is not None
        old_pid = listener.backend_pid
        terminate([old_pid])
        released_at = time.monotonic()
        held.release()  # NOTIFY goes to a channel nobody listens on right now
        waiter.join(10)
        assert waiter.error is None, waiter.error
        took = waiter.granted_at - released_at
        assert took < 2.0, f"waiter got the slot {took:.2f}s after the release"
        assert listener.reconnects == 1
        assert listener.backend_pid != old_pid
        waiter.lease.release()
        # and the new LISTEN works: a second hand-off arrives by notification
        held = other.acquire("db")
        second = Waiter(limits, "db")
        wait_until(lambda: limits.inspect("db").waiters, 5, "the waiter to queue")
        released_at = time.monotonic()
        held.release()
        second.join(10)
        assert second.error is None, second.error
        assert second.granted_at - released_at < 0.5
        second.lease.release()


def test_a_holder_whose_connections_are_killed_keeps_its_lease(url: str, schema: str) -> None:
    with Limits(url) as limits:
        limits.create("db", slots=1, lease_ttl=1)
        lease = limits.acquire("db")
        for _ in range(3):  # every step connection, over two and a half TTLs
            pids = step_backends(schema)
            assert pids
            terminate(pids)
            time.sleep(0.8)
        assert not lease.lost
        assert [h.lease_id for h in limits.inspect("db").holders] == [lease.id]
        lease.release()  # must not raise
        assert limits.inspect("db").in_use == 0


@pytest.fixture
def role(schema: str) -> Iterator[str]:
    """A login role owning ``schema`` (made beforehand, as an administrator would)."""
    name = f"sluice_t_role_{uuid.uuid4().hex[:12]}"
    admin(f'CREATE ROLE "{name}" LOGIN')
    admin(f'CREATE SCHEMA "{schema}" AUTHORIZATION "{name}"')
    try:
        yield name
    finally:
        admin(f'ALTER ROLE "{name}" LOGIN')
        terminate(
            [r[0] for r in admin("SELECT pid FROM pg_stat_activity WHERE usename = %s", (name,))]
        )
        drop_pg_schema(schema)
        admin(f'DROP ROLE "{name}"')


def test_renewals_failing_past_the_ttl_lose_the_lease(schema: str, role: str) -> None:
    url = f"postgresql://{role}@127.0.0.1:5432/test?schema={schema}"
    # The role may not create schemas: the one made for it is used as it is.
    with Limits(url) as limits:
        limits.create("db", slots=1, lease_ttl=1)
        lease = limits.acquire("db")
        admin(f'ALTER ROLE "{role}" NOLOGIN')
        terminate(step_backends(schema))
        # The keeper cannot renew; once past the TTL the lease is lost, and the
        # store's own failures are Sluice errors.
        wait_until(lambda: lease.lost, 5, "lease.lost while the server refuses us")
        with pytest.raises(StoreUnavailable):
            limits.list()
        admin(f'ALTER ROLE "{role}" LOGIN')
        with pytest.raises(LeaseLost):
            lease.release()
        limits.acquire("db", timeout=0).release()  # the slot came back by expiry


def test_a_server_side_error_is_a_store_error(url: str, schema: str) -> None:
    with Limits(url) as limits:
        limits.create("db", slots=1)
        admin(f'DROP FUNCTION "{schema}".exchange')
        with pytest.raises(StoreError) as caught:
            limits.acquire("db", timeout=0)
        assert "schema is missing or incomplete" in str(caught.value)
        assert isinstance(caught.value.__cause__, psycopg.Error)
        assert limits.get("db") == Limit("db", slots=1)  # the rest still works


# --------------------------------------------------------------------------- schema


def _open_schema(url: str, barrier: Any, results: Any) -> None:
    try:
        barrier.wait(30)
        with Limits(url) as limits:
            limits.ensure("db", slots=3)
            results.put(("ok", [lim.name for lim in limits.list()]))
    except BaseException as exc:
        results.put(("error", repr(exc)))


def test_processes_creating_the_schema_at_once_do_not_race(url: str, schema: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    results = ctx.Queue()
    procs = [ctx.Process(target=_open_schema, args=(url, barrier, results)) for _ in range(4)]
    for proc in procs:
        proc.start()
    try:
        outcomes = [results.get(timeout=60) for _ in procs]
    finally:
        for proc in procs:
            proc.join(10)
    assert outcomes == [("ok", ["db"])] * 4
    assert admin(f'SELECT value FROM "{schema}".meta') == [(str(SCHEMA_VERSION),)]


def test_the_schema_is_versioned_and_a_newer_one_is_refused(url: str, schema: str) -> None:
    with Limits(url) as limits:
        limits.create("db", slots=1)
        report = store_of(limits).diagnose()
        assert report == StoreDiagnosis("postgresql", report.detail, SCHEMA_VERSION, True, 0)
        assert schema in report.detail
    admin(f"UPDATE \"{schema}\".meta SET value = '{SCHEMA_VERSION + 1}'")
    with Limits(url) as limits:
        with pytest.raises(StoreError, match="newer than this Sluice"):
            limits.list()
        report = store_of(limits).diagnose()
        assert (report.schema_version, report.schema_current) == (SCHEMA_VERSION + 1, False)


def test_diagnose_changes_nothing_on_a_missing_schema(url: str, schema: str) -> None:
    store = PostgresStore(url)
    try:
        report = store.diagnose()
        assert (report.schema_version, report.schema_current) == (None, False)
        assert admin("SELECT to_regnamespace(%s)", (schema,)) == [(None,)]
    finally:
        store.close()


def test_migrations_run_forward_from_the_stored_version(schema: str) -> None:
    fresh = migration_sql(schema, 0)
    assert any("CREATE TABLE" in script and ".limits" in script for script in fresh)
    current = migration_sql(schema, SCHEMA_VERSION)
    assert not any("CREATE TABLE" in script for script in current)  # functions only
    assert all("@schema@" not in script for script in fresh)
    assert f"'{SCHEMA_VERSION}'" in fresh[-1]
    from_1 = migration_sql(schema, 1)  # schema 1 has landed: it is altered, not made again
    made_again = re.compile(r"CREATE TABLE \S+\.(meta|limits|leases|holdings|tickets|queue) \(")
    assert any(made_again.search(script) for script in fresh)
    assert not any(made_again.search(script) for script in from_1)
    assert any("ALTER TABLE" in script and "grants" in script for script in from_1)
    assert len(fresh) == len(from_1) + 1 == len(current) + SCHEMA_VERSION


def make_schema(schema: str, version: int) -> None:
    """A store as Sluice left it at schema ``version`` (1 or 2): those migrations' tables,
    the version, and (as stand-ins for its step functions) functions that are gone since."""
    s = f'"{schema}"'
    admin(f"CREATE SCHEMA {s}")
    for v in range(1, version + 1):
        script = resources.files("sluice.store.postgres").joinpath(f"sql/migrate_{v:03d}.sql")
        admin(script.read_text().replace("@schema@", s))
    admin(f"INSERT INTO {s}.meta (key, value) VALUES ('schema_version', '{version}')")
    admin(
        f"CREATE FUNCTION {s}.abandon(p_request_id text, p_process_id text) RETURNS jsonb"
        " LANGUAGE sql AS $$ SELECT '{\"old\": true}'::jsonb $$"
    )
    admin(
        f"CREATE FUNCTION {s}.release(p_lease_id text, p_process_id text) RETURNS jsonb"
        " LANGUAGE sql AS $$ SELECT '{\"old\": true}'::jsonb $$"
    )
    admin(
        f"CREATE FUNCTION {s}._take(p_id text, p_process_id text, p_holder text, p_host text,"
        " p_pid integer, p_occupy integer, p_kind text,"
        f" p_active {s}.limit_row[], p_missing text[], p_record_rate boolean,"
        " p_now double precision) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$"
    )


def add_old_holder_and_waiter(schema: str, waited: float) -> int:
    """Limit "db" (1 slot) held by lease "held" with ticket "waiting" queued behind it for
    ``waited`` seconds so far, and rate limit "api", as schema 1 or 2's steps wrote them;
    returns db's id."""
    s = f'"{schema}"'
    admin(
        f"INSERT INTO {s}.limits (name, slots, lease_ttl, in_use, created_at, updated_at)"
        " VALUES ('db', 1, 30, 1, 0, 0)"
    )
    admin(
        f"INSERT INTO {s}.limits (name, rate, burst, lease_ttl, created_at, updated_at)"
        " VALUES ('api', 100, 5, 30, 0, 0)"
    )
    [(db_id, now)] = admin(
        f"SELECT id, extract(epoch FROM clock_timestamp())::float8 FROM {s}.limits"
        " WHERE name = 'db'"
    )
    admin(
        f"INSERT INTO {s}.leases (id, limit_ids, names, kind, process_id, holder, host, pid,"
        " occupy, lease_ttl, acquired_at, expires_at) VALUES ('held', %s, '{db}', 'concurrency',"
        " 'old-process', 'worker', 'host-1', 1, 1, 30, %s, %s)",
        ([db_id], now - 5, now + 25),
    )
    admin(f"INSERT INTO {s}.holdings (limit_id, lease_id, units) VALUES (%s, 'held', 1)", (db_id,))
    admin(
        f"INSERT INTO {s}.tickets (seq, id, process_id, holder, host, pid, occupy, kind, names,"
        f" limit_count, lease_ttl, created_at, expires_at) VALUES (nextval('{s}.ticket_seq'),"
        " 'waiting', 'old-process', 'queued', 'host-1', 1, 1, 'concurrency', '{db}', 1, 30,"
        " %s, %s)",
        (now - waited, now + 28),
    )
    admin(
        f"INSERT INTO {s}.queue (limit_id, seq, ticket_id, occupy, kind)"
        f" SELECT %s, seq, id, occupy, kind FROM {s}.tickets WHERE id = 'waiting'",
        (db_id,),
    )
    return int(db_id)


def old_functions(schema: str) -> list[tuple[Any, ...]]:
    """Functions of versions before 3 that must be gone (or they would be stale overloads)."""
    return admin(
        "SELECT proname FROM pg_proc WHERE pronamespace = %s::regnamespace"
        " AND proname IN ('acquire', 'release', 'abandon', '_take', '_collect', '_queue')",
        (f'"{schema}"',),
    )


def test_a_schema_1_store_is_migrated_in_place_and_counts_totals_from_zero(
    url: str, schema: str
) -> None:
    make_schema(schema, 1)
    add_old_holder_and_waiter(schema, waited=2.0)
    s = f'"{schema}"'
    with Limits(url) as limits:
        status = limits.inspect("db")
        assert admin(f"SELECT value FROM {s}.meta WHERE key = 'schema_version'") == [
            (str(SCHEMA_VERSION),)
        ]
        assert SCHEMA_VERSION == 6
        assert status.limit == Limit("db", slots=1)
        assert [(h.lease_id, h.occupy, h.holder) for h in status.holders] == [("held", 1, "worker")]
        assert [(w.ticket_id, w.holder, w.count) for w in status.waiters] == [
            ("waiting", "queued", 1)
        ]
        assert status.totals == LimitTotals()
        assert limits.get("api") == Limit("api", rate=100, burst=5)
        assert limits.inspect("api").totals == LimitTotals()
        assert broken_invariants(schema) == {}

        # The waiter is handed the slot when the holder leaves: a grant that queued ~2 s,
        # counted when handed over, as a lease named <its ticket>.<fence> for it to claim.
        # (The releases come from a store object of their own: another process.)
        store = PostgresStore(url)
        assert store.exchange(Exchange(releases=("held",))).released == {"held": True}
        status = limits.inspect("db")
        [handed] = [h.lease_id for h in status.holders]
        assert handed.startswith("waiting.") and status.waiters == []
        t = status.totals
        assert (t.grants, t.granted_units, t.timeouts, t.expired_leases_reclaimed) == (1, 1, 0, 0)
        assert 2.0 <= t.wait_seconds < 10.0, t
        assert t.wait_buckets[wait_bucket(t.wait_seconds)] == 1 and sum(t.wait_buckets) == 1
        assert store.exchange(Exchange(releases=(handed,))).released == {handed: True}
        limits.acquire("db").release()  # at once: waited 0
        limits.rate_limit("api", occupy=3)
        held = limits.acquire("db")
        with pytest.raises(AcquireTimeout):
            limits.acquire("db", timeout=0)
        held.release()
        t = limits.inspect("db").totals
        assert (t.grants, t.granted_units, t.timeouts) == (3, 3, 1)
        assert t.wait_buckets[0] == 2 and sum(t.wait_buckets) == 3
        assert limits.inspect("api").totals.granted_units == 3
        report = store.diagnose()
        assert (report.schema_version, report.schema_current) == (SCHEMA_VERSION, True)
        store.close()
    assert old_functions(schema) == []
    assert broken_invariants(schema) == {}


def test_a_schema_2_store_is_migrated_in_place_keeping_its_holder_and_waiter(
    url: str, schema: str
) -> None:
    """A live version-2 holder and waiter survive the migration: the lease (named by its
    request id) is claimed and still held, the ticket wants one grant, and it is served."""
    make_schema(schema, 2)
    add_old_holder_and_waiter(schema, waited=1.0)
    s = f'"{schema}"'
    with Limits(url) as limits:
        status = limits.inspect("db")
        assert admin(f"SELECT value FROM {s}.meta WHERE key = 'schema_version'") == [
            (str(SCHEMA_VERSION),)
        ]
        assert [(h.lease_id, h.holder) for h in status.holders] == [("held", "worker")]
        assert [(w.ticket_id, w.holder, w.count, w.position) for w in status.waiters] == [
            ("waiting", "queued", 1, 1)
        ]
        assert admin(f"SELECT claimed, ticket_id FROM {s}.leases") == [(True, "")]
        assert admin(f"SELECT wanted, arrival_at, step FROM {s}.tickets") == [(1, [], None)]
        assert admin(f"SELECT stalled FROM {s}.queue") == [(False,)]
        assert broken_invariants(schema) == {}
        # The old holder's lease is renewed and kept like any other: ours is still held.
        renewal = store_of(limits).renew(["held"], [])
        assert renewal.lost_leases == frozenset() and set(renewal.expires_at) == {"held"}
        # A newcomer queues behind the old waiter, which keeps its place ...
        late = Waiter(limits, "db")  # (a thread named after its limit: its holder is "db")
        wait_until(lambda: len(limits.inspect("db").waiters) == 2, 5, "the newcomer to queue")
        assert [w.holder for w in limits.inspect("db").waiters] == ["queued", "db"]
        # ... and room for one more goes to the old waiter first, as a grant to claim.
        limits.update("db", slots=2)
        status = limits.inspect("db")
        assert sorted(h.holder for h in status.holders) == ["queued", "worker"]
        assert [w.holder for w in status.waiters] == ["db"]
        assert status.totals.grants == 1
        assert 1.0 <= status.totals.wait_seconds < 10.0
        # The old holder leaves (released by another process): the newcomer gets its slot.
        other = PostgresStore(url)
        assert other.exchange(Exchange(releases=("held",))).released == {"held": True}
        other.close()
        late.join(10)
        assert late.error is None, late.error
        late.lease.release()
        assert broken_invariants(schema) == {}
    assert old_functions(schema) == []


def test_the_wait_buckets_are_the_clients(url: str, schema: str) -> None:
    with Limits(url) as limits:
        limits.list()  # creates the schema
    waits = [0.0, 0.0005, *WAIT_BUCKETS, *(b * 1.0001 for b in WAIT_BUCKETS), 1e9]
    rows = admin(f'SELECT w, "{schema}"._wait_bucket(w) FROM unnest(%s::float8[]) AS w', (waits,))
    assert [(w, b - 1) for w, b in rows] == [(w, wait_bucket(w)) for w in waits]


def test_an_empty_schema_made_beforehand_is_filled(url: str, schema: str) -> None:
    admin(f'CREATE SCHEMA "{schema}"')
    with Limits(url) as limits:
        limits.create("db", slots=1)
        assert limits.list() == [Limit("db", slots=1)]


# --------------------------------------------------------------------------- asyncio


def test_the_async_front_door_runs_on_the_sync_stores_pool_from_any_event_loop(
    url: str, schema: str
) -> None:
    alimits = aio.Limits(url)
    assert isinstance(alimits._astore, ThreadedAsyncStore)
    store = alimits._astore.sync
    assert isinstance(store, PostgresStore)

    async def use(name: str) -> None:
        await alimits.create(name, slots=1)
        async with alimits.concurrency(name) as lease:
            status = await alimits.inspect(name)
            assert [h.lease_id for h in status.holders] == [lease.id]

    asyncio.run(use("first"))
    asyncio.run(use("second"))  # a new loop: the same store, the same connections
    assert len(connections(schema)) <= parse_url(url).pool_size + 1
    asyncio.run(alimits.aclose())
    assert store.closed


def test_many_wake_ups_for_one_process_arrive_in_chunks(url: str, schema: str) -> None:
    # 250 tickets woken by one step: more than one NOTIFY payload's worth. (Each waiter
    # has a holder of its own: waiters asking for the same thing share one ticket.)
    with Limits(url) as limits, Limits(f"{url}&application_name=other-{schema}") as other:
        other.create("db", slots=1)
        held = other.acquire("db")
        waiters = [Waiter(limits, "db", holder=f"waiter-{i}") for i in range(250)]
        wait_until(lambda: len(limits.inspect("db").waiters) == 250, 30, "250 waiters")
        started = time.monotonic()
        other.update("db", slots=251)  # one hand-off grants them all
        for waiter in waiters:
            waiter.join(20)
            assert waiter.error is None, waiter.error
        assert max(w.granted_at for w in waiters) - started < 10
        for waiter in waiters:
            waiter.lease.release()
        held.release()
        assert limits.inspect("db").in_use == 0


# --------------------------------------------------------------------------- exchange


def test_the_claim_window_is_the_clients(url: str, schema: str) -> None:
    with Limits(url) as limits:
        limits.list()  # creates the schema
    assert admin(f'SELECT "{schema}"._claim_window()') == [(CLAIM_WINDOW,)]


def test_a_release_while_the_server_refuses_connections_is_tried_again(schema: str) -> None:
    """A release that finds the server down for a moment (its connection cut, a new one
    refused) is tried again and frees its slot, instead of failing at once and leaving
    the slot held until its lease expires."""
    require_server("127.0.0.1", 5432, PG_HOW_TO_START)
    proxy = ReplyDropper(("127.0.0.1", 5432))
    through = (
        f"postgresql://postgres@127.0.0.1:{proxy.port}/test?schema={schema}"
        f"&listen_url={quote(PG_DSN, safe='')}"
    )
    try:
        with Limits(through) as limits, Limits(f"{PG_DSN}?schema={schema}") as other:
            limits.create("db", slots=1, lease_ttl=60)
            lease = limits.acquire("db")
            proxy.refuse()
            outcome: list[BaseException | None] = []

            def release() -> None:
                try:
                    lease.release()
                    outcome.append(None)
                except BaseException as exc:
                    outcome.append(exc)

            releasing = threading.Thread(target=release)
            releasing.start()
            wait_until(lambda: proxy.refused >= 1 or bool(outcome), 10, "a refused connection")
            proxy.serve()
            releasing.join(30)
            assert outcome == [None], f"the release failed: {outcome!r}"
            assert other.inspect("db").in_use == 0
    finally:
        proxy.close()


def test_a_lost_reply_is_asked_for_again_and_nothing_is_granted_twice(schema: str) -> None:
    """The server commits an exchange and its reply never arrives (a proxy loses it and
    the server connection is terminated): the store sends the same batch again, marked
    resent, and is answered what the first attempt did instead of it being done twice."""
    require_server("127.0.0.1", 5432, PG_HOW_TO_START)
    proxy = ReplyDropper(("127.0.0.1", 5432))
    # Steps go through the proxy; the listener straight to the server.
    store = PostgresStore(
        f"postgresql://postgres@127.0.0.1:{proxy.port}/test?schema={schema}"
        f"&listen_url={quote(PG_DSN, safe='')}"
    )
    other = PostgresStore(f"{PG_DSN}?schema={schema}")  # another process
    committed: list[list[str]] = []

    def lose_reply() -> None:
        # The server committed before it replied: what the step did is there already.
        [(leases,)] = admin(
            f"SELECT coalesce(array_agg(id ORDER BY id), '{{}}') FROM \"{schema}\".leases"
        )
        committed.append(leases)
        terminate(step_backends(schema))

    try:
        store.create_limit(Limit("db", slots=2))
        # A request for three on two slots, its reply lost: two grants and a ticket for one.
        first = AcquireRequest("lost-1", ("db",), count=3)
        proxy.arm(lose_reply)
        answer = store.exchange(Exchange(requests=(first,)))
        assert proxy.dropped == 1
        leases = sorted(g.lease_id for g in answer.grants if g.lease_id)
        assert committed == [leases] and all(lid.startswith("lost-1.") for lid in leases)
        assert answer.queued["lost-1"].wanted == 1
        status = store.inspect_limit("db")
        assert sorted(h.lease_id for h in status.holders) == leases
        assert [(w.ticket_id, w.count) for w in status.waiters] == [("lost-1", 1)]
        assert status.totals.grants == 2

        # A release whose slot goes to this process's own ticket, reply lost: the release
        # is reported done, and the grant it handed over is answered, once.
        proxy.arm(lose_reply)
        answer = store.exchange(Exchange(releases=(leases[0],)))
        assert proxy.dropped == 2
        assert answer.released == {leases[0]: True}
        [handed] = answer.grants
        assert handed.ticket_id == "lost-1" and handed.lease_id not in leases
        assert answer.queued == {}
        status = store.inspect_limit("db")
        held = sorted([leases[1], str(handed.lease_id)])
        assert committed[-1] == held == sorted(h.lease_id for h in status.holders)
        assert status.waiters == [] and status.totals.grants == 3

        # An ask that claims what another process's release handed to its ticket, reply
        # lost: the claim is answered again, and the ticket it served out is not opened
        # again for the grant it already had.
        second = AcquireRequest("lost-2", ("db",))
        queued = store.exchange(Exchange(requests=(second,))).queued["lost-2"]
        assert other.exchange(Exchange(releases=(leases[1],))).released == {leases[1]: True}
        proxy.arm(lose_reply)
        answer = store.exchange(Exchange(asks=(Ask("lost-2", second, queued.seq, 1),)))
        assert proxy.dropped == 3
        [claimed] = answer.grants
        assert claimed.ticket_id == "lost-2" and answer.queued == {}
        status = store.inspect_limit("db")
        assert sorted(h.lease_id for h in status.holders) == sorted(
            [str(handed.lease_id), str(claimed.lease_id)]
        )
        assert status.waiters == [] and status.totals.grants == 4
        assert admin(
            f'SELECT claimed FROM "{schema}".leases WHERE id = %s', (claimed.lease_id,)
        ) == [(True,)]

        # A request joining a ticket, reply lost: it joined once.
        store.exchange(Exchange(requests=(AcquireRequest("lost-3", ("db",), count=2),)))
        joining = AcquireRequest("lost-4", ("db",), count=3, join="lost-3")
        proxy.arm(lose_reply)
        answer = store.exchange(Exchange(requests=(joining,)))
        assert proxy.dropped == 4
        assert answer.joined == {"lost-4": "lost-3"} and answer.queued["lost-3"].wanted == 5
        # A withdrawal of two, reply lost: two are withdrawn (and two timeouts counted).
        proxy.arm(lose_reply)
        store.exchange(Exchange(withdrawals=(Withdrawal("lost-3", 2, timed_out_on="db"),)))
        assert proxy.dropped == 5
        status = store.inspect_limit("db")
        assert [(w.ticket_id, w.count) for w in status.waiters] == [("lost-3", 3)]
        assert status.totals.timeouts == 2 and status.totals.grants == 4
        assert broken_invariants(schema) == {}
    finally:
        store.close()
        other.close()
        proxy.close()


@pytest.mark.parametrize("claim_window", [1000.0, 0.0], ids=["claimed", "lapsing"])
def test_exchanges_do_what_they_do_on_the_sqlite_reference(
    schema: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, claim_window: float
) -> None:
    """Random exchange sequences of two processes on both stores: the same answers, the
    same tables. ("lapsing": every grant handed to another process lapses unclaimed at
    the next step that looks, so lapses, stalls and reopened tickets are compared too.)"""
    require_server("127.0.0.1", 5432, PG_HOW_TO_START)
    monkeypatch.setattr(sqlite_engine, "CLAIM_WINDOW", claim_window)
    parity = Parity(str(tmp_path / "reference.db"), PG_DSN, schema)
    admin(
        f'CREATE OR REPLACE FUNCTION "{schema}"._claim_window() RETURNS double precision'
        f" LANGUAGE sql IMMUTABLE AS $$ SELECT {claim_window}::double precision $$"
    )
    try:
        for seed in range(3):
            assert parity.run(seed, 200) == []
    finally:
        parity.close()


def test_more_waiters_than_connections_all_get_through_and_never_exceed(schema: str) -> None:
    """300 threads and 300 coroutines of one process on 5 slots, with 2 step connections:
    every one is served, never more than 5 at once, on at most 2 + 1 connections."""
    require_server("127.0.0.1", 5432, PG_HOW_TO_START)
    pool_size, slots, crowd = 2, 5, 300
    url = f"{PG_DSN}?schema={schema}&pool_size={pool_size}"
    intervals: list[tuple[float, float, int]] = []
    errors: list[BaseException] = []
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:  # the process's connections, sampled all along
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name IN (%s, %s)",
                    (f"sluice/{schema}", f"sluice/{schema}:listen"),
                ).fetchone()
                seen.append(int(row[0]) if row else 0)
                time.sleep(0.005)

    with Limits(url) as limits:
        limits.create("db", slots=slots)
        start = threading.Barrier(crowd + 1)

        def thread(i: int) -> None:
            try:
                start.wait(30)
                with limits.concurrency("db", holder=f"thread-{i % 7}", timeout=60):
                    began = time.monotonic()
                    time.sleep(0.001)
                    intervals.append((began, time.monotonic(), 1))
            except BaseException as exc:
                errors.append(exc)

        async def coroutines() -> None:
            alimits = aio.Limits(url)  # the same store: the same pool

            async def one(i: int) -> None:
                async with alimits.concurrency("db", holder=f"task-{i % 3}", timeout=60):
                    began = time.monotonic()
                    await asyncio.sleep(0.001)
                    intervals.append((began, time.monotonic(), 1))

            try:
                start.wait(30)
                results = await asyncio.gather(
                    *(one(i) for i in range(crowd)), return_exceptions=True
                )
                errors.extend(r for r in results if isinstance(r, BaseException))
            finally:
                await alimits.aclose()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        threads = [threading.Thread(target=thread, args=(i,)) for i in range(crowd)]
        threads.append(threading.Thread(target=lambda: asyncio.run(coroutines())))
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        stop.set()
        watcher.join(5)
        assert not errors, errors[:3]
        assert len(intervals) == 2 * crowd
        assert peak_units(intervals)[0] <= slots
        assert seen and max(seen) <= pool_size + 1, max(seen)
        status = limits.inspect("db")
        assert (status.in_use, status.waiters) == (0, [])
        assert status.totals.grants == 2 * crowd
        assert broken_invariants(schema) == {}


# --------------------------------------------------------------------------- internal invariants


def broken_invariants(schema: str) -> dict[str, list[Any]]:
    """What in the schema's tables contradicts what the steps keep true (empty: all good)."""
    s = f'"{schema}"'
    checks = {
        "queue rows without a ticket": f"SELECT q.* FROM {s}.queue q"
        f" LEFT JOIN {s}.tickets t ON t.id = q.ticket_id WHERE t.id IS NULL",
        "holdings without a lease": f"SELECT h.* FROM {s}.holdings h"
        f" LEFT JOIN {s}.leases l ON l.id = h.lease_id WHERE l.id IS NULL",
        "in_use not the sum of holdings": f"SELECT l.name, l.in_use, coalesce(sum(h.units), 0)"
        f" FROM {s}.limits l LEFT JOIN {s}.holdings h ON h.limit_id = l.id"
        " GROUP BY l.id HAVING l.in_use <> coalesce(sum(h.units), 0)",
        "limit_count not the queues a ticket is in": f"SELECT t.id, t.limit_count, count(q.*)"
        f" FROM {s}.tickets t LEFT JOIN {s}.queue q ON q.ticket_id = t.id"
        " GROUP BY t.seq HAVING t.limit_count <> count(q.*)",
        "queue seq not its ticket's": f"SELECT q.* FROM {s}.queue q"
        f" JOIN {s}.tickets t ON t.id = q.ticket_id WHERE q.seq <> t.seq",
        "tickets wanting nothing": f"SELECT id, wanted FROM {s}.tickets WHERE wanted <= 0",
        "arrivals not adding up to wanted": f"SELECT id, wanted, arrival_n FROM {s}.tickets"
        " WHERE cardinality(arrival_at) > 0 AND (cardinality(arrival_at) <> cardinality(arrival_n)"
        " OR wanted <> (SELECT sum(n) FROM unnest(arrival_n) n))",
        "leases of a ticket not named after it": f"SELECT id, ticket_id FROM {s}.leases"
        " WHERE ticket_id <> '' AND left(id, length(ticket_id) + 1) <> ticket_id || '.'",
    }
    found = {what: admin(sql) for what, sql in checks.items()}
    return {what: rows for what, rows in found.items() if rows}


def test_enabling_a_limit_while_its_waiters_give_up_leaves_no_orphans(
    url: str, schema: str
) -> None:
    with Limits(url) as limits:
        limits.create("a", slots=1)
        limits.create("b", slots=1)
        held = limits.acquire("b")
        stop = time.monotonic() + 3.0
        errors: list[BaseException] = []

        def give_up() -> None:
            while time.monotonic() < stop:
                try:
                    limits.acquire(["a", "b"], timeout=0.01).release()
                except Exception as exc:
                    if type(exc).__name__ != "AcquireTimeout":
                        errors.append(exc)

        def toggle() -> None:
            while time.monotonic() < stop:
                limits.disable("a")
                limits.enable("a")

        threads = [threading.Thread(target=give_up) for _ in range(4)]
        threads.append(threading.Thread(target=toggle))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert not errors, errors
        held.release()
        assert broken_invariants(schema) == {}
        assert limits.inspect("a").waiters == [] and limits.inspect("b").waiters == []
