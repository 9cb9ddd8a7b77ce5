"""The line and the store's wake-ups: none is lost, whenever it arrives."""

from __future__ import annotations

import time
import uuid

from conformance._helpers import WAKE_BOUND, Attempt, wait_for_waiters
from sluice import Limits
from sluice.store.base import Exchange, Exchanged


def test_a_wake_up_before_the_answer_that_opened_its_ticket_is_not_lost() -> None:
    # The store has queued the ticket, and wakes it, while the answer that opened it is
    # still on its way to the line: the line must look at the ticket once it knows it.
    delay = 0.3
    with Limits(f"memory://line-{uuid.uuid4().hex}") as limits:
        limits.create("db", slots=1)
        held = limits.acquire("db")
        store = limits._store
        exchange = store.exchange

        def slow_answers(batch: Exchange) -> Exchanged:
            answer = exchange(batch)
            if batch.requests:
                time.sleep(delay)
            return answer

        store.exchange = slow_answers  # type: ignore[method-assign]
        try:
            waiter = Attempt(limits, "db", timeout=10).start()
            wait_for_waiters(limits, "db", 1)
            changed_at = time.monotonic()
            limits.disable("db")  # hands the slot to the ticket and wakes it, at once
            lease = waiter.result()
        finally:
            store.exchange = exchange  # type: ignore[method-assign]
        assert waiter.granted_at is not None
        assert waiter.granted_at - changed_at < delay + WAKE_BOUND
        lease.release()
        held.release()
