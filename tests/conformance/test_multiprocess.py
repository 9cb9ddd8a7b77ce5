"""Semantics 2 and 3 across processes: never over, exact counts, FIFO, for shared stores.

6 processes x 8 threads hammer 3 limits with random names and occupy. Each
thread records its holds in its process's ``Holdings`` (``time.monotonic()`` is
system-wide on Linux), after its grant returned and before it called release, so
every record lies inside the real holding interval; the parent merges them, and
an independent sweep that finds more units than slots at any instant proves
over-admission.
"""

from __future__ import annotations

import contextlib
import queue
import time
from typing import Any

import pytest

from sluice import Limits

from . import _workers
from ._helpers import Holdings, peak_units, wait_for_idle, wait_for_waiters
from ._procs import CHILD_START, SPAWN, child

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

PROCESSES = 6
THREADS = 8
ROUNDS = 12
SLOTS = {"mp-a": 3, "mp-b": 4, "mp-c": 6}


def test_peak_units_flags_an_overlap() -> None:
    """The checker itself: it must see an over-admission, and ignore touching ends."""
    assert peak_units([(0.0, 1.0, 2), (0.5, 2.0, 2)])[0] == 4
    assert peak_units([(0.0, 1.0, 2), (1.0, 2.0, 2)])[0] == 2
    assert peak_units([(0.0, 3.0, 1), (1.0, 2.0, 1), (1.5, 2.5, 1)]) == (3, 1.5)


def test_processes_and_threads_never_exceed_slots(
    mp_limits: Limits, cross_process_url: str
) -> None:
    limits = mp_limits
    for name, slots in SLOTS.items():
        limits.create(name, slots=slots)
    barrier = SPAWN.Barrier(PROCESSES * THREADS)
    results = SPAWN.Queue()
    procs = [
        SPAWN.Process(
            target=_workers.hammer,
            args=(cross_process_url, i, THREADS, ROUNDS, SLOTS, barrier, results),
            daemon=True,
        )
        for i in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    # (process index, rounds done, Holdings.records(), errors): see hammer
    reports: list[tuple[int, int, Any, list[str]]] = []
    try:
        deadline = time.monotonic() + 100
        while len(reports) < PROCESSES:
            try:
                reports.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                break
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    assert len(reports) == PROCESSES, f"only {len(reports)} of {PROCESSES} processes reported"
    errors = [err for _, _, _, errs in reports for err in errs]
    assert not errors, "\n".join(errors)
    assert all(proc.exitcode == 0 for proc in procs), [proc.exitcode for proc in procs]
    assert sum(done for _, done, _, _ in reports) == PROCESSES * THREADS * ROUNDS
    holdings = Holdings(slots=SLOTS)
    for _, _, records, _ in reports:
        holdings.merge(records)
    holdings.check()
    for name in SLOTS:
        status = wait_for_idle(limits, name)
        assert status.holders == []


def test_waiters_in_several_processes_are_served_in_arrival_order(
    mp_limits: Limits, cross_process_url: str
) -> None:
    limits = mp_limits
    limits.create("db", slots=1)
    held = limits.acquire("db")
    results = SPAWN.Queue()
    tags = [f"p{i}" for i in range(4)]
    with contextlib.ExitStack() as stack:
        procs = []
        for i, tag in enumerate(tags):
            procs.append(
                stack.enter_context(
                    child(
                        _workers.acquire_and_report,
                        cross_process_url,
                        ["db"],
                        1,
                        60,
                        tag,
                        results,
                        0.02,
                    )
                )
            )
            wait_for_waiters(limits, "db", i + 1, timeout=CHILD_START)
        status = limits.inspect("db")
        assert [(w.holder, w.pid, w.position) for w in status.waiters] == [
            (tag, proc.pid, i)
            for i, (tag, proc) in enumerate(zip(tags, procs, strict=True), start=1)
        ]
        held.release()
        messages = [results.get(timeout=30) for _ in range(2 * len(tags))]
        assert sorted(m[0] for m in messages) == ["granted"] * 4 + ["released"] * 4, messages
        granted = [m[1:4] for m in messages if m[0] == "granted"]
        order = [tag for tag, _, _ in sorted(granted, key=lambda g: g[2])]
        assert order == tags
        for proc in procs:
            proc.join(20)
            assert proc.exitcode == 0
    wait_for_idle(limits, "db")
