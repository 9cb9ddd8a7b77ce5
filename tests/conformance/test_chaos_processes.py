"""Chaos across processes (issue 14): on every store several worker processes hammer
two limits ("a", 2 slots; "b", 3 slots; each worker thread takes "a", "b" or both),
while a controller SIGKILLs workers (and starts replacements), pauses a holder
(SIGSTOP) for longer than the lease TTL and resumes it, cuts every connection to the
store server (CLIENT KILL; pg_terminate_backend), freezes the store for a second
(SIGSTOP of the server; for SQLite, of a worker at any moment, perhaps inside a write
transaction), and restarts the store:

- Redis: the test's own redis-server, SIGKILLed and started again on its AOF
  (``appendonly yes``, ``appendfsync always``: a restart *with* its data);
- PostgreSQL: the test's own cluster (initdb in a temporary directory; run as the
  ``postgres`` user when the tests run as root), stopped in immediate mode (SIGQUIT: no
  checkpoint, as a crash) and started again, recovering from its WAL;
- SQLite: the store is the file and the processes that have it open, so a restart
  is every one of them killed at once (the controller closes its own client first),
  then new workers.

Each worker writes every grant, exit, LeaseLost and release to its own append-only
file; afterwards ``_chaos_check.replay`` checks that no instant saw more units held
than a limit's slots (not counting a holder paused past its lease, up to its pause,
nor one already told LeaseLost), that such a paused holder is told LeaseLost, that
fences grow, that nothing failed unexpectedly, that every worker stopped, and that
both limits end with nothing in use and nobody waiting.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import require_module, selected_store_ids, skip_or_fail
from sluice import Limits
from sluice.errors import SluiceError
from store._servers import pg_bin

from . import _chaos_workers
from ._chaos_check import Controlled, Replay, read_events, replay
from ._helpers import simulate_work, wait_for_idle, wait_until
from ._procs import SPAWN

SLOTS = {"a": 2, "b": 3}
LEASE_TTL = 3.0
"""Short, so a paused holder's lease lapses quickly; the store restarts fit well within it."""
PAUSE = LEASE_TTL + 1.5
"""How long a holder stays paused: past its lease, renewed at most TTL/3 before the pause."""
WORKERS = 4
THREADS = 3
CHAOS_SECONDS = 24.0
FREEZE = 1.0
"""How long the store is frozen: shorter than the lease TTL, so no live holder may lose its
lease (a freeze past the TTL: see "What each store guarantees under faults" in README.md)."""
SCHEDULE = ("pause", "kill", "cut", "freeze", "restart")
"""The controller's faults, one every STEP seconds, in this order, round and round (a paused
holder is resumed, PAUSE later, before the next restart)."""
STEP = 2.4
PROBE = "chaos-probe"


def _as_postgres() -> tuple[int | None, int | None]:
    """(user, group) to run PostgreSQL as: ``postgres`` when we are root (it refuses to run
    as root), else None, None (as we are)."""
    if os.geteuid() != 0:
        return None, None
    user = pwd.getpwnam("postgres")
    return user.pw_uid, user.pw_gid


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _stop_between_store_steps(proc: Any, limits: Limits) -> float:
    """SIGSTOP ``proc`` outside a store step (``_procs.stop_between_store_steps``, whose
    probe thread lets an AcquireTimeout escape when a stopped SQLite writer holds the
    lock); return ``time.monotonic()`` just before the stop that held."""
    for _ in range(10):
        stopped_at = time.monotonic()
        os.kill(proc.pid, signal.SIGSTOP)
        done = threading.Event()

        def write(done: threading.Event = done) -> None:
            with contextlib.suppress(SluiceError):
                limits.acquire(PROBE, timeout=0).release()
                done.set()

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        if done.wait(1.0):
            return stopped_at
        os.kill(proc.pid, signal.SIGCONT)
        writer.join(10)
    raise AssertionError("could not stop the worker outside a store step in 10 tries")


class Server:
    """A store server of the test's own on a free loopback port, restarted with its data."""

    url: str

    def restart(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def cut(self) -> int:
        """Close every client connection from the server's side; return how many."""
        raise NotImplementedError

    def pids(self) -> list[int]:
        """The server's processes, to freeze with SIGSTOP (the parent first)."""
        raise NotImplementedError


class RedisServer(Server):
    def __init__(self, directory: Path) -> None:
        self.port = _free_port()
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0?prefix=chaos"

    def start(self) -> None:
        args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        args += ["--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "always"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: _listening(self.port), 10.0, f"redis-server on port {self.port}")

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def cut(self) -> int:
        redis = require_module("redis", "redis")
        with redis.Redis("127.0.0.1", self.port) as client:
            cut: int = client.client_kill_filter(_type="normal", skipme=True)
            cut += client.client_kill_filter(_type="pubsub", skipme=True)
            return cut

    def pids(self) -> list[int]:
        assert self.proc is not None
        return [self.proc.pid]


class PostgresServer(Server):
    """A PostgreSQL cluster of the test's own in a temporary directory, run by the user
    running the tests, or by ``postgres`` if that is root (then it owns the directory)."""

    def __init__(self, bin_dir: Path) -> None:
        self.psycopg = require_module("psycopg", "postgres")
        self.bin = bin_dir
        self.user, self.group = _as_postgres()
        self.root = Path(tempfile.mkdtemp(prefix="sluice-chaos-pg-"))
        if self.user is not None and self.group is not None:
            os.chown(self.root, self.user, self.group)
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.url = f"{self.dsn}?schema=sluice_chaos"
        initdb = [str(self.bin / "initdb"), "-D", str(self.root / "data"), "-A", "trust"]
        subprocess.run(
            [*initdb, "-U", "postgres", "--no-sync", "-E", "UTF8"],
            check=True,
            capture_output=True,
            user=self.user,
            group=self.group,
        )

    def start(self) -> None:
        args = [str(self.bin / "postgres"), "-D", str(self.root / "data"), "-p", str(self.port)]
        for setting in (
            "listen_addresses=127.0.0.1",
            f"unix_socket_directories={self.root}",
            "fsync=off",  # a crash of the server, not of the host: the page cache keeps it
            "max_connections=200",
        ):
            args += ["-c", setting]
        with open(self.root / "log", "ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=log, user=self.user, group=self.group
            )
        wait_until(self._accepts, 30.0, f"PostgreSQL on port {self.port}")

    def _accepts(self) -> bool:
        try:
            with self.psycopg.connect(self.dsn, connect_timeout=1):
                return True
        except self.psycopg.OperationalError:
            return False

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        """Immediate shutdown (SIGQUIT): backends end at once, no checkpoint, as a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def cut(self) -> int:
        with self.psycopg.connect(self.dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
            ).fetchall()
            return len(rows)

    def pids(self) -> list[int]:
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return [self.proc.pid, *(int(pid) for pid in children.split())]


@contextlib.contextmanager
def store_under_test(store_id: str, tmp_path: Path) -> Iterator[tuple[str, Server | None]]:
    """The store's URL, and its server (None for SQLite: no server to restart)."""
    if store_id == "sqlite":
        yield f"sqlite:///{tmp_path / 'chaos.db'}", None
    elif store_id == "redis":
        require_module("redis", "redis")
        if shutil.which("redis-server") is None:
            skip_or_fail("redis-server is not installed (Debian: apt install redis-server)")
        redis = RedisServer(tmp_path)
        redis.start()
        try:
            yield redis.url, redis
        finally:
            redis.stop()
    else:
        bin_dir = pg_bin()
        if bin_dir is None or not (bin_dir / "initdb").exists():
            skip_or_fail(
                "no PostgreSQL server binaries (initdb, postgres) for the test's own cluster:"
                " apt install postgresql, or set SLUICE_TEST_PG_BIN"
            )
        try:
            _as_postgres()
        except KeyError:
            skip_or_fail("running as root, and no 'postgres' user to run PostgreSQL as")
        postgres = PostgresServer(bin_dir)
        try:
            postgres.start()
            yield postgres.url, postgres
        finally:
            postgres.stop()
            postgres.remove()


@dataclass
class Worker:
    index: int
    proc: Any
    events: Path


@dataclass
class Chaos:
    """The controller: starts workers, and kills, pauses and resumes them, and restarts
    the store; it records what it did to each worker, for the checker."""

    url: str
    server: Server | None
    directory: Path
    rng: random.Random
    limits: Limits
    workers: dict[int, Worker] = field(default_factory=dict)
    controlled: dict[int, Controlled] = field(default_factory=dict)
    counts: dict[str, int] = field(
        default_factory=lambda: {
            "kills": 0,
            "pauses": 0,
            "paused holders": 0,
            "pause tries": 0,
            "connections cut": 0,
            "freezes": 0,
            "restarts": 0,
        }
    )
    resumes: list[tuple[float, int]] = field(default_factory=list)
    log: list[tuple[float, str]] = field(default_factory=list)
    """(when it began, which) of every fault, in order."""
    restart_seconds: list[float] = field(default_factory=list)

    @property
    def stop_path(self) -> Path:
        return self.directory / "stop"

    def start_worker(self) -> None:
        index = len(self.controlled)
        events = self.directory / f"worker-{index}.jsonl"
        proc = SPAWN.Process(
            target=_chaos_workers.chaos_worker,
            args=(
                self.url,
                str(events),
                str(self.stop_path),
                THREADS,
                index,
                time.monotonic() + 150,
            ),
            daemon=True,
        )
        proc.start()
        self.workers[index] = Worker(index, proc, events)
        self.controlled[index] = Controlled()

    def live(self) -> list[Worker]:
        paused = {index for _, index in self.resumes}
        return [w for w in self.workers.values() if w.proc.is_alive() and w.index not in paused]

    def holding(self, worker: Worker) -> bool:
        """Whether the worker's events show a hold not yet left."""
        if not worker.events.exists():
            return False
        open_leases: set[str] = set()
        for event in read_events(worker.events):
            if event["e"] == "enter":
                open_leases.add(event["lease"])
            elif event["e"] == "exit":
                open_leases.discard(event["lease"])
        return bool(open_leases)

    def kill(self, worker: Worker) -> None:
        os.kill(worker.proc.pid, signal.SIGKILL)
        self.controlled[worker.index].killed_at = time.monotonic()
        worker.proc.join(10)
        del self.workers[worker.index]
        self.resumes = [(at, index) for at, index in self.resumes if index != worker.index]
        self.counts["kills"] += 1

    def kill_one(self) -> None:
        candidates = self.live()
        if candidates:
            self.kill(self.rng.choice(candidates))
        self.start_worker()

    def pause_a_holder(self, within: float = 5.0) -> None:
        """SIGSTOP a worker that is inside a hold (between store steps); resume it later.
        If none is caught inside one ``within`` seconds, pause one anyway."""
        give_up = time.monotonic() + within
        while True:
            candidates = self.live()
            if not candidates:
                return
            holders = [w for w in candidates if self.holding(w)]
            if not holders and time.monotonic() < give_up:
                simulate_work(0.02)  # the controller's pace while no worker holds anything
                continue
            worker = self.rng.choice(holders or candidates)
            self.counts["pause tries"] += 1
            stopped = _stop_between_store_steps(worker.proc, self.limits)
            caught = self.holding(worker)  # its events file is still while it is stopped
            if caught or time.monotonic() >= give_up:
                break
            os.kill(worker.proc.pid, signal.SIGCONT)  # it left its hold meanwhile: again
        self.controlled[worker.index].pauses.append((stopped, float("inf")))
        self.resumes.append((stopped + PAUSE, worker.index))
        self.counts["pauses"] += 1
        self.counts["paused holders"] += caught

    def resume_due(self, now: float) -> None:
        due = [index for at, index in self.resumes if at <= now]
        self.resumes = [(at, index) for at, index in self.resumes if at > now]
        for index in due:
            worker = self.workers[index]
            os.kill(worker.proc.pid, signal.SIGCONT)
            pauses = self.controlled[index].pauses
            pauses[-1] = (pauses[-1][0], time.monotonic())

    def cut_connections(self) -> None:
        """Close every connection to the store server (SQLite has none: nothing to do)."""
        if self.server is not None:
            self.counts["connections cut"] += self.server.cut()

    def freeze_store(self) -> None:
        """SIGSTOP the store server for FREEZE seconds; SQLite: a worker, at any moment."""
        if self.server is not None:
            parent = self.server.pids()[0]
            os.kill(parent, signal.SIGSTOP)  # first: it starts no process while stopped
            pids = [parent, *self.server.pids()[1:]]
        else:
            candidates = self.live()
            if not candidates:
                return
            worker = self.rng.choice(candidates)
            pids = [worker.proc.pid]
            frozen = time.monotonic()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        simulate_work(FREEZE)  # the length of the stall, shorter than the lease TTL
        for pid in reversed(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if self.server is None:
            self.controlled[worker.index].pauses.append((frozen, time.monotonic()))
        self.counts["freezes"] += 1

    def restart_store(self) -> None:
        began = time.monotonic()
        if self.server is not None:
            self.server.restart()
        else:
            # SQLite: nothing of the store lives on once no process has the file open.
            self.limits.close()
            for worker in list(self.workers.values()):
                os.kill(worker.proc.pid, signal.SIGKILL)
                # Its own time: the store sees it die at once and may grant its units to
                # a worker not killed yet.
                self.controlled[worker.index].killed_at = time.monotonic()
            for worker in list(self.workers.values()):
                worker.proc.join(10)
                del self.workers[worker.index]
            self.resumes = []
            self.limits = Limits(self.url)
            for _ in range(WORKERS):
                self.start_worker()
        self.restart_seconds.append(time.monotonic() - began)
        self.counts["restarts"] += 1

    def run(self, seconds: float) -> None:
        """One fault every STEP seconds for ``seconds``; then wait for the last resume."""
        faults: dict[str, Callable[[], None]] = {
            "kill": self.kill_one,
            "pause": self.pause_a_holder,
            "cut": self.cut_connections,
            "freeze": self.freeze_store,
            "restart": self.restart_store,
        }
        began = time.monotonic()
        for step in range(int(seconds / STEP)):
            self.pace_until(began + STEP * (step + 1))
            fault = SCHEDULE[step % len(SCHEDULE)]
            self.log.append((time.monotonic(), fault))
            faults[fault]()
        self.pace_until(max((at for at, _ in self.resumes), default=0.0))

    def pace_until(self, moment: float) -> None:
        """Resume paused workers as they fall due, until ``moment``."""
        while (now := time.monotonic()) < moment:
            self.resume_due(now)
            simulate_work(0.05)  # the controller's schedule: resumes due every 50 ms
        self.resume_due(time.monotonic())

    def finish(self, timeout: float = 30.0) -> None:
        """Ask every worker to stop, and wait for them."""
        assert not self.resumes, self.resumes
        self.stop_path.touch()
        deadline = time.monotonic() + timeout
        for worker in self.workers.values():
            worker.proc.join(max(0.1, deadline - time.monotonic()))

    def abandon(self) -> None:
        """Whatever happened: no worker outlives the test."""
        for worker in self.workers.values():
            if worker.proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.proc.pid, signal.SIGCONT)
                worker.proc.kill()
                worker.proc.join(10)


def _after(log: list[tuple[float, str]], times: list[float]) -> dict[str, int]:
    """How many of ``times`` fell after each kind of fault (the latest one before it)."""
    after: dict[str, int] = {}
    for at in times:
        before = [fault for began, fault in log if began <= at]
        kind = before[-1] if before else "no fault"
        after[kind] = after.get(kind, 0) + 1
    return after


def _stores() -> list[str]:
    return [store for store in ("sqlite", "redis", "postgres") if store in selected_store_ids()]


def test_the_checker_flags_over_admission_unless_the_holder_was_paused_past_its_lease() -> None:
    def hold(
        lease: str, fence: int, enter: float, exit: float, told: float | None = None
    ) -> list[dict[str, Any]]:
        names, occupy = ["a"], 1
        events = [dict(e="enter", lease=lease, fence=fence, names=names, occupy=occupy, call=enter)]
        events[0]["t"] = enter
        if told is not None:
            events.append(dict(e="told", lease=lease, t=told))
        events.append(dict(e="exit", lease=lease, t=exit))
        events.append(dict(e="released", lease=lease, how="lost" if told else "ok", t=exit))
        return events

    slots = {"a": 1}
    first, second = hold("x", 1, 0.0, 10.0, told=9.0), hold("y", 2, 5.0, 6.0)
    # Two holders at once on one slot, the first neither paused nor told in time: caught.
    over = replay({0: first, 1: second}, {}, slots, LEASE_TTL)
    assert any("held 2 units > 1 slots" in v for v in over.violations), over.violations
    # The same, the first paused from 1.0 to 8.0 (past the TTL) and told on resuming: allowed.
    paused = {0: Controlled(pauses=[(1.0, 8.0)])}
    assert replay({0: first, 1: second}, paused, slots, LEASE_TTL).violations == []
    # Paused past the TTL yet never told: caught.
    untold = replay({0: hold("x", 1, 0.0, 10.0), 1: second}, paused, slots, LEASE_TTL)
    assert any("never told" in v for v in untold.violations), untold.violations
    # A killed holder counts until its kill; a fence that does not grow is caught.
    killed = {0: Controlled(killed_at=4.0)}
    assert replay({0: first[:1], 1: second}, killed, slots, LEASE_TTL).violations == []
    stale = replay({0: first[:1], 1: hold("y", 0, 5.0, 6.0)}, killed, slots, LEASE_TTL)
    assert any("fence" in v for v in stale.violations), stale.violations


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("store_id", _stores())
def test_processes_killed_paused_and_a_restarted_store_never_over_admit(
    store_id: str, tmp_path: Path
) -> None:
    began = time.monotonic()
    with store_under_test(store_id, tmp_path) as (url, server):
        limits = Limits(url)
        for name, slots in SLOTS.items():
            limits.create(name, slots=slots, lease_ttl=LEASE_TTL)
        limits.ensure(PROBE, slots=1)
        chaos = Chaos(url, server, tmp_path, random.Random(14), limits)
        try:
            for _ in range(WORKERS):
                chaos.start_worker()
            wait_until(
                lambda: all(w.events.exists() for w in chaos.workers.values()),
                60.0,
                "every worker to start",
            )
            chaos.run(CHAOS_SECONDS)
            chaos.finish()
            unstopped = [w.index for w in chaos.workers.values() if w.proc.exitcode != 0]
            statuses = {name: wait_for_idle(chaos.limits, name, LEASE_TTL + 5) for name in SLOTS}
        finally:
            chaos.abandon()
            chaos.limits.close()
    assert not unstopped, f"workers that did not stop cleanly: {unstopped}"
    events = {index: read_events(tmp_path / f"worker-{index}.jsonl") for index in chaos.controlled}
    result: Replay = replay(events, chaos.controlled, SLOTS, LEASE_TTL)
    restarts = ", ".join(f"{s:.2f}" for s in chaos.restart_seconds)
    print(
        f"\n{store_id}: {time.monotonic() - began:.1f} s; {result.counts['enter']} grants,"
        f" {chaos.counts}, {len(chaos.controlled)} worker processes in all,"
        f" restarts took {restarts} s; leases lost: {sum(h.lost for h in result.holds)}"
        f" (holds paused past the TTL: {result.paused_past_ttl}); acquire timeouts:"
        f" {result.counts['timeout']}, store errors: {result.counts['store-error']},"
        f" releases: ok {result.counts['released-ok']}, LeaseLost"
        f" {result.counts['released-lost']}, store error {result.counts['released-store-error']};"
        f" peaks {result.peaks}; store errors seen: {dict(result.store_errors)}"
        f" after: {_after(chaos.log, result.error_times)}"
    )

    assert not result.violations, "\n".join(result.violations)
    assert all(status.in_use == 0 and not status.waiters for status in statuses.values())
    assert result.counts["enter"] > 100, result.counts
    assert result.peaks == SLOTS, f"the load never filled the limits: {result.peaks}"
    assert chaos.counts["kills"] >= 2 and chaos.counts["restarts"] >= 2, chaos.counts
    assert chaos.counts["paused holders"] >= 1, chaos.counts
    assert result.paused_past_ttl >= 1
