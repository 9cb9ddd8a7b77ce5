"""This process's wake-up subscription: one pub/sub thread per process and deployment.

A script that hands a grant over (or has news for a waiting ticket) publishes the
ticket ids, a JSON array, on the channel of the process that owns them; the
:class:`Listener` passes each message on (the process then asks about those
tickets, which claims what was handed to them), and after a lost subscription
subscribes again and has every local waiter look again, since a wake-up sent
meanwhile is lost. The subscription holds a connection of its own, outside the
store's pool of step connections.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable

import redis

from sluice.store.redis.config import LISTEN_POLL, backoff

__all__ = ["Listener"]

log = logging.getLogger("sluice.store.redis")


class Listener:
    """One pub/sub subscription per process: delivers wake-ups, re-subscribes after a loss."""

    def __init__(
        self,
        subscriber: redis.Redis,
        publisher: Callable[[], redis.Redis],
        channel: str,
        deliver: Callable[[list[str]], None],
        wake_all: Callable[[], None],
        url: str,
    ) -> None:
        self._subscriber = subscriber
        """A client of its own: its one connection serves the subscription only."""
        self._publisher = publisher
        self._channel = channel
        self._deliver = deliver
        self._wake_all = wake_all
        self._url = url
        self._stop = threading.Event()
        self.ready = threading.Event()
        """Set once the first subscription is in force."""
        self._thread = threading.Thread(target=self._run, name="sluice-redis-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            pubsub = self._subscriber.pubsub()  # type: ignore[no-untyped-call, unused-ignore]
            try:
                pubsub.subscribe(self._channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=LISTEN_POLL)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        if failures:
                            self._wake_all()  # wake-ups sent while we were away are lost
                        failures = 0
                        self.ready.set()
                    elif message["type"] == "message":
                        data = message["data"]
                        text = data.decode() if isinstance(data, bytes) else str(data)
                        if text:  # empty: stop() waking this loop
                            self._deliver([str(t) for t in json.loads(text)])
            except Exception as exc:  # the listener must outlive any one failure
                if self._stop.is_set():
                    break
                failures += 1
                log.warning("sluice: wake-up subscription on %s lost: %s", self._url, exc)
                self._stop.wait(backoff(failures))
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()

    def stop(self) -> None:
        """End the subscription and wait (up to 5 s) for the thread to finish."""
        self._stop.set()
        if self.ready.is_set():
            with contextlib.suppress(Exception):  # an empty message ends its wait at once
                self._publisher().publish(self._channel, "")
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self._subscriber.close()
