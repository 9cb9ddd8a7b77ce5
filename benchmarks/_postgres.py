"""PostgreSQL helpers for the benchmarks: a throw-away schema and the same-run raw baselines.

The server is ``SLUICE_BENCH_PG`` (default ``postgresql://postgres@127.0.0.1:5432/test``).
Each benchmark runs its SQLite section first, then, if the server answers, the same
measurement on a PostgreSQL store in a fresh schema (dropped afterwards), next to
raw psycopg baselines measured in the same run:

* one autocommit ``UPDATE ... RETURNING`` of one row: the floor for one store step;
* one NOTIFY -> receive round trip between two connections: the floor for a wake-up.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

__all__ = [
    "PG_DSN",
    "notify_roundtrips",
    "pg_unavailable",
    "pg_version",
    "raw_pg_update",
    "skip_note",
    "temp_pg_url",
    "update_latencies",
]

PG_DSN = os.environ.get("SLUICE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def pg_unavailable() -> str | None:
    """Why the PostgreSQL section cannot run here, or None if it can."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed: pip install 'sluice[postgres]'"
    parts = urlsplit(PG_DSN)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), 1.0):
            return None
    except OSError as exc:
        return f"no PostgreSQL server at {parts.hostname}:{parts.port or 5432} ({exc})"


def skip_note(reason: str) -> None:
    """Say that the PostgreSQL section was skipped, and why."""
    print(f"\nPostgreSQL section skipped: {reason} (set SLUICE_BENCH_PG to a server URL)")


def pg_version() -> str:
    """The server's version, for the table footer."""
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def _with_options(dsn: str, options: str) -> str:
    if not options:
        return dsn
    sep = "&" if "?" in dsn else "?"
    return f"{dsn}{sep}options={options.replace(' ', '%20').replace('=', '%3D')}"


@contextmanager
def temp_pg_url(prefix: str, options: str = "") -> Iterator[str]:
    """Yield the URL of a PostgreSQL store in a fresh schema, dropped afterwards.

    ``options`` (e.g. ``-c synchronous_commit=off``) goes to every connection.
    """
    import psycopg

    schema = f"sluice_bench_{prefix}_{uuid.uuid4().hex[:8]}"
    base = _with_options(PG_DSN, options)
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}schema={schema}"
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
                (f"%{schema}%",),
            )
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def raw_pg_update(options: str = "") -> Iterator[Callable[[], None]]:
    """Yield a function that runs one autocommit ``UPDATE ... RETURNING`` of one row.

    One round trip and one commit, on a table in a throw-away schema, with the
    same connection options the store under comparison uses.
    """
    import psycopg

    schema = f"sluice_bench_raw_{uuid.uuid4().hex[:8]}"
    conn = psycopg.connect(_with_options(PG_DSN, options), autocommit=True)
    try:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".counter (id integer PRIMARY KEY, n bigint)')
        conn.execute(f'INSERT INTO "{schema}".counter VALUES (1, 0)')
        sql = f'UPDATE "{schema}".counter SET n = n + 1 WHERE id = 1 RETURNING n'

        def update() -> None:
            conn.execute(sql).fetchone()

        yield update
    finally:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.close()


def notify_roundtrips(count: int, warmup: int = 20) -> list[float]:
    """Seconds from ``SELECT pg_notify(...)`` on one connection to its arrival on another.

    The receiver is a thread blocked in select() on its LISTEN connection, as
    the store's listener is; the sender waits for each arrival before the next.
    """
    import psycopg

    channel = f"sluice_bench_{uuid.uuid4().hex[:12]}"
    listener = psycopg.connect(PG_DSN, autocommit=True)
    sender = psycopg.connect(PG_DSN, autocommit=True)
    listener.execute(f'LISTEN "{channel}"')
    arrived: list[float] = []
    got = threading.Semaphore(0)
    stop = threading.Event()

    def receive() -> None:
        pgconn = listener.pgconn
        while not stop.is_set():
            readable, _, _ = select.select([pgconn.socket], [], [], 0.2)
            if not readable:
                continue
            pgconn.consume_input()
            while pgconn.notifies() is not None:
                arrived.append(time.monotonic())
                got.release()

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    samples: list[float] = []
    try:
        for i in range(warmup + count):
            sent = time.monotonic()
            sender.execute("SELECT pg_notify(%s, 'x')", (channel,))
            if not got.acquire(timeout=10):
                raise RuntimeError("a NOTIFY never arrived")
            if i >= warmup:
                samples.append(arrived[-1] - sent)
    finally:
        stop.set()
        thread.join(2)
        sender.close()
        listener.close()
    return samples


def update_latencies(count: int, options: str = "") -> list[float]:
    """Seconds taken by each of ``count`` raw ``UPDATE ... RETURNING`` round trips."""
    samples: list[float] = []
    with raw_pg_update(options) as update:
        for _ in range(50):
            update()
        for _ in range(count):
            t = time.perf_counter()
            update()
            samples.append(time.perf_counter() - t)
    return samples
