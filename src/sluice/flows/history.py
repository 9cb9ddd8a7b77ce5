"""Recording run history off the hot path: one background writer per store and process.

State changes only append records to a queue; a daemon thread writes them in
batches (what accumulates within 25 ms of a batch's first record) through
the store's :class:`~sluice.history.HistoryStore`. A flow flushes the writer when
it ends, then asks it to prune the history to ``SLUICE_HISTORY_KEEP`` runs
(and ``SLUICE_HISTORY_MAX_AGE``); every writer is flushed at interpreter exit.
A failing write is logged and dropped: history never fails a flow.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from sluice import settings
from sluice.errors import SluiceError
from sluice.store import open_history
from sluice.store.history import HistoryRecord, HistoryStore

__all__ = ["HistoryWriter", "writer_for"]

log = logging.getLogger("sluice")

_BATCH = 5000

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

    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self._queue: queue.SimpleQueue[HistoryRecord | _Marker] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._dirty: dict[str, _Snapshot] = {}
        self._dirty_lock = threading.Lock()

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
        return marker.done.wait(timeout)

    def _run(self) -> None:
        while True:
            batch: list[HistoryRecord] = []
            markers: list[_Marker] = []
            item = self._queue.get()
            until = time.monotonic() + _LINGER
            while True:
                if isinstance(item, _Marker):
                    markers.append(item)
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
                dirty, self._dirty = self._dirty, {}
            batch.extend(run.record() for run in dirty.values())
            if batch:
                try:
                    self.store.write(batch)
                except Exception as exc:  # history must never take a flow down
                    log.warning("sluice: dropped %d history records: %s", len(batch), exc)
            if any(m.prune for m in markers):
                self._prune()
            for marker in markers:
                marker.done.set()

    def _prune(self) -> None:
        try:
            self.store.prune(settings.history_keep(), settings.history_max_age())
        except Exception as exc:
            log.warning("sluice: could not prune the run history: %s", exc)


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
            writer: HistoryWriter | None = HistoryWriter(open_history(url))
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
