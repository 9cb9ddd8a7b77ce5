"""The Redis store beyond the conformance suite: URLs, keys, scripts, lost connections, restarts.

Against the real server on 127.0.0.1:6379; the restart tests start their own
``redis-server`` on a free loopback port and stop it by its PID.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from conformance._helpers import Attempt, wait_for_waiters, wait_until
from conftest import REDIS_HOST, REDIS_PORT, REDIS_START, require_server
from sluice import Limits, aio
from sluice.errors import (
    AcquireTimeout,
    ConfigError,
    LeaseLost,
    LimitNotFound,
    StoreError,
    StoreUnavailable,
)
from sluice.store import acquire_store, release_store

if TYPE_CHECKING:
    from redis import Redis

redis = pytest.importorskip("redis", reason="the Redis store needs: pip install 'sluice[redis]'")

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own on the shared server, its keys deleted afterwards."""
    require_server(REDIS_HOST, REDIS_PORT, REDIS_START)
    name = f"sluice-test-{uuid.uuid4().hex[:12]}"
    yield name
    with redis.Redis(REDIS_HOST, REDIS_PORT) as client:
        keys = list(client.scan_iter(match=f"{{{name}}}:*", count=1000))
        if keys:
            client.delete(*keys)


def _url(prefix: str, host: str = REDIS_HOST, port: int = REDIS_PORT) -> str:
    return f"redis://{host}:{port}/0?prefix={prefix}"


def _our_clients(client: Redis, process_id: str) -> list[dict[str, str]]:
    return [c for c in client.client_list() if c.get("name") == f"sluice:{process_id}"]


# --------------------------------------------------------------------------- URLs and keys


def test_the_password_comes_from_the_url_and_never_shows(own_redis: OwnRedis) -> None:
    own_redis.restart_with("--requirepass", "hunter2")
    good = f"redis://:hunter2@127.0.0.1:{own_redis.port}/0"
    with Limits(good) as limits:
        assert limits.url == f"redis://:***@127.0.0.1:{own_redis.port}/0"
        limits.create("db", slots=1)
        limits.acquire("db").release()
    with (
        Limits(good.replace("hunter2", "wrong-one")) as limits,
        pytest.raises(StoreError) as caught,
    ):
        limits.list()
    assert "wrong-one" not in str(caught.value)
    assert "***" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis://127.0.0.1:6379/0?prefix=a{b}", ["prefix", "'a{b}'"]),
        ("redis://127.0.0.1:6379/0?prefix=", ["prefix", "''"]),
        ("redis://127.0.0.1:6379/zero", ["database", "'zero'"]),
        ("redis:///0", ["host"]),
        ("redis://127.0.0.1:notaport/0", ["invalid Redis URL"]),
    ],
)
def test_a_bad_redis_url_is_a_config_error_naming_the_value(url: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        Limits(url)
    for word in words:
        assert word in str(caught.value)


def test_an_unreachable_server_is_store_unavailable_without_the_password() -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Limits(f"redis://:s3cret@127.0.0.1:{port}/0") as limits:
        with pytest.raises(StoreUnavailable) as caught:
            limits.list()
        assert "s3cret" not in str(caught.value)
        assert f"127.0.0.1:{port}" in str(caught.value)


def test_a_missing_driver_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis now fails
    monkeypatch.delitem(sys.modules, "sluice.store.redis.store", raising=False)
    with pytest.raises(ConfigError, match=r"pip install 'sluice\[redis\]'"):
        acquire_store("redis://127.0.0.1:6379/0?prefix=never-opened")


def test_every_key_shares_the_deployment_hash_tag(prefix: str) -> None:
    with Limits(_url(prefix)) as limits:
        limits.create("db", slots=1, rate=5.0)
        held = limits.acquire("db")
        waiter = Attempt(limits, "db").start()
        wait_for_waiters(limits, "db", 1)
        with redis.Redis(REDIS_HOST, REDIS_PORT, decode_responses=True) as client:
            ours = [k for k in client.scan_iter(count=1000) if prefix in k]
        held.release()
        waiter.result().release()
    kinds = {key.split(":")[1] for key in ours}
    assert {"meta", "limits", "l", "h", "he", "q", "qe", "lease", "t", "tot"} <= kinds, kinds
    assert all(key.startswith(f"{{{prefix}}}:") for key in ours), ours


def test_two_prefixes_on_one_server_are_separate_deployments(prefix: str) -> None:
    other = f"{prefix}-other"
    try:
        with Limits(_url(prefix)) as a, Limits(_url(other)) as b:
            a.create("db", slots=1)
            b.create("db", slots=5)
            held = a.acquire("db")
            assert b.inspect("db").in_use == 0
            assert [lim.slots for lim in b.list()] == [5]
            held.release()
    finally:
        with redis.Redis(REDIS_HOST, REDIS_PORT) as client:
            keys = list(client.scan_iter(match=f"{{{other}}}:*"))
            if keys:
                client.delete(*keys)


# --------------------------------------------------------------------------- scripts


def test_scripts_are_reloaded_after_script_flush(prefix: str) -> None:
    with Limits(_url(prefix)) as limits:
        limits.create("db", slots=1)
        limits.acquire("db").release()
        with redis.Redis(REDIS_HOST, REDIS_PORT) as client:
            client.script_flush()
        lease = limits.acquire("db", timeout=0)
        assert limits.inspect("db").in_use == 1
        lease.release()
        assert limits.inspect("db").in_use == 0


def test_the_async_store_reloads_scripts_too(prefix: str) -> None:
    async def main() -> int:
        async with aio.Limits(_url(prefix)) as limits:
            await limits.create("db", slots=2)
            async with limits.concurrency("db"):
                pass
            with redis.Redis(REDIS_HOST, REDIS_PORT) as client:
                client.script_flush()
            async with limits.concurrency("db", occupy=2):
                return (await limits.inspect("db")).in_use

    assert asyncio.run(main()) == 2


def test_the_async_store_is_native_and_serves_several_event_loops(prefix: str) -> None:
    from sluice.store.redis.store import RedisAsyncStore

    async def once(limits: aio.Limits) -> int:
        assert isinstance(limits._astore, RedisAsyncStore)
        async with limits.concurrency("db"):
            return (await limits.inspect("db")).in_use

    with Limits(_url(prefix)) as sync_limits:
        sync_limits.create("db", slots=1)
        for _ in range(3):  # a fresh event loop each time, as asyncio.run makes

            async def run() -> int:
                async with aio.Limits(_url(prefix)) as limits:
                    return await once(limits)

            assert asyncio.run(run()) == 1
        assert sync_limits.inspect("db").in_use == 0


# --------------------------------------------------------------------------- lost connections


def test_a_killed_listener_connection_still_lets_the_waiter_through(prefix: str) -> None:
    # Two stores on one deployment (different URL spellings): two processes, as far
    # as Redis can tell, so the wake-up must travel by pub/sub.
    with Limits(_url(prefix)) as holder_side, Limits(_url(prefix, host="localhost")) as waiter_side:
        holder_side.create("db", slots=1)
        held = holder_side.acquire("db")
        waiter = Attempt(waiter_side, "db", timeout=30).start()
        wait_for_waiters(holder_side, "db", 1)
        process_id = waiter_side._store.process_id  # type: ignore[attr-defined]
        with redis.Redis(REDIS_HOST, REDIS_PORT, decode_responses=True) as client:
            listeners = [c for c in _our_clients(client, process_id) if "P" in str(c["flags"])]
            assert len(listeners) == 1, _our_clients(client, process_id)
            client.client_kill_filter(_id=listeners[0]["id"])
        released_at = time.monotonic()
        held.release()
        lease = waiter.result(timeout=10)
        assert waiter.granted_at is not None
        took = waiter.granted_at - released_at
        # Well below the 10 s safety re-check: the listener came back and woke it.
        assert took < 3.0, f"the waiter got in {took:.2f}s after the release"
        lease.release()


def test_killed_command_connections_are_reopened_transparently(prefix: str) -> None:
    with Limits(_url(prefix)) as holder_side, Limits(_url(prefix, host="localhost")) as waiter_side:
        holder_side.create("db", slots=1)
        held = holder_side.acquire("db")
        waiter = Attempt(waiter_side, "db", timeout=30).start()
        wait_for_waiters(holder_side, "db", 1)
        with redis.Redis(REDIS_HOST, REDIS_PORT, decode_responses=True) as client:
            for store in (holder_side._store, waiter_side._store):
                for conn in _our_clients(client, store.process_id):  # type: ignore[attr-defined]
                    client.client_kill_filter(_id=conn["id"])
        held.release()  # over a fresh connection
        lease = waiter.result(timeout=10)
        assert holder_side.inspect("db").in_use == 1
        lease.release()
        assert holder_side.inspect("db").in_use == 0


def test_an_acquire_sent_again_after_a_lost_reply_takes_nothing_twice(prefix: str) -> None:
    # What a resend after a connection error looks like to the server: the same
    # request id, marked as resent. It must find the grant the first one made.
    from sluice.store.base import AcquireRequest, Granted

    with Limits(_url(prefix)) as limits:
        limits.create("db", slots=3)
        store = limits._store
        request = AcquireRequest("lost-reply-1", ("db",), occupy=2)
        first = store.acquire(request)
        assert isinstance(first, Granted)
        again = store._drive(store.engine.acquire(request, resent=True))  # type: ignore[attr-defined]
        assert isinstance(again, Granted)
        assert again.lease_id == "lost-reply-1"
        assert limits.inspect("db").in_use == 2
        queued = store.acquire(AcquireRequest("lost-reply-2", ("db",), occupy=2))
        assert not isinstance(queued, Granted)
        store._drive(  # type: ignore[attr-defined]
            store.engine.acquire(  # type: ignore[attr-defined]
                AcquireRequest("lost-reply-2", ("db",), occupy=2), resent=True
            )
        )
        status = limits.inspect("db")
        assert [w.ticket_id for w in status.waiters] == ["lost-reply-2"]  # one place, not two
        assert store.release("lost-reply-1")
        assert [h.lease_id for h in limits.inspect("db").holders] == ["lost-reply-2"]
        assert store.release("lost-reply-2")
        assert limits.inspect("db").in_use == 0


# --------------------------------------------------------------------------- totals


def test_the_scripts_bucket_waits_as_the_model_does(prefix: str) -> None:
    from sluice.limits.model import WAIT_BUCKETS, wait_bucket
    from sluice.store.redis.config import Scripts

    lib = Scripts.source("abandon").split("\n-- abandon:", 1)[0]  # _lib.lua as the steps see it
    waits = [0.0, *WAIT_BUCKETS, *(b * 1.0001 for b in WAIT_BUCKETS), 1e9]
    probe = "\n".join(
        [
            lib,
            "local out = {}",
            "for i = 3, #ARGV do out[i - 2] = wait_bucket(tonumber(ARGV[i])) end",
            "return cjson.encode(out)",
        ]
    )
    with redis.Redis(REDIS_HOST, REDIS_PORT, decode_responses=True) as client:
        raw = client.eval(probe, 1, f"{{{prefix}}}:meta", "probe", "", *map(repr, waits))
    assert json.loads(raw) == [wait_bucket(w) for w in waits]


def test_totals_live_in_one_hash_per_limit_as_long_as_the_limit(prefix: str) -> None:
    from sluice.limits.model import LimitTotals

    key = f"{{{prefix}}}:tot:db"
    with (
        Limits(_url(prefix)) as limits,
        redis.Redis(REDIS_HOST, REDIS_PORT, decode_responses=True) as client,
    ):
        limits.create("db", slots=2)
        limits.acquire("db", occupy=2).release()
        assert client.hgetall(key) == {"grants": "1", "granted_units": "2"}  # a grant at once
        assert client.ttl(key) == -1  # no expiry, like the limit's own hash
        client.script_flush()  # totals are data: reloading the scripts keeps them
        limits.acquire("db").release()
        t = limits.inspect("db").totals
        assert (t.grants, t.granted_units) == (2, 3)
        limits.update("db", slots=3)
        limits.reset("db")
        assert limits.inspect("db").totals.grants == 2
        limits.delete("db")
        assert not client.exists(key)
        client.hset(key, mapping={"grants": 7})  # left behind by a Sluice that kept no totals
        limits.create("db", slots=2)
        assert limits.inspect("db").totals == LimitTotals()


def test_a_handed_off_grant_counts_once_and_a_lapsed_one_as_reclaimed(prefix: str) -> None:
    from sluice.store.base import AcquireRequest, Granted, Queued

    with Limits(_url(prefix)) as limits:
        limits.create("db", slots=1, lease_ttl=1)
        store = limits._store
        for waiter, late in (("w-in-time", False), ("w-late", True)):
            holder = store.acquire(AcquireRequest(f"h-{waiter}", ("db",)))
            assert isinstance(holder, Granted)
            queued = store.acquire(AcquireRequest(waiter, ("db",)))
            assert isinstance(queued, Queued)
            assert store.release(f"h-{waiter}")  # hands the slot to the waiter
            if late:
                time.sleep(1.2)  # its TTL lapses before it collects: revoked, reclaimed
            store.engine.handed.clear()  # type: ignore[attr-defined]  # collect from the store
            collected = store.acquire(AcquireRequest(waiter, ("db",), seq=queued.seq))
            if isinstance(collected, Queued):  # late: queued anew and handed the slot at once
                collected = store.acquire(AcquireRequest(waiter, ("db",), seq=collected.seq))
            assert isinstance(collected, Granted)
            assert store.release(waiter)
        t = limits.inspect("db").totals
        # Two holders and two hand-offs, plus the late waiter's grant anew once its
        # lapsed grant was revoked; collecting a grant (in time) adds nothing.
        assert (t.grants, t.expired_leases_reclaimed, t.timeouts) == (5, 1, 0)
        assert sum(t.wait_buckets) == 5
        assert t.wait_seconds < 1.0  # counted when handed, not when (late) collected


def test_an_abandon_sent_again_after_a_lost_reply_counts_one_timeout(prefix: str) -> None:
    from sluice.store.base import AcquireRequest, Granted, Queued

    with (
        Limits(_url(prefix)) as limits,
        redis.Redis(REDIS_HOST, REDIS_PORT, decode_responses=True) as client,
    ):
        limits.create("db", slots=1)
        store = limits._store
        assert isinstance(store.acquire(AcquireRequest("holder", ("db",))), Granted)
        assert isinstance(store.acquire(AcquireRequest("gave-up", ("db",))), Queued)
        store.abandon("gave-up", timed_out_on="db")
        store._drive(store.engine.abandon("gave-up", "db", resent=True))  # type: ignore[attr-defined]
        assert limits.inspect("db").totals.timeouts == 1
        store.abandon("gave-up-too", timed_out_on="nope")  # no such limit: nothing counted
        assert not client.exists(f"{{{prefix}}}:tot:nope")
        assert store.release("holder")
        assert limits.inspect("db").totals.timeouts == 1


# --------------------------------------------------------------------------- restarts


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OwnRedis:
    """A redis-server of this test's own, on a free loopback port; stopped by its PID."""

    def __init__(self, directory: Path, persistent: bool) -> None:
        self.port = _free_port()
        self.directory = directory
        self.persistent = persistent
        self.extra: tuple[str, ...] = ()
        self.proc: subprocess.Popen[bytes] | None = None

    def restart_with(self, *extra: str) -> None:
        """Start again with extra server options (e.g. ``--requirepass``)."""
        self.kill()
        self.extra = extra
        self.start()

    def start(self) -> None:
        args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        args += list(self.extra)
        args += ["--dir", str(self.directory)]
        if self.persistent:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        require_server("127.0.0.1", 1, "install redis-server (Debian: apt install redis-server)")
    server = OwnRedis(tmp_path, persistent=bool(getattr(request, "param", False)))
    server.start()
    try:
        yield server
    finally:
        server.kill()


def test_a_restart_without_persistence_tells_holders_and_waiters(own_redis: OwnRedis) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    with Limits(url) as holder_side, Limits(url.replace("127.0.0.1", "localhost")) as waiter_side:
        holder_side.create("db", slots=1, lease_ttl=3)
        lease = holder_side.acquire("db")
        waiter = Attempt(waiter_side, "db", timeout=30).start()
        wait_for_waiters(holder_side, "db", 1)

        own_redis.kill()
        time.sleep(0.5)  # the waiter keeps waiting through the outage
        assert not waiter.done.is_set()
        own_redis.start()  # empty: the limit, the lease and the queue are gone

        # The holder learns at its next renewal that its lease is gone...
        wait_until(lambda: lease.lost, 5.0, "the holder to learn its lease is gone")
        with pytest.raises(LeaseLost):
            lease.release()
        # ...and the waiter is told the limit no longer exists, never silently let in.
        assert waiter.done.wait(15), "the waiter never finished"
        assert isinstance(waiter.error, LimitNotFound), waiter.error
        assert waiter.lease is None


@pytest.mark.parametrize("own_redis", [True], indirect=True, ids=["aof"])
def test_a_restart_with_persistence_keeps_holders_and_waiters(own_redis: OwnRedis) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    with Limits(url) as holder_side, Limits(url.replace("127.0.0.1", "localhost")) as waiter_side:
        holder_side.create("db", slots=1, lease_ttl=10)
        lease = holder_side.acquire("db")
        waiter = Attempt(waiter_side, "db", timeout=30).start()
        wait_for_waiters(holder_side, "db", 1)

        own_redis.kill()
        time.sleep(1.0)
        own_redis.start()  # the AOF brings back the limit, the lease and the queue

        status = wait_until(lambda: holder_side.inspect("db"), 5.0, "the store to answer")
        assert [h.lease_id for h in status.holders] == [lease.id]
        assert len(status.waiters) == 1
        assert not waiter.done.is_set()
        lease.release()  # no LeaseLost: it was held all along
        handed = waiter.result(timeout=15)
        assert holder_side.inspect("db").in_use == 1
        handed.release()


def test_a_waiters_timeout_still_holds_while_redis_is_down(own_redis: OwnRedis) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    with Limits(url) as holder_side, Limits(url.replace("127.0.0.1", "localhost")) as waiter_side:
        holder_side.create("db", slots=1)
        held = holder_side.acquire("db")
        waiter = Attempt(waiter_side, "db", timeout=2.0).start()
        wait_for_waiters(holder_side, "db", 1)
        own_redis.kill()
        assert waiter.done.wait(10), "the waiter outlived its timeout"
        assert isinstance(waiter.error, AcquireTimeout), repr(waiter.error)
        assert waiter.finished_at is not None and waiter.started_at is not None
        assert waiter.finished_at - waiter.started_at < 4.0
        own_redis.start()
        with pytest.raises(LeaseLost):  # the restarted server has no data
            held.release()


def test_a_holder_whose_renewals_fail_past_its_ttl_is_told_lease_lost(
    own_redis: OwnRedis,
) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    with Limits(url) as limits:
        limits.create("db", slots=1, lease_ttl=1)
        lease = limits.acquire("db")
        own_redis.kill()  # renewals fail from now on
        wait_until(lambda: lease.lost, 5.0, "the lease to be marked lost")
        with pytest.raises(LeaseLost):  # not StoreUnavailable: the lease is gone for good
            lease.release()


def test_waiters_in_threads_survive_an_outage_without_exceeding_the_limit(
    own_redis: OwnRedis,
) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    with Limits(url) as limits:
        limits.create("db", slots=2, lease_ttl=5)
        inside = 0
        most = 0
        errors: list[BaseException] = []
        lock = threading.Lock()

        def work() -> None:
            nonlocal inside, most
            try:
                with limits.concurrency("db", timeout=30):
                    with lock:
                        inside += 1
                        most = max(most, inside)
                    time.sleep(0.05)
                    with lock:
                        inside -= 1
            except BaseException as exc:  # recorded and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(12)]
        for t in threads:
            t.start()
        time.sleep(0.1)
        own_redis.kill()
        time.sleep(0.3)
        own_redis.start()
        for t in threads:
            t.join(40)
        # Data was lost: some may be told (LimitNotFound, LeaseLost); none may overrun.
        assert most <= 2
        for exc in errors:
            assert isinstance(exc, (LimitNotFound, LeaseLost, StoreUnavailable)), repr(exc)


def test_release_store_closes_the_listener(prefix: str) -> None:
    store = acquire_store(_url(prefix))
    with Limits(_url(prefix)) as limits:
        limits.create("db", slots=1)
        limits.acquire("db").release()
    listener = store._listener  # type: ignore[attr-defined]
    assert listener is not None and listener._thread.is_alive()
    assert release_store(store)  # the last reference: closes the store
    assert not listener._thread.is_alive()


def test_a_forked_child_gets_its_own_identity(prefix: str) -> None:
    url = _url(prefix)
    with Limits(url) as limits:
        limits.create("db", slots=2)
        parent = limits.acquire("db")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports by exit code
            code = 1
            try:
                child = limits.acquire("db", timeout=10)
                status = limits.inspect("db")
                pids = sorted(h.pid for h in status.holders)
                code = 0 if pids == sorted([os.getppid(), os.getpid()]) else 2
                child.release()
            finally:
                os._exit(code)
        _, wait_status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(wait_status) == 0
        assert [h.lease_id for h in limits.inspect("db").holders] == [parent.id]
        parent.release()
