"""How processes sharing one SQLite store find each other on a host.

Beside ``<db>`` lives a directory ``<db>.sluice/`` holding:

* ``write.lock`` — taken (``flock``) around every write transaction, so writers
  queue in the kernel instead of in SQLite's sleep-and-retry busy handler; a
  writer waits for it at most its step deadline (:meth:`FileLock.acquire`);
* ``stalled`` — touched by a writer that has waited :data:`STALL_AFTER` seconds
  or more for the write lock: the store is stalled (a paused process holds the
  lock), and the next write step credits the leases and tickets whose holders
  could not renew meanwhile (see :mod:`sluice.store.sqlite.stall`);
* ``procs/<process-id>.lock`` — each registered process holds an exclusive
  ``flock`` on its own file for as long as it lives. The kernel drops it when
  the process dies, however it dies, so "can I take this lock?" answers "is it
  gone?" exactly, with no timeout and no PID-reuse ambiguity.

Each registered process also binds a Unix datagram socket (abstract namespace
on Linux) recorded in ``sluice_processes.wake_addr``; a change that may let a
waiter through sends that waiter's ticket ids there. One listener thread per
process receives them and also watches, through ``pidfd``, the processes a
local waiter is queued behind, so a holder killed with SIGKILL wakes its
waiters at once rather than after a lease TTL.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import selectors
import socket
import sys
import tempfile
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from sluice import _fork

__all__ = [
    "SAFETY_INTERVAL",
    "STALL_AFTER",
    "FileLock",
    "ProcessInfo",
    "ProcessLink",
    "clear_stall",
    "last_commit",
    "lock_free",
    "mark_stall",
    "prepare_files",
    "process_gone",
    "stall_marked",
    "write_lock_path",
]

log = logging.getLogger("sluice.store.sqlite")
_HAS_PIDFD = hasattr(os, "pidfd_open") and sys.platform.startswith("linux")
_PAYLOAD = 8192  # bytes per wake-up datagram

# Wake-ups here are reliable (local datagrams, sent with back-pressure) and exits
# are watched, so the safety re-check is rare; without pidfd it is how a waiter
# notices a crashed holder, so it runs every second.
SAFETY_INTERVAL = 30.0 if _HAS_PIDFD else 1.0

STALL_AFTER = 0.25
"""Seconds of waiting for the write lock after which a writer marks the store stalled."""


@dataclass(frozen=True)
class ProcessInfo:
    """Who this process is, as recorded on its leases and tickets."""

    id: str
    pid: int
    host: str


def side_dir(db_path: str) -> Path:
    """The directory of lock files that sits beside a database file."""
    return Path(db_path + ".sluice")


def write_lock_path(db_path: str) -> Path:
    """The database-wide writer lock file, taken around every write transaction."""
    return side_dir(db_path) / "write.lock"


def prepare_files(db_path: str) -> None:
    """Create the database's parent directory and its side directory."""
    Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    (side_dir(db_path) / "procs").mkdir(parents=True, exist_ok=True)


def _socket_address(process_id: str) -> tuple[str, str]:
    """(address to bind, address as stored) for a process's wake-up socket."""
    if sys.platform.startswith("linux"):
        return "\0sluice-" + process_id, "@sluice-" + process_id
    path = os.path.join(tempfile.gettempdir(), f"sluice-{process_id}.sock")
    return path, path


def _bindable(stored: str) -> str:
    return "\0" + stored[1:] if stored.startswith("@") else stored


class FileLock:
    """An exclusive flock on a lock file of its own descriptor, as a context manager
    (waiting without bound) or through :meth:`acquire` (waiting at most a timeout).

    Two FileLocks on one file exclude each other even in one process (flock locks
    belong to the open file, not the process).
    """

    __slots__ = ("_cond", "_state", "_thread", "_wanted", "fd")

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._cond = threading.Condition()
        self._state = "idle"  # "waiting": the helper blocks in flock; "held": it got it for us
        self._wanted = 0  # callers of acquire() waiting now
        self._thread: threading.Thread | None = None

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def acquire(self, timeout: float, on_slow: Callable[[], None] | None = None) -> bool:
        """Take the lock within ``timeout`` seconds; False if another holder kept it.

        Free, it is one non-blocking flock. Held elsewhere, a helper thread waits for
        it in the kernel (woken when it frees, no polling) and hands it over, so the
        caller can stop waiting: a lock the helper gets for a caller who left is let
        go at once. ``on_slow`` is called once the caller has waited
        :data:`STALL_AFTER` seconds. Release with :meth:`release`.
        """
        with self._cond:
            if self._state == "idle":
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    self._block()
            self._wanted += 1
            try:
                if on_slow is not None and timeout > STALL_AFTER:
                    if self._cond.wait_for(self._handed, STALL_AFTER):
                        return self._take()
                    timeout -= STALL_AFTER
                    on_slow()
                if self._cond.wait_for(self._handed, timeout):
                    return self._take()
                return False
            finally:
                self._wanted -= 1

    def release(self) -> None:
        """Let the lock go (taken with :meth:`acquire`)."""
        with self._cond:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            if self._wanted:
                self._block()  # another caller of this process waits for it

    def _handed(self) -> bool:
        return self._state == "held"

    def _take(self) -> bool:
        self._state = "idle"
        return True

    def _block(self) -> None:
        """Under the condition: have the helper wait for the lock in the kernel."""
        self._state = "waiting"
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._wait_in_kernel, name="sluice-write-lock", daemon=True
            )
            self._thread.start()
        self._cond.notify_all()

    def _wait_in_kernel(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._state == "waiting")
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            except OSError:
                return  # closed
            with self._cond:
                if self._wanted:
                    self._state = "held"
                    self._cond.notify_all()
                else:  # its caller gave up meanwhile
                    fcntl.flock(self.fd, fcntl.LOCK_UN)
                    self._state = "idle"

    def close(self) -> None:
        """Close the descriptor (releasing the lock if held)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)


@functools.lru_cache(maxsize=64)
def _stall_path(db_path: str) -> Path:
    return side_dir(db_path) / "stalled"  # cached: every write step stats it


def mark_stall(db_path: str) -> None:
    """Say that a writer has waited :data:`STALL_AFTER` seconds for the write lock."""
    with contextlib.suppress(OSError):
        _stall_path(db_path).touch()


def stall_marked(db_path: str) -> float | None:
    """When a writer last said it waited long for the write lock (None: never since cleared)."""
    try:
        return os.stat(_stall_path(db_path)).st_mtime
    except OSError:
        return None


def clear_stall(db_path: str) -> None:
    """Forget the stall mark (under the write lock, once the stall is credited)."""
    with contextlib.suppress(OSError):
        os.unlink(_stall_path(db_path))


def last_commit(db_path: str) -> float:
    """When a transaction last wrote to the database: the write-ahead log's modification
    time (the database file's, when there is no log)."""
    for path in (db_path + "-wal", db_path):
        with contextlib.suppress(OSError):
            return os.stat(path).st_mtime
    return 0.0


def process_gone(db_path: str, process_id: str) -> bool:
    """Whether a registered process of this host is gone, changing nothing (for reads)."""
    return lock_free(side_dir(db_path) / "procs" / f"{process_id}.lock")


def lock_free(path: Path) -> bool:
    """Whether no process holds the lock file ``path`` (none does if it is missing).

    A process holds its lock file with an exclusive ``flock`` for as long as it
    lives, and the kernel drops it however the process ends; a shared probe that
    gets through changes nothing and tells that it is gone.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


class ProcessLink:
    """This process's lock files, wake-up socket and listener thread for one database."""

    def __init__(self, db_path: str, on_wake: Callable[[Collection[str]], None]) -> None:
        self._dir = side_dir(db_path)
        self._on_wake = on_wake
        self._write_lock = FileLock(write_lock_path(db_path))
        self._lock = threading.Lock()
        self._info: ProcessInfo | None = None
        self._stored: str | None = None  # the wake-up address as recorded
        self._lock_fd: int | None = None
        self._sock: socket.socket | None = None
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # A full receiver makes sendto wait (briefly) rather than drop a wake-up.
        self._sender.settimeout(0.1)
        self._thread: threading.Thread | None = None
        self._ctl_r, self._ctl_w = os.pipe()
        self._pending: list[tuple[int, str]] = []  # (pid, ticket) watches to add
        self._watchers: dict[int, set[str]] = defaultdict(set)  # pid -> tickets to wake
        self._watching: dict[str, set[int]] = {}  # ticket -> pids it watches
        self._closing = False
        _fork.track(self, ProcessLink._drop_after_fork)

    # ------------------------------------------------------------- write lock

    def write_lock(self) -> FileLock:
        """The database-wide writer lock (waiters block in the kernel; no polling)."""
        return self._write_lock

    # ------------------------------------------------------------- identity

    def start(self) -> tuple[ProcessInfo, str]:
        """Take this process's liveness lock, bind its socket, start its listener (once)."""
        if self._info is not None and self._stored is not None:
            return self._info, self._stored
        process_id = uuid.uuid4().hex[:20]
        lock_fd = os.open(self._dir / "procs" / f"{process_id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        bind_to, stored = _socket_address(process_id)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(bind_to)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.setblocking(False)
        self._lock_fd, self._sock = lock_fd, sock
        self._info = ProcessInfo(process_id, os.getpid(), socket.gethostname())
        self._thread = threading.Thread(
            target=self._listen, name=f"sluice-listener-{process_id[:8]}", daemon=True
        )
        self._thread.start()
        self._stored = stored
        return self._info, stored

    def is_alive(self, process_id: str) -> bool:
        """Whether the process still holds its liveness lock; clears its file if not."""
        path = self._dir / "procs" / f"{process_id}.lock"
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return False
        finally:
            os.close(fd)

    # ------------------------------------------------------------- wake-ups

    def send(self, targets: list[tuple[str, list[str]]]) -> None:
        """Send ticket ids to other processes' sockets; a gone process is simply skipped."""
        for stored, ticket_ids in targets:
            address = _bindable(stored)
            for payload in _payloads(ticket_ids):
                try:
                    self._sender.sendto(payload, address)
                except OSError as exc:
                    # Gone (refused / missing) or flooded: the waiter's own re-check covers it.
                    if exc.errno not in (
                        errno.ECONNREFUSED,
                        errno.ENOENT,
                        errno.EAGAIN,
                        errno.ENOBUFS,
                        None,  # timed out: the receiver is stuck; its re-check covers it
                    ):
                        raise

    def watch(self, ticket_id: str, pids: Collection[int]) -> None:
        """Wake ``ticket_id`` when any of these local processes exits."""
        if not _HAS_PIDFD or self._thread is None:
            return
        with self._lock:
            known = self._watching.setdefault(ticket_id, set())
            new = [pid for pid in pids if pid not in known]
            if not new:
                return
            known.update(new)
            self._pending.extend((pid, ticket_id) for pid in new)
        os.write(self._ctl_w, b"w")

    def unwatch(self, ticket_id: str) -> None:
        """Stop waking ``ticket_id`` on process exits."""
        with self._lock:
            for pid in self._watching.pop(ticket_id, ()):
                tickets = self._watchers.get(pid)
                if tickets is not None:
                    tickets.discard(ticket_id)

    def _listen(self) -> None:
        assert self._sock is not None
        selector = selectors.DefaultSelector()
        selector.register(self._sock, selectors.EVENT_READ, "socket")
        selector.register(self._ctl_r, selectors.EVENT_READ, "control")
        pidfds: dict[int, int] = {}  # pid -> pidfd
        try:
            while not self._closing:
                for key, _ in selector.select():
                    if key.data == "socket":
                        self._drain_socket()
                    elif key.data == "control":
                        os.read(self._ctl_r, 4096)
                        if self._closing:
                            return
                        self._add_watches(selector, pidfds)
                    else:
                        pid = int(key.data)
                        selector.unregister(key.fd)
                        os.close(key.fd)
                        pidfds.pop(pid, None)
                        with self._lock:
                            tickets = self._watchers.pop(pid, set())
                            for ticket_id in tickets:
                                self._watching.get(ticket_id, set()).discard(pid)
                        if tickets:
                            self._deliver_local(tickets)
        finally:
            for fd in pidfds.values():
                os.close(fd)
            selector.close()

    def _deliver_local(self, ticket_ids: Collection[str]) -> None:
        # The listener must outlive any error in a callback: every waiter of the
        # process depends on it.
        try:
            self._on_wake(ticket_ids)
        except Exception:
            log.exception("sluice: a wake-up handler failed")

    def _drain_socket(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            ids = [t for t in data.decode("ascii", "replace").split(",") if t]
            if ids:
                self._deliver_local(ids)

    def _add_watches(self, selector: selectors.BaseSelector, pidfds: dict[int, int]) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        exited: set[str] = set()
        for pid, ticket_id in pending:
            if pid not in pidfds:
                try:
                    fd = os.pidfd_open(pid)
                except ProcessLookupError:
                    exited.add(ticket_id)
                    continue
                except OSError:
                    continue  # not allowed to watch it: the safety re-check covers it
                pidfds[pid] = fd
                selector.register(fd, selectors.EVENT_READ, str(pid))
            with self._lock:
                self._watchers[pid].add(ticket_id)
        if exited:
            self._deliver_local(exited)

    # ------------------------------------------------------------- shutdown

    def close(self) -> None:
        """Stop the listener and give up this process's locks and socket."""
        self._closing = True
        if self._thread is not None:
            with contextlib.suppress(OSError):
                os.write(self._ctl_w, b"q")
            if self._thread is not threading.current_thread():
                self._thread.join(timeout=2.0)
        if self._sock is not None:
            self._sock.close()
        if self._lock_fd is not None and self._info is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._dir / "procs" / f"{self._info.id}.lock")
            os.close(self._lock_fd)
            self._lock_fd = None
        for fd in (self._write_lock.fd, self._ctl_r, self._ctl_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._sender.close()
        _fork.untrack(self)

    def _drop_after_fork(self) -> None:
        # In a forked child: close the inherited descriptors WITHOUT unlocking, so
        # the parent keeps its locks and the child does not keep the parent "alive".
        for fd in (self._lock_fd, self._write_lock.fd, self._ctl_r, self._ctl_w):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self._sock is not None:
            self._sock.close()
        self._sender.close()
        self._lock_fd = None
        self._thread = None
        self._closing = True


def _payloads(ticket_ids: list[str]) -> Iterator[bytes]:
    chunk: list[str] = []
    size = 0
    for ticket_id in ticket_ids:
        if size + len(ticket_id) + 1 > _PAYLOAD and chunk:
            yield ",".join(chunk).encode("ascii")
            chunk, size = [], 0
        chunk.append(ticket_id)
        size += len(ticket_id) + 1
    if chunk:
        yield ",".join(chunk).encode("ascii")
