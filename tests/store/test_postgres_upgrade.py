"""The PostgreSQL store's schema 4, upgraded in place from what schema 3 left behind.

Schema 4 changed no table's columns: ``leases_by_ticket`` covers every lease (a
generic plan cannot use the partial index schema 3 had), ``_valid``'s result type
changed and ``_grant`` takes one more parameter, so the old ones must go before the
step functions are installed again. A store is made now, turned back into what
schema 3 left (that index, those functions as they were, version 3) with a holder
and a waiter of two live processes, and a process of this version arrives: the
schema is upgraded, both keep their places, and the waiter is served when the holder
leaves. Every test uses its own schema.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from conftest import PG_DSN, PG_HOW_TO_START, drop_pg_schema, require_module, require_server
from sluice.limits.model import Limit
from sluice.store.base import AcquireRequest, Ask, Exchange

psycopg = require_module("psycopg", "postgres")

from sluice.store.postgres.config import SCHEMA_VERSION  # noqa: E402
from sluice.store.postgres.store import PostgresStore  # noqa: E402

from .test_postgres import admin, broken_invariants  # noqa: E402

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


def as_schema_3(schema: str) -> None:
    """Turn the schema's objects back into schema 3's, keeping every row (schema 5's
    record of held units and schema 6's audit record did not exist yet)."""
    s = f'"{schema}"'
    admin(f"DROP TABLE {s}.held")
    admin(f"DROP TABLE {s}.admin")
    admin(f"DROP INDEX {s}.leases_by_ticket")
    admin(f"CREATE INDEX leases_by_ticket ON {s}.leases (ticket_id) WHERE ticket_id <> ''")
    admin(f"DROP FUNCTION {s}._valid({s}.step_state, jsonb)")
    admin(
        f"CREATE FUNCTION {s}._valid(INOUT s {s}.step_state, p_request jsonb,"
        f" OUT active {s}.limit_row[]) LANGUAGE plpgsql AS $$ BEGIN END $$"
    )
    old_grant = (
        f"text, bigint, text, text, text, integer, integer, text, {s}.limit_row[], text[],"
        " boolean, bigint, double precision, double precision"
    )
    admin(f"DROP FUNCTION {s}._grant({old_grant}, boolean)")
    admin(
        f"CREATE FUNCTION {s}._grant({old_grant}) RETURNS jsonb"
        " LANGUAGE sql AS $$ SELECT '{}'::jsonb $$"
    )
    admin(f"UPDATE {s}.meta SET value = '3' WHERE key = 'schema_version'")


def test_a_schema_3_store_is_upgraded_in_place_keeping_its_holder_and_waiter(
    schema: str,
) -> None:
    url = f"{PG_DSN}?schema={schema}"
    s = f'"{schema}"'
    holder, waiter = PostgresStore(url), PostgresStore(url)  # two processes
    request = AcquireRequest("waiting", ("db",), holder="queued")
    try:
        holder.create_limit(Limit("db", slots=1))
        [held] = holder.exchange(Exchange(requests=(AcquireRequest("held", ("db",)),))).grants
        queued = waiter.exchange(Exchange(requests=(request,))).queued["waiting"]
        as_schema_3(schema)

        arriving = PostgresStore(url)  # this version: it upgrades the store on first use
        try:
            status = arriving.inspect_limit("db")
        finally:
            arriving.close()
        assert SCHEMA_VERSION == 6
        assert admin(f"SELECT value FROM {s}.meta WHERE key = 'schema_version'") == [("6",)]
        [(index,)] = admin(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = %s"
            " AND indexname = 'leases_by_ticket'",
            (schema,),
        )
        assert "WHERE" not in index
        [(arguments,)] = admin(  # the new _valid only, the old one gone
            "SELECT p.proargnames FROM pg_proc p"
            " WHERE p.pronamespace = %s::regnamespace AND p.proname = '_valid'",
            (s,),
        )
        assert arguments == ["s", "p_request", "active", "missing"]
        overloaded = admin(
            "SELECT proname FROM pg_proc WHERE pronamespace = %s::regnamespace"
            " GROUP BY proname HAVING count(*) > 1",
            (s,),
        )
        assert overloaded == []
        assert [h.lease_id for h in status.holders] == [held.lease_id]
        assert [(w.ticket_id, w.holder, w.position) for w in status.waiters] == [
            ("waiting", "queued", 1)
        ]
        assert broken_invariants(schema) == {}

        # The processes that were running go on, on the new step functions: the holder
        # leaves, its slot is handed to the waiter, which claims it by asking.
        released = holder.exchange(Exchange(releases=(str(held.lease_id),)))
        assert released.released == {held.lease_id: True} and released.grants == ()
        [span] = holder.held_spans(["db"], 0.0, holder.now() + 1)  # schema 5's record
        assert (span.lease_id, span.released_at is not None) == (held.lease_id, True)
        answer = waiter.exchange(Exchange(asks=(Ask("waiting", request, queued.seq, 1),)))
        [granted] = answer.grants
        assert granted.ticket_id == "waiting" and answer.queued == {}
        status = holder.inspect_limit("db")
        assert [h.lease_id for h in status.holders] == [granted.lease_id]
        assert status.waiters == [] and status.totals.grants == 2
        assert broken_invariants(schema) == {}
    finally:
        holder.close()
        waiter.close()
