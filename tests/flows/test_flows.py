"""Flows and tasks through the public API: results, errors, retries, timeouts, async, futures."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

import sluice.runs
import sluice.runtime
from conformance._helpers import Holdings, simulate_work, simulate_work_async
from sluice import (
    InvalidRequest,
    LimitNotFound,
    Limits,
    StateName,
    TaskTimeoutError,
    as_completed,
    flow,
    get_run_logger,
    task,
    wait,
)
from sluice.runners import ThreadPoolTaskRunner


@task
def double(x: int) -> int:
    return 2 * x


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def boom(message: str) -> None:
    raise KeyError(message)


def test_the_issue_example_runs_as_written(admin: Limits) -> None:
    admin.ensure("client-invoices", slots=5)
    holdings = Holdings(slots={"client-invoices": 5})
    failures: dict[int, int] = {}
    lock = threading.Lock()

    def fetch_page(page: int) -> list[dict[str, int]]:
        # The body runs while its task run holds the limit: the first five stay until
        # five hold it at once, so the 50 workers provably fill the 5 slots.
        with holdings.holding("client-invoices"):
            holdings.wait_full("client-invoices", 5)
            with lock:
                failures[page] = failures.get(page, 0) + 1
                first = failures[page] == 1
            if page % 7 == 0 and first:
                raise ConnectionError(f"page {page}: flaky")
            return [{"page": page, "row": i} for i in range(2)]

    @task(limits=["client-invoices"], retries=2, retry_delay_seconds=0.01)
    def get_client_invoice_page(page: int) -> list[dict[str, int]]:
        return fetch_page(page)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=50))
    def client_invoices(pages: int) -> list[dict[str, int]]:
        futures = [get_client_invoice_page.submit(p) for p in range(pages)]
        wait(futures)
        return [row for f in futures for row in f.result()]

    rows = client_invoices(30)
    assert rows == [{"page": p, "row": i} for p in range(30) for i in range(2)]
    run = sluice.runs.list(limit=1)[0]
    assert run.flow == "client_invoices" and run.state == "Completed"
    detail = sluice.runs.get(run.id)
    assert len(detail.task_runs) == 30
    retried = [t for t in detail.task_runs if t.run.attempts == 2]
    assert len(retried) == 5  # pages 0, 7, 14, 21, 28
    names = [s.name for s in retried[0].states]
    assert names[-1] == "Completed" and names.count("Retrying") == 1 and names.count("Running") == 2
    assert holdings.count("client-invoices") == 35  # 30 pages, 5 of them twice
    assert holdings.check() == {"client-invoices": 5}  # full, never over
    assert admin.inspect("client-invoices").in_use == 0


def test_results_nested_futures_and_map(flow_url: str) -> None:
    @flow
    def pipeline() -> tuple[int, list[int], int]:
        a = double.submit(1)
        # A future as an argument: waited on, replaced by its result. submit's ParamSpec
        # typing cannot express that, hence the ignores.
        b = double.submit(a)  # type: ignore[arg-type]
        c = add.submit(a, b)  # type: ignore[arg-type]
        mapped = double.map([1, 2, 3])
        summed = add.submit(*[c, 10])  # type: ignore[arg-type]
        nested = add.submit(*[double.submit(5), 1])  # type: ignore[arg-type]
        return c.result(), [f.result() for f in mapped], summed.result() + nested.result()

    assert pipeline() == (6, [2, 4, 6], 16 + 11)


def test_a_failed_task_reraises_its_own_exception_and_fails_downstream(flow_url: str) -> None:
    @flow
    def failing() -> tuple[object, str, str]:
        bad = boom.submit("nope")
        downstream = double.submit(bad)  # type: ignore[arg-type]  # a future, resolved at run time
        wait([bad, downstream])
        return bad.result(raise_on_failure=False), bad.state.name, downstream.state.name

    exc, state, downstream = failing()
    assert isinstance(exc, KeyError) and exc.args == ("nope",)
    # StateName is a str enum, equal to its value: mypy takes the literals as disjoint.
    assert state == StateName.FAILED == "Failed"  # type: ignore[comparison-overlap]
    assert downstream == "Failed"

    @flow
    def raising() -> None:
        boom.submit("raised").result()

    with pytest.raises(KeyError, match="raised"):
        raising()
    assert sluice.runs.list(1)[0].state == "Failed"


def test_retries_rerun_the_body_and_record_retrying(flow_url: str) -> None:
    calls: list[float] = []

    @task(retries=2, retry_delay_seconds=0.05)
    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ValueError(f"attempt {len(calls)}")
        return "ok"

    @flow
    def f() -> tuple[str, str]:
        fut = flaky.submit()
        return fut.result(), sluice.runtime.flow_run.id or ""

    result, run_id = f()
    assert result == "ok" and len(calls) == 3
    assert calls[2] - calls[1] >= 0.04
    states = sluice.runs.get(run_id).task_runs[0].states
    assert [s.name for s in states].count("Retrying") == 2
    assert "ValueError: attempt 1" in next(s.message for s in states if s.name == "Retrying")

    @task(retries=1)
    def always() -> None:
        raise ValueError("always")

    @flow
    def g() -> None:
        always()

    with pytest.raises(ValueError, match="always"):
        g()


def test_timeouts_raise_task_timeout_error_and_record_timed_out(flow_url: str) -> None:
    @task(timeout_seconds=0.2)
    def spin() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # pure Python: interrupted at once
            pass

    @task(timeout_seconds=5)
    async def slow_async() -> None:
        await asyncio.sleep(10)

    @flow
    def f() -> tuple[BaseException | None, str, float]:
        started = time.monotonic()
        fut = spin.submit()
        fut.wait()
        took = time.monotonic() - started
        return fut.exception(), fut.state.name, took

    exc, state, took = f()
    assert isinstance(exc, TaskTimeoutError)
    assert isinstance(exc, TimeoutError)
    assert state == "TimedOut"
    assert took < 5

    @flow(timeout_seconds=0.3)
    async def slow_flow() -> None:
        await asyncio.sleep(10)

    with pytest.raises(TaskTimeoutError, match="slow_flow"):
        asyncio.run(slow_flow())
    assert sluice.runs.list(1)[0].state == "TimedOut"

    @flow
    def direct() -> None:
        spin()  # called directly: runs in this thread, still interrupted

    with pytest.raises(TaskTimeoutError):
        direct()


def test_async_tasks_and_flows(flow_url: str) -> None:
    @task
    async def fetch(x: int) -> int:
        await simulate_work_async(0.01)
        assert sluice.runtime.task_run.id is not None
        return x + 1

    @flow
    async def af() -> tuple[int, list[int], str | None]:
        direct = await fetch(1)  # awaitable inside an async flow
        futures = [fetch.submit(i) for i in range(5)]
        results = [await f for f in futures]
        return direct, results, sluice.runtime.flow_run.id

    direct, results, run_id = asyncio.run(af())
    assert direct == 2 and results == [1, 2, 3, 4, 5]
    assert run_id is not None and len(sluice.runs.get(run_id).task_runs) == 6

    @flow
    def sync_flow() -> list[int]:
        # Called outside a running event loop, an async task runs to completion and returns
        # its result; the static return type can only be the coroutine.
        return [fetch(1), *[f.result() for f in fetch.map([10, 20])]]  # type: ignore[list-item]

    assert sync_flow() == [2, 11, 21]


def test_as_completed_and_wait_timeout(flow_url: str) -> None:
    gate = threading.Event()

    @task
    def blocked() -> str:
        gate.wait(10)
        return "late"

    @flow
    def f() -> tuple[list[int], int]:
        fast = double.map([1, 2, 3])
        slow = blocked.submit()
        done = sorted(fut.result() for fut in as_completed(fast, timeout=10))
        not_done = len(wait([slow], timeout=0.05).not_done)
        with pytest.raises(TimeoutError):
            slow.result(timeout=0.01)
        gate.set()
        return done, not_done

    assert f() == ([2, 4, 6], 1)


def test_tasks_outside_a_flow_just_run_with_their_limits(flow_url: str, admin: Limits) -> None:
    admin.create("solo", slots=1)

    @task(limits=["solo"])
    def held() -> int:
        return admin.inspect("solo").in_use

    assert double(4) == 8
    assert held() == 1
    assert admin.inspect("solo").in_use == 0
    with pytest.raises(InvalidRequest, match="submit"):
        double.submit(1)


def test_a_missing_limit_fails_the_task_loudly(flow_url: str) -> None:
    @task(limits=["no-such-limit"])
    def t() -> None: ...

    @flow
    def f() -> None:
        t.submit().result()

    with pytest.raises(LimitNotFound, match="no-such-limit"):
        f()


def test_the_lease_holder_names_the_task_and_its_flow_run(flow_url: str, admin: Limits) -> None:
    admin.create("db", slots=2)

    @task(limits=["db"])
    def look() -> tuple[str, list[str]]:
        return sluice.runtime.flow_run.id or "", [h.holder for h in admin.inspect("db").holders]

    @flow
    def f() -> tuple[str, list[str]]:
        return look.submit().result()

    run_id, holders = f()
    assert holders == [f"task look in flow f run {run_id}"]
    # Called directly, outside a flow, a task run is named itself.
    direct_ids: list[str] = []

    @task(limits=["db"])
    def alone() -> list[str]:
        direct_ids.append(sluice.runtime.task_run.id or "")
        return [h.holder for h in admin.inspect("db").holders]

    assert alone() == [f"task alone run {direct_ids[0]}"]


def test_flow_retries_and_names(flow_url: str) -> None:
    attempts: list[int] = []

    @flow(name="renamed", retries=1)
    def f() -> int:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first")
        return len(attempts)

    assert f() == 2
    run = sluice.runs.get(sluice.runs.list(1)[0].id)
    assert run.run.flow == "renamed"
    assert [s.name for s in run.states] == [
        "Pending",
        "Running",
        "Retrying",
        "Running",
        "Completed",
    ]


def test_logging_names_the_runs(flow_url: str, caplog: pytest.LogCaptureFixture) -> None:
    @task
    def chatty() -> None:
        get_run_logger().info("hello from a task")

    @flow
    def f() -> str | None:
        get_run_logger().info("hello from a flow")
        chatty.submit().result()
        return sluice.runtime.flow_run.id

    with caplog.at_level(logging.INFO, logger="sluice"):
        run_id = f()
    by_message = {r.getMessage(): r for r in caplog.records}
    assert by_message["hello from a flow"].flow_run_id == run_id  # type: ignore[attr-defined]
    record = by_message["hello from a task"]
    assert record.flow_run_id == run_id  # type: ignore[attr-defined]
    assert record.task_run_name == "chatty"  # type: ignore[attr-defined]


def test_a_flow_waits_for_everything_it_submitted(flow_url: str) -> None:
    finished: list[int] = []

    @task
    def slow(i: int) -> None:
        simulate_work(0.05)
        finished.append(i)

    @flow
    def f() -> None:
        slow.map(range(5))  # never waited on in the body

    f()
    assert sorted(finished) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"retries": -1}, "retries"),
        ({"limits": "x"}, r"limits=\['x'\]"),
        ({"occupy": 0}, "occupy"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"retry_delay_seconds": -1}, "retry_delay_seconds"),
        ({"limits": ["bad name!"]}, "bad name!"),
        ({"tags": "t"}, "tags"),
    ],
)
def test_bad_task_options_raise_at_decoration(options: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        task(**options)  # type: ignore[call-overload]


def test_bad_flow_options_and_non_callables() -> None:
    with pytest.raises(InvalidRequest, match="task_runner"):
        flow(task_runner="threads")  # type: ignore[call-overload]
    with pytest.raises(InvalidRequest, match="max_workers"):
        ThreadPoolTaskRunner(max_workers=0)
    with pytest.raises(InvalidRequest, match="function"):
        task(42)  # type: ignore[call-overload]
    with pytest.raises(InvalidRequest, match="retries"):
        flow(retries=-1)
