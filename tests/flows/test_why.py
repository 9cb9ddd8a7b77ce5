"""``run why`` on runs with known causes, on every store: what bounded each run, who held
the slots it waited for (from the store's record), and what would have helped.

The runs are built so that the answer is known in seconds: tasks that do
``simulate_work(d)`` behind limits of known size, holders that keep slots for a known
time. Tolerances are generous (a loaded CI machine), never the point of the test.
"""

from __future__ import annotations

import threading

import sluice.runs
import sluice.runtime
from conformance._helpers import simulate_work, wait_for_waiters, wait_until
from sluice import Limits, flow, task
from sluice.runners import ThreadPoolTaskRunner


def _run_id() -> str:
    run_id = sluice.runtime.flow_run.id
    assert run_id is not None
    return run_id


def test_a_limit_bound_run_names_the_limit_and_its_own_task_runs_held_it(
    admin: Limits,
) -> None:
    admin.create("db", slots=2)

    @task(limits=["db"])
    def query(i: int) -> int:
        simulate_work(0.3)
        return i

    @flow
    def report() -> str:
        for future in query.map(range(6)):
            future.result()
        return _run_id()

    why = sluice.runs.why(report())
    top = why.causes[0]
    assert (top.kind, top.limit) == ("limit", "db")
    # 6 x 0.3 s on 2 slots: someone is queued on db for the first two waves, ~0.6 s
    assert 0.45 < top.wall_seconds < 1.5
    assert why.headline.startswith("limit 'db' (2 slots) bounded")
    held = why.holders_of("db")
    assert held is not None and held.slots == 2
    assert abs(held.waited_seconds - top.wall_seconds) < 0.05
    assert held.share(held.own) > 0.85  # its own task runs held the slots meanwhile
    assert held.flows == () and held.others == ()
    assert held.free is not None and held.share(held.free) < 0.15
    lifted = next(e for e in why.estimates if e.what == "without limit 'db'")
    assert 0.25 < lifted.seconds < 0.75 * why.wall_seconds  # all six at once: ~0.3 s
    text = str(why)
    assert "this run's own task runs" in text and "without limit 'db'" in text


def test_a_worker_bound_run_says_so_and_how_many_workers_would_help(admin: Limits) -> None:
    admin.create("api", slots=4)

    @task(limits=["api"])
    def call(i: int) -> int:
        simulate_work(0.3)
        return i

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def crawl() -> str:
        for future in call.map(range(8)):
            future.result()
        return _run_id()

    why = sluice.runs.why(crawl())
    top = why.causes[0]
    assert top.kind == "worker", why
    assert "worker-bound" in why.headline
    # 8 x 0.3 s on 2 workers: ~1.2 s; on 4 (what the limit admits): ~0.6 s
    more = next(e for e in why.estimates if e.what == "with 4 workers instead of 2")
    assert 0.45 < more.seconds < 0.85 * why.wall_seconds


def test_a_run_behind_another_flow_run_names_that_run(admin: Limits) -> None:
    admin.create("db", slots=2)
    other_holds = threading.Event()
    release_other = threading.Event()
    other_ids: list[str] = []

    @task(limits=["db"])
    def hog() -> None:
        other_holds.set()
        assert release_other.wait(30)

    @flow(name="nightly")
    def nightly() -> None:
        other_ids.append(_run_id())
        futures = [hog.submit(), hog.submit()]
        for future in futures:
            future.result()

    @task(limits=["db"])
    def query() -> None:
        pass

    @flow(name="report")
    def report() -> str:
        future = query.submit()
        wait_for_waiters(admin, "db", 1)
        simulate_work(0.5)  # queued behind nightly's two task runs for this long
        release_other.set()
        future.result()
        return _run_id()

    other = threading.Thread(target=nightly)
    other.start()
    wait_until(lambda: admin.inspect("db").in_use == 2, 10, "nightly to hold both slots")
    try:
        why = sluice.runs.why(report())
    finally:
        release_other.set()
        other.join(30)
    held = why.holders_of("db")
    assert held is not None
    assert [(f.flow, f.run_id) for f in held.flows] == [("nightly", other_ids[0])]
    assert held.share(held.flows[0].unit_seconds) > 0.85
    assert 0.8 < held.flows[0].unit_seconds < 3.0  # 2 slots x ~0.5 s
    assert held.own < 0.1
    assert f"flow run {other_ids[0]} (nightly)" in str(why)


def test_a_holder_outside_flows_is_named_by_its_label(admin: Limits) -> None:
    admin.create("db", slots=1)
    lease = admin.acquire("db", holder="backup job")

    @task(limits=["db"])
    def query() -> None:
        pass

    @flow
    def report() -> str:
        future = query.submit()
        wait_for_waiters(admin, "db", 1)
        simulate_work(0.4)
        lease.release()
        future.result()
        return _run_id()

    why = sluice.runs.why(report())
    held = why.holders_of("db")
    assert held is not None
    assert [o.holder for o in held.others] == ["backup job"]
    assert 0.3 < held.others[0].unit_seconds < 2.0
    assert held.share(held.others[0].unit_seconds) > 0.85


def test_a_run_that_waited_while_a_slot_sat_free_shows_the_free_units(admin: Limits) -> None:
    admin.create("db", slots=2)
    lease = admin.acquire("db", holder="one unit")  # one of two units: one stays free

    @task(limits=["db"], occupy=2)
    def bulk() -> None:
        pass

    @flow
    def load() -> str:
        future = bulk.submit()
        wait_for_waiters(admin, "db", 1)
        simulate_work(0.4)  # the head of the line needs 2 units; 1 sits free
        lease.release()
        future.result()
        return _run_id()

    why = sluice.runs.why(load())
    held = why.holders_of("db")
    assert held is not None and held.free is not None
    assert 0.35 < held.share(held.free) < 0.65  # half the capacity sat free
    assert 0.35 < held.share(held.others[0].unit_seconds) < 0.65
    assert "nobody (free" in str(why)


def test_retry_delays_the_end_waited_for_bound_the_run(admin: Limits) -> None:
    attempts: list[int] = []

    @task(retries=1, retry_delay_seconds=0.5)
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first try fails")

    @task
    def quick() -> None:
        pass

    @flow
    def f() -> str:
        futures = [flaky.submit(), *[quick.submit() for _ in range(5)]]
        for future in futures:
            future.result()
        return _run_id()

    why = sluice.runs.why(f())
    retry = why.cause("retry")
    assert retry is not None and 0.35 < retry.wall_seconds < 1.5
    assert why.causes[0].kind == "retry"
    assert why.headline.startswith("retry delays bounded")
