"""The Redis store beyond the conformance suite: URLs, keys, scripts, lost connections, restarts.

Against the real server on 127.0.0.1:6379; the restart tests start their own
``redis-server`` on a free loopback port and stop it by its PID.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from conformance._helpers import Attempt, peak_units, wait_for_waiters, wait_until
from conftest import REDIS_HOST, REDIS_PORT, REDIS_START, require_module, require_server
from sluice import Limits, aio
from sluice.errors import (
    AcquireTimeout,
    ConfigError,
    LeaseLost,
    LimitNotFound,
    StoreError,
    StoreUnavailable,
)
from sluice.limits.model import Limit
from sluice.store import acquire_store, release_store

from ._servers import OwnRedis

if TYPE_CHECKING:
    from redis import Redis

    from sluice.store.base import Exchange, Exchanged
    from sluice.store.redis.store import RedisStore

redis = require_module("redis", "redis")

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
        ("redis://127.0.0.1:6379/0?pool_size=0", ["pool_size", "'0'", "1-100"]),
        ("redis://127.0.0.1:6379/0?pool_size=101", ["pool_size", "'101'"]),
        ("redis://127.0.0.1:6379/0?pool_size=four", ["pool_size", "'four'"]),
        ("redis://127.0.0.1:6379/0?nosuch=1", ["unknown parameter 'nosuch'", "pool_size"]),
    ],
)
def test_a_bad_redis_url_is_a_config_error_naming_the_value(url: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        Limits(url)
    for word in words:
        assert word in str(caught.value)


def test_pool_size_comes_from_the_url_and_stays_out_of_the_connection_url() -> None:
    from sluice.store.redis.config import RedisConfig

    assert RedisConfig.parse("redis://127.0.0.1:6379/0").pool_size == 4
    url = "redis://127.0.0.1:6379/0?pool_size=12&prefix=p&health_check_interval=1"
    config = RedisConfig.parse(url)
    assert (config.pool_size, config.prefix) == (12, "p")
    assert "pool_size" not in config.connect_url
    assert "health_check_interval=1" in config.connect_url  # redis-py's own options pass


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


def test_the_async_front_door_runs_steps_on_threads_and_serves_several_event_loops(
    prefix: str,
) -> None:
    from sluice.store.base import ThreadedAsyncStore

    async def once(limits: aio.Limits) -> int:
        assert isinstance(limits._astore, ThreadedAsyncStore)  # no event-loop-bound client
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


def _two_stores(prefix: str) -> tuple[RedisStore, RedisStore]:
    """Two store objects on one deployment: two processes, as far as Redis can tell."""
    from sluice.store.redis.store import from_url

    return from_url(_url(prefix)), from_url(_url(prefix))


def test_an_exchange_sent_again_after_a_lost_reply_does_nothing_twice(prefix: str) -> None:
    # What a resend after a lost reply looks like to the server: the same batch with
    # the same exchange id, marked as resent. It gets the first try's reply back.
    from sluice.store.base import AcquireRequest, Exchange

    store, _ = _two_stores(prefix)

    def send(batch: Exchange, exchange_id: str, resent: bool = False) -> Exchanged:
        return store._drive(store.engine.exchange(batch, exchange_id=exchange_id, resent=resent))

    try:
        with Limits(_url(prefix)) as limits:
            limits.create("db", slots=3)
            take = Exchange(requests=(AcquireRequest("lost-1", ("db",), occupy=2),))
            granted = send(take, "x1")
            assert send(take, "x1", resent=True) == granted and len(granted.grants) == 1
            assert limits.inspect("db").in_use == 2  # granted once
            wait = Exchange(requests=(AcquireRequest("lost-2", ("db",), occupy=2),))
            queued = send(wait, "x2")
            assert send(wait, "x2", resent=True) == queued
            status = limits.inspect("db")
            assert [(w.ticket_id, w.count) for w in status.waiters] == [("lost-2", 1)]  # one place
            held = granted.grants[0].lease_id
            assert held is not None
            give_back = Exchange(releases=(held,))
            freed = send(give_back, "x3")
            assert freed.released == {held: True} and len(freed.grants) == 1  # handed on
            assert send(give_back, "x3", resent=True) == freed  # the hand-off not made twice
            handed = freed.grants[0].lease_id
            assert handed is not None
            assert [h.lease_id for h in limits.inspect("db").holders] == [handed]
            # A resend whose first try never reached the server runs as a first try.
            assert send(Exchange(releases=(handed,)), "x4", resent=True).released == {handed: True}
            assert limits.inspect("db").in_use == 0
    finally:
        store.close()


def test_a_lost_reply_is_resent_by_the_driver_and_grants_once(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The connection drops after the server ran the step: the driver sends it again,
    # marked, and gets the stored reply; nothing is granted twice.
    from sluice.store.base import AcquireRequest, Exchange

    store, _ = _two_stores(prefix)
    try:
        with Limits(_url(prefix)) as limits:
            limits.create("db", slots=5)
            store.client.ping()
            execute = store._execute
            sent: list[tuple[object, ...]] = []

            def lose_the_first_reply(call: Any) -> Any:
                reply = execute(call)
                sent.append(call.args)
                if len(sent) == 1:
                    raise redis.ConnectionError("Connection reset by peer (after the step ran)")
                return reply

            monkeypatch.setattr(store, "_execute", lose_the_first_reply)
            answer = store.exchange(Exchange(requests=(AcquireRequest("r", ("db",), count=3),)))
            monkeypatch.undo()
            assert len(answer.grants) == 3
            assert [a[-1] for a in sent] != [sent[0][-1]] * 2 and sent[1][-1] == "resent"
            status = limits.inspect("db")
            assert status.in_use == 3 and status.totals.grants == 3
    finally:
        store.close()


# --------------------------------------------------------------------------- totals


def test_the_scripts_bucket_waits_as_the_model_does(prefix: str) -> None:
    from sluice.limits.model import WAIT_BUCKETS, wait_bucket
    from sluice.store.redis.config import Scripts

    lib = Scripts.source("renew").split("\n-- renew:", 1)[0]  # _lib.lua as the steps see it
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


def test_the_scripts_constants_are_the_pythons(prefix: str) -> None:
    from sluice.store.base import CLAIM_WINDOW
    from sluice.store.redis.config import SCHEMA_VERSION, Scripts
    from sluice.store.sqlite.tx import ARRIVALS_JOIN_WINDOW

    lib = Scripts.source("renew").split("\n-- renew:", 1)[0]
    probe = lib + "\nreturn cjson.encode({CLAIM_WINDOW, ARRIVALS_JOIN_WINDOW, SCHEMA})"
    with redis.Redis(REDIS_HOST, REDIS_PORT, decode_responses=True) as client:
        raw = client.eval(probe, 1, f"{{{prefix}}}:meta", "probe", "")
    assert json.loads(raw) == [CLAIM_WINDOW, ARRIVALS_JOIN_WINDOW, SCHEMA_VERSION]


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


def test_a_handed_off_grant_counts_once_and_a_lapsed_one_goes_back_unreclaimed(
    prefix: str,
) -> None:
    from sluice.store.base import AcquireRequest, Ask, Exchange

    holder_side, waiter_side = _two_stores(prefix)
    try:
        with Limits(_url(prefix)) as limits:
            limits.create("db", slots=1, lease_ttl=1)  # a hand-off waits 1 s to be claimed
            for waiter, late in (("w-in-time", False), ("w-late", True)):
                held = holder_side.exchange(
                    Exchange(requests=(AcquireRequest(f"h-{waiter}", ("db",)),))
                ).grants[0]
                request = AcquireRequest(waiter, ("db",))
                queued = waiter_side.exchange(Exchange(requests=(request,))).queued[waiter]
                assert held.lease_id is not None
                holder_side.exchange(Exchange(releases=(held.lease_id,)))  # handed to the waiter
                if late:
                    time.sleep(1.2)  # not claimed in time: it lapses, unused
                ask = Ask(waiter, request, queued.seq, 1)
                grants = waiter_side.exchange(Exchange(asks=(ask,))).grants
                assert [g.ticket_id for g in grants] == [waiter]  # claimed, or granted anew
                assert grants[0].lease_id is not None
                waiter_side.exchange(Exchange(releases=(grants[0].lease_id,)))
            t = limits.inspect("db").totals
        # Two holders and two hand-offs, plus the late waiter's grant anew once its
        # lapsed grant went back; claiming a grant adds nothing, and a grant that lapsed
        # unclaimed was never used: it is not an expired lease reclaimed.
        assert (t.grants, t.expired_leases_reclaimed, t.timeouts) == (5, 0, 0)
        assert sum(t.wait_buckets) == 5
        assert t.wait_seconds < 1.0  # counted when handed, not when claimed
    finally:
        holder_side.close()
        waiter_side.close()


def test_a_withdrawal_sent_again_after_a_lost_reply_counts_one_timeout(prefix: str) -> None:
    from sluice.store.base import AcquireRequest, Exchange, Withdrawal

    store, _ = _two_stores(prefix)
    try:
        with (
            Limits(_url(prefix)) as limits,
            redis.Redis(REDIS_HOST, REDIS_PORT, decode_responses=True) as client,
        ):
            limits.create("db", slots=1)
            store.exchange(Exchange(requests=(AcquireRequest("holder", ("db",)),)))
            store.exchange(Exchange(requests=(AcquireRequest("gave-up", ("db",), count=3),)))
            give_up = Exchange(withdrawals=(Withdrawal("gave-up", 2, timed_out_on="db"),))
            store._drive(store.engine.exchange(give_up, exchange_id="w1"))
            store._drive(store.engine.exchange(give_up, exchange_id="w1", resent=True))
            status = limits.inspect("db")
            assert status.totals.timeouts == 2  # one per grant withdrawn, counted once
            assert [w.count for w in status.waiters] == [1]
            nope = Exchange(withdrawals=(Withdrawal("gave-up-too", 1, timed_out_on="nope"),))
            store.exchange(nope)  # no such limit: nothing counted
            assert not client.exists(f"{{{prefix}}}:tot:nope")
    finally:
        store.close()


# --------------------------------------------------------------------------- wake-ups


def test_a_wake_up_carries_ticket_ids_only_and_the_woken_process_claims_by_asking(
    prefix: str,
) -> None:
    from sluice.store.base import AcquireRequest, Ask, Exchange

    holder_side, waiter_side = _two_stores(prefix)
    try:
        with (
            Limits(_url(prefix)) as limits,
            redis.Redis(REDIS_HOST, REDIS_PORT, decode_responses=True) as client,
        ):
            limits.create("db", slots=1)
            held = holder_side.exchange(Exchange(requests=(AcquireRequest("h", ("db",)),)))
            request = AcquireRequest("t", ("db",), count=2)
            queued = waiter_side.exchange(Exchange(requests=(request,))).queued["t"]
            woken: list[list[str]] = []
            waiter_side.set_wake_handler(lambda ids: woken.append(list(ids)))
            pubsub = client.pubsub()
            pubsub.subscribe(f"{{{prefix}}}:wake:{waiter_side.process_id}")
            assert pubsub.get_message(timeout=5)["type"] == "subscribe"
            lease_id = held.grants[0].lease_id
            assert lease_id is not None
            holder_side.exchange(Exchange(releases=(lease_id,)))  # hands the slot to "t"
            message = pubsub.get_message(timeout=5)
            assert message is not None and json.loads(message["data"]) == ["t"]
            pubsub.close()
            wait_until(lambda: woken == [["t"]], 5.0, "the listener to deliver the wake-up")
            status = limits.inspect("db")  # the grant is held for "t", not yet claimed
            assert [h.lease_id.split(".")[0] for h in status.holders] == ["t"]
            answer = waiter_side.exchange(Exchange(asks=(Ask("t", request, queued.seq, 2),)))
            assert [g.ticket_id for g in answer.grants] == ["t"]
            assert answer.grants[0].lease_id == status.holders[0].lease_id
            assert answer.queued["t"].wanted == 1
    finally:
        holder_side.close()
        waiter_side.close()


# --------------------------------------------------------------------------- connections


def _take(pool: Any) -> Any:
    """One of the pool's connections (redis-py 5 wants a command name; 6 and later warn on one)."""
    try:
        return pool.get_connection()
    except TypeError:
        return pool.get_connection("PING")


def test_a_full_pool_makes_a_step_wait_then_says_so(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sluice.store.redis import store as store_module

    monkeypatch.setattr(store_module, "POOL_TIMEOUT", 0.5)
    store = store_module.from_url(_url(prefix) + "&pool_size=1")
    try:
        store.create_limit(Limit("db", slots=1))
        pool = store.client.connection_pool
        taken = _take(pool)  # the pool's one connection, busy elsewhere
        freed = threading.Timer(0.2, pool.release, (taken,))
        freed.start()
        assert store.get_limit("db").slots == 1  # waited for it, then ran
        taken = _take(pool)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"pool_size.*busy for 0\.5 s"):
            store.get_limit("db")
        assert 0.4 < time.monotonic() - started < 2.0  # one wait, not one per retry
        pool.release(taken)
        assert store.get_limit("db").slots == 1
    finally:
        store.close()


def test_more_waiters_than_connections_all_get_through_on_pool_size_connections(
    prefix: str,
) -> None:
    """300 threads and 300 coroutines, 2 connections: none fails, none over-admits."""
    pool_size, slots, threads, coroutines = 2, 5, 300, 300
    url = _url(prefix) + f"&pool_size={pool_size}"
    intervals: list[tuple[float, float, int]] = []
    errors: list[BaseException] = []
    seen: set[str] = set()
    most = 0
    stop = threading.Event()

    with Limits(url) as limits:
        limits.create("db", slots=slots)
        name = f"sluice:{limits._store.process_id}"  # type: ignore[attr-defined]

        def count_connections() -> None:
            nonlocal most
            with redis.Redis(REDIS_HOST, REDIS_PORT, decode_responses=True) as client:
                while not stop.is_set():
                    ours = [c for c in client.client_list() if c.get("name") == name]
                    seen.update(c["id"] for c in ours)
                    most = max(most, len(ours))
                    time.sleep(0.01)

        def thread_worker(start: threading.Barrier) -> None:
            try:
                start.wait()
                assert limits.get("db").slots == slots  # a step straight on the pool
                with limits.concurrency("db", timeout=60):
                    began = time.monotonic()
                    time.sleep(0.002)
                    intervals.append((began, time.monotonic(), 1))
            except BaseException as exc:  # recorded and asserted below
                errors.append(exc)

        async def coroutine_worker(alimits: aio.Limits, gate: asyncio.Event) -> None:
            try:
                await gate.wait()
                assert (await alimits.get("db")).slots == slots
                async with alimits.concurrency("db", timeout=60):
                    began = time.monotonic()
                    await asyncio.sleep(0.002)
                    intervals.append((began, time.monotonic(), 1))
            except BaseException as exc:  # recorded and asserted below
                errors.append(exc)

        async def coroutines_main() -> None:
            async with aio.Limits(url) as alimits:
                gate = asyncio.Event()
                tasks = [
                    asyncio.ensure_future(coroutine_worker(alimits, gate))
                    for _ in range(coroutines)
                ]
                await asyncio.sleep(0)
                gate.set()
                await asyncio.gather(*tasks)

        counter = threading.Thread(target=count_connections, daemon=True)
        counter.start()
        start = threading.Barrier(threads)
        workers = [threading.Thread(target=thread_worker, args=(start,)) for _ in range(threads)]
        for worker in workers:
            worker.start()
        asyncio.run(coroutines_main())
        for worker in workers:
            worker.join(60)
        stop.set()
        counter.join(10)
        status = limits.inspect("db")
        engine = limits._store.engine  # type: ignore[attr-defined]
        remembered = (dict(engine.tickets), set(engine.leases))

    assert not errors, errors[:3]
    assert len(intervals) == threads + coroutines
    assert peak_units(intervals)[0] <= slots
    assert (status.in_use, status.waiters) == (0, [])
    assert status.totals.grants == threads + coroutines
    assert remembered == ({}, set())  # what the process remembers having ends with it
    # The step pool and the wake-up listener: never more connections than that.
    assert 1 <= most <= pool_size + 1, most
    assert len(seen) <= pool_size + 1, seen


# --------------------------------------------------------------------------- older data


def _write_schema_1(client: Redis, prefix: str, now: float) -> None:
    """A deployment as the previous version (schema 1) left it: limit "db" (1 slot)
    held by lease "old-lease", and ticket "old-ticket" waiting, both of process "old"."""
    p = f"{{{prefix}}}"
    expires = repr(now + 30)
    client.hset(f"{p}:meta", mapping={"epoch": repr(now - 100), "seq": 1, "schema": 1})
    client.sadd(f"{p}:limits", "db")
    client.hset(
        f"{p}:l:db",
        mapping={
            "slots": 1,
            "rate": "",
            "burst": "",
            "active": "1",
            "lease_ttl": "30.0",
            "tat": "0",
            "in_use": 1,
            "version": 1,
            "created_at": repr(now - 100),
            "updated_at": repr(now - 100),
        },
    )
    client.hset(f"{p}:h:db", "old-lease", 1)
    client.zadd(f"{p}:he:db", {"old-lease": now + 30})
    client.hset(
        f"{p}:lease:old-lease",
        mapping={
            "kind": "concurrency",
            "names": "db",
            "holds": "db",
            "process_id": "old",
            "holder": "before",
            "host": "h",
            "pid": 1,
            "occupy": 1,
            "lease_ttl": "30.0",
            "acquired_at": repr(now - 5),
            "expires_at": expires,
        },
    )
    client.hset(
        f"{p}:t:old-ticket",
        mapping={
            "seq": 1,
            "process_id": "old",
            "holder": "waiting",
            "host": "h",
            "pid": 1,
            "occupy": 1,
            "kind": "concurrency",
            "names": "db",
            "queues": "db",
            "lease_ttl": "30.0",
            "created_at": repr(now - 3),
            "expires_at": expires,
        },
    )
    client.zadd(f"{p}:q:db", {"old-ticket": 1})
    client.zadd(f"{p}:qe:db", {"old-ticket": now + 30})
    client.sadd(f"{p}:n:db", "old-ticket")


def test_a_deployment_written_by_schema_1_is_used_in_place(prefix: str) -> None:
    from sluice.store.base import AcquireRequest, Ask, Exchange

    with redis.Redis(REDIS_HOST, REDIS_PORT, decode_responses=True) as client:
        seconds, micros = client.time()
        _write_schema_1(client, prefix, seconds + micros / 1e6)
    old, mine = _two_stores(prefix)
    old.engine.process_id = "old"  # the previous version's process, still running
    try:
        with Limits(_url(prefix)) as limits:
            diagnosis = limits._store.diagnose()
            assert (diagnosis.schema_version, diagnosis.schema_current) == (1, False)
            status = limits.inspect("db")  # its fields absent: a ticket wants one grant
            assert [h.lease_id for h in status.holders] == ["old-lease"]
            assert [(w.ticket_id, w.count, w.position) for w in status.waiters] == [
                ("old-ticket", 1, 1)
            ]
            diagnosis = limits._store.diagnose()
            assert (diagnosis.schema_version, diagnosis.schema_current) == (2, True)
            request = AcquireRequest("new", ("db",))
            answer = mine.exchange(Exchange(requests=(request,)))
            assert answer.queued["new"].position == 2  # behind the old ticket, FIFO
            assert mine.renew(["old-lease"], []).lost_leases == frozenset()  # a lease is claimed
            answer = old.exchange(Exchange(releases=("old-lease",)))
            assert answer.released == {"old-lease": True}
            assert [g.ticket_id for g in answer.grants] == ["old-ticket"]  # its own, claimed
            handed = answer.grants[0].lease_id
            assert handed is not None and handed.startswith("old-ticket.")
            old.exchange(Exchange(releases=(handed,)))  # hands the slot to "new"
            answer = mine.exchange(Exchange(asks=(Ask("new", request, 2, 1),)))
            assert [g.ticket_id for g in answer.grants] == ["new"]
            assert answer.grants[0].lease_id is not None
            mine.exchange(Exchange(releases=(answer.grants[0].lease_id,)))
            status = limits.inspect("db")  # grants counted since: the hand-off and "new"'s
            assert (status.in_use, status.waiters, status.totals.grants) == (0, [], 2)
    finally:
        old.close()
        mine.close()


# --------------------------------------------------------------------------- restarts


def _unread_bytes(port: int) -> int:
    """Bytes waiting, unread, in the receive queues of the server's sockets on ``port``
    (Linux /proc/net/tcp): a request that reached a frozen server."""
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port:
                total += int(fields[4].split(":")[1], 16)
    return total


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


def test_a_release_spanning_a_restart_without_data_says_lease_lost(own_redis: OwnRedis) -> None:
    """The release reaches a frozen server, which dies unanswered and comes back empty:
    the retry on the new server must not count "no such lease" as released."""
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    with Limits(url) as limits:
        limits.create("db", slots=1)
        lease = limits.acquire("db")
        own_redis.pause()
        outcome: list[BaseException | None] = []

        def release() -> None:
            try:
                lease.release()
            except BaseException as exc:
                outcome.append(exc)
            else:
                outcome.append(None)

        releasing = threading.Thread(target=release)
        releasing.start()
        wait_until(
            lambda: _unread_bytes(own_redis.port) > 0, 5.0, "the release to reach the server"
        )
        own_redis.kill()  # unanswered; then back without the data
        own_redis.start()
        releasing.join(30)
        assert outcome, "the release never returned"
        assert isinstance(outcome[0], LeaseLost), repr(outcome[0])


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
