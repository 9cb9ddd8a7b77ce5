"""Redis pieces for the benchmarks: a fresh deployment per run and the raw baselines.

The server is the one on 127.0.0.1:6379 (override with ``SLUICE_BENCH_REDIS``,
e.g. ``redis://127.0.0.1:6380/0``). Baselines go through redis-py, the same
driver the store uses: ``EVALSHA`` of a script that returns at once, and a
``PUBLISH`` -> receive round trip to a subscriber thread.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import redis

__all__ = [
    "REDIS_URL",
    "available",
    "commandstats_calls",
    "publish_receive_latencies",
    "raw_evalsha",
    "redis_skip_note",
    "redis_version",
    "temp_redis_url",
]

REDIS_URL = os.environ.get("SLUICE_BENCH_REDIS", "redis://127.0.0.1:6379/0")


def _client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


def available() -> bool:
    """Whether the benchmark Redis server answers (benchmarks skip its rows if not)."""
    try:
        with _client() as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def redis_skip_note() -> None:
    """Say that the Redis section was skipped, and why."""
    print(f"\nRedis section skipped: no Redis at {REDIS_URL} (set SLUICE_BENCH_REDIS)")


def redis_version() -> str:
    """The server's version, for table titles."""
    with _client() as client:
        return str(client.info("server").get("redis_version", "?"))


@contextmanager
def temp_redis_url(name: str) -> Iterator[str]:
    """Yield the URL of a fresh deployment (its own key prefix); delete its keys after."""
    prefix = f"sluice-bench-{name}-{uuid.uuid4().hex[:8]}"
    parts = urlsplit(REDIS_URL)
    try:
        yield parts._replace(query=f"prefix={prefix}").geturl()
    finally:
        with _client() as client:
            keys = list(client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])


@contextmanager
def raw_evalsha() -> Iterator[Callable[[], object]]:
    """Yield a function that runs one ``EVALSHA`` of a trivial script (one round trip)."""
    with _client() as client:
        sha = client.script_load("return 1")

        def call() -> object:
            return client.evalsha(sha, 0)

        yield call


def publish_receive_latencies(count: int) -> list[float]:
    """Seconds from ``PUBLISH`` to the subscriber thread holding the message, ``count`` times."""
    channel = f"sluice-bench-{uuid.uuid4().hex[:8]}"
    received: list[float] = []
    ready = threading.Event()
    got = threading.Event()
    with _client() as publisher, _client() as subscriber_client:
        pubsub = subscriber_client.pubsub()
        pubsub.subscribe(channel)

        def listen() -> None:
            while len(received) < count:
                message = pubsub.get_message(timeout=5.0)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    ready.set()
                elif message["type"] == "message":
                    received.append(time.perf_counter())
                    got.set()

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        if not ready.wait(10):
            raise RuntimeError("the subscription never started")
        sent: list[float] = []
        for _ in range(count):
            got.clear()
            time.sleep(0.002)  # let the subscriber fall asleep, as a waiter would
            sent.append(time.perf_counter())
            publisher.publish(channel, "x")
            if not got.wait(10):
                raise RuntimeError("a published message never arrived")
        thread.join(10)
        pubsub.close()
    return [b - a for a, b in zip(sent, received, strict=True)]


def commandstats_calls() -> int:
    """Commands the server has run since its stats were reset, scripts' own included."""
    with _client() as client:
        stats = client.info("commandstats")
    return sum(
        int(value["calls"])
        for name, value in stats.items()
        if not name.startswith(("cmdstat_info", "cmdstat_config"))
    )
