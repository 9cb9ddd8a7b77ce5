"""Recording run history off the hot path: one background writer per store and process.

State changes only append records to a queue; a daemon thread writes them in
batches (what accumulates within 25 ms of a batch's first record) through
the store's :class:`~sluice.history.HistoryStore`. A flow run waits for its first
Running record to be written before its body starts (so a process killed later
leaves a run that readers end as Crashed). A flow flushes the writer when
it ends, then asks it to prune the history to ``SLUICE_HISTORY_KEEP`` runs
(and ``SLUICE_HISTORY_MAX_AGE``); every writer is flushed at interpreter exit.
A failing write is logged and dropped: history never fails a flow. Before its first
write, the writer creates the store if it does not exist yet (as any command that
writes does), so readers such as ``sluice run ls`` find it even when no task of the
flow used a limit.

While the process has flow runs that have not ended, the writer also renews the
store's heartbeat for them every ``SLUICE_HISTORY_HEARTBEAT`` seconds (before
writing, when one is due), so readers can tell its runs from those of a process
that is gone. If the heartbeat says readers already ended them as Crashed (the
process was paused, or cut off from the store, for too long), the writer logs it
and records nothing more about those runs.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from sluice import settings
from sluice.errors import SluiceError
from sluice.store import acquire_store, open_history, release_store
from sluice.store.history import MISSED_BEATS, FlowRunRecord, HistoryRecord, HistoryStore

__all__ = ["HistoryWriter", "writer_for"]

log = logging.getLogger("sluice.flows")

_BATCH = 200
"""Records one write takes at most (a flush excepted): on SQLite a write holds the
store's write lock, so a long one would keep grants and releases waiting."""

_PAUSE = 0.005
"""Seconds the writer rests after a write while records wait: on SQLite the history
shares the store's write lock, and a writer that takes it back at once would keep the
limits' own steps (grants, releases) out for as long as a backlog lasts."""

_LINGER = 0.025
"""Seconds a batch waits for more records after its first (a flush does not wait): a
run that changes state several times within it is written once, not once per change."""


@dataclass
class _Marker:
    """A flush (and optional prune) request, answered once everything before it is written."""

    done: threading.Event
    prune: bool = False


class _Snapshot(Protocol):
    """A run whose current record the writer takes when it writes (the latest wins)."""

    id: str

    def record(self) -> HistoryRecord: ...


class HistoryWriter:
    """Batches records to one history store on a daemon thread."""

    def __init__(self, store: HistoryStore, url: str | None = None) -> None:
        self.store = store
        self._url = url  # the store to create before the first write, if any
        self._queue: queue.SimpleQueue[HistoryRecord | _Marker] = queue.SimpleQueue()
        self._urgent = threading.Event()  # set by a flush: no rest before its batch
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._dirty: dict[str, _Snapshot] = {}
        self._dirty_lock = threading.Lock()
        self._open: set[str] = set()  # flow runs written while not ended
        self._lost: set[str] = set()  # flow runs readers ended as Crashed under us
        self._beat_at = 0.0  # time.monotonic() of the last heartbeat

    def put(self, record: HistoryRecord) -> None:
        """Queue one record for the next batch."""
        self._queue.put(record)
        if self._thread is None:
            self._start()

    def touch(self, run: _Snapshot) -> None:
        """The run changed: write its record as it is when the next batch is written.

        A run that changes several times between two batches is written once.
        """
        with self._dirty_lock:
            self._dirty[run.id] = run
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sluice-history", daemon=True
                )
                self._thread.start()

    def flush(self, timeout: float | None = 30.0, *, prune: bool = False) -> bool:
        """Wait until every record queued so far is written; then prune if asked."""
        if self._thread is None:
            self._start()
        marker = _Marker(threading.Event(), prune)
        self._queue.put(marker)
        self._urgent.set()
        return marker.done.wait(timeout)

    def _run(self) -> None:
        while True:
            batch: list[HistoryRecord] = []
            markers: list[_Marker] = []
            every = settings.history_heartbeat()
            item: HistoryRecord | _Marker | None
            try:
                if self._dirty:  # runs left over from the last batch
                    item = self._queue.get(timeout=_PAUSE)
                elif self._open:
                    item = self._queue.get(timeout=max(self._beat_at + every - time.monotonic(), 0))
                else:
                    item = self._queue.get()
            except queue.Empty:
                if not self._dirty:
                    self._beat(every)
                    continue
                item = None
            until = time.monotonic() + _LINGER
            while item is not None:
                if isinstance(item, _Marker):
                    markers.append(item)
                    self._urgent.clear()  # this flush is served by this batch
                else:
                    batch.append(item)
                if len(batch) >= _BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    left = until - time.monotonic()
                    if markers or left <= 0:
                        break
                    try:
                        item = self._queue.get(timeout=left)
                    except queue.Empty:
                        break
            with self._dirty_lock:
                room = max(_BATCH - len(batch), 1)
                if markers or len(self._dirty) <= room:  # a flush writes them all
                    dirty, self._dirty = self._dirty, {}
                else:  # the rest in the next batch: no write holds the lock for long
                    first = list(itertools.islice(self._dirty, room))  # not the whole backlog
                    dirty = {key: self._dirty.pop(key) for key in first}
            batch.extend(run.record() for run in dirty.values())
            if self._open:
                self._beat(every)
            if self._lost:
                batch = [r for r in batch if _flow_run_of(r) not in self._lost]
            self._track(batch, every)
            if batch:
                if self._url is not None and _create_store(self._url):
                    self._url = None  # else tried again before the next write
                try:
                    self.store.write(batch)
                except Exception as exc:  # history must never take a flow down
                    log.warning("sluice: dropped %d history records: %s", len(batch), exc)
                if not markers:
                    self._urgent.wait(_PAUSE)
            if any(m.prune for m in markers):
                self._prune()
            for marker in markers:
                marker.done.set()

    def _track(self, batch: list[HistoryRecord], every: float) -> None:
        """Note the flow runs this batch opens and ends; beat first if it opens the first."""
        now_open = set(self._open)
        for record in batch:
            if isinstance(record, FlowRunRecord):
                if record.ended_at is None:
                    now_open.add(record.id)
                else:
                    now_open.discard(record.id)
        if now_open and not self._open:
            self._beat(every)  # while none is open: an answer of False concerns no run
        self._open = now_open

    def _beat(self, every: float) -> None:
        """Renew the heartbeat if one is due; learn whether our open runs were ended."""
        if time.monotonic() - self._beat_at < every:
            return
        self._beat_at = time.monotonic()
        try:
            alive = self.store.heartbeat()
        except Exception as exc:
            log.warning("sluice: could not renew the run history's heartbeat: %s", exc)
            return
        if not alive and self._open:
            log.warning(
                "sluice: the run history on %s ended %d flow run(s) of this process as Crashed"
                " (no heartbeat for %g s or more: the process was paused or cut off from the"
                " store); what they do from now on is not recorded: %s",
                self.store.url,
                len(self._open),
                every * MISSED_BEATS,
                ", ".join(sorted(self._open)),
            )
            self._lost |= self._open
            self._open.clear()

    def _prune(self) -> None:
        try:
            self.store.prune(settings.history_keep(), settings.history_max_age())
        except Exception as exc:
            log.warning("sluice: could not prune the run history: %s", exc)


def _create_store(url: str) -> bool:
    """Create the store at ``url`` unless it exists (a read that creates its schema);
    whether it exists now."""
    try:
        store = acquire_store(url)
        try:
            store.list_limits()
        finally:
            release_store(store)
    except Exception as exc:  # the write that follows says what is wrong, if anything
        log.debug("sluice: could not open the store for the run history: %s", exc)
        return False
    return True


def _flow_run_of(record: HistoryRecord) -> str:
    return record.id if isinstance(record, FlowRunRecord) else record.flow_run_id


_writers: dict[str, HistoryWriter | None] = {}
_writers_lock = threading.Lock()


def writer_for(url: str) -> HistoryWriter | None:
    """The history writer for a store URL, or None if history is off or unsupported there."""
    if not settings.history_enabled():
        return None
    with _writers_lock:
        if url in _writers:
            return _writers[url]
        try:
            writer: HistoryWriter | None = HistoryWriter(open_history(url), url)
        except SluiceError as exc:
            log.warning("sluice: flows run without history: %s", exc)
            writer = None
        _writers[url] = writer
        return writer


@atexit.register
def _flush_all() -> None:
    with _writers_lock:
        writers = [w for w in _writers.values() if w is not None]
    for writer in writers:
        writer.flush(timeout=10.0)
