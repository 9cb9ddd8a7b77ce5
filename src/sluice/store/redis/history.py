"""Run history in Redis: the same server and key prefix as the limits, so one URL configures both.

Keys (all under the deployment's hash tag ``{prefix}``, like the limits'):

* ``{prefix}:hist:runs``: sorted set of flow run ids, scored by ``created_at``;
* ``{prefix}:hist:run:ID``: the flow run record (JSON);
* ``{prefix}:hist:tasks:ID``: hash of task run id -> task run record (JSON);
* ``{prefix}:hist:states:ID``: hash of ``run_id:seq`` -> state record (JSON).

A batch is written in one ``MULTI``/``EXEC`` transaction; a state is written
with ``HSETNX``, so writing it again changes nothing. Retention is bounded by
:meth:`RedisHistory.prune`, which the flow layer calls.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import redis
from redis.exceptions import RedisError

from sluice.errors import RunNotFound, StoreError, StoreUnavailable
from sluice.store.history import (
    FlowRunDetail,
    FlowRunRecord,
    HistoryRecord,
    StateRecord,
    TaskRunDetail,
    TaskRunRecord,
)
from sluice.store.history_rows import check_list_limit, check_prune, check_run_id, rows_of
from sluice.store.redis.config import RedisConfig

__all__ = ["RedisHistory", "from_url"]

_CHUNK = 500  # ids per command when deleting many runs


class RedisHistory:
    """Flow runs, task runs and states under ``{prefix}:hist:*`` keys of the limits' Redis."""

    def __init__(self, config: RedisConfig) -> None:
        self.url = config.url
        self._config = config
        self._base = f"{{{config.prefix}}}:hist"
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._closed = False

    # ------------------------------------------------------------- plumbing

    def _redis(self) -> redis.Redis:
        if self._closed:
            raise StoreError(f"run history on {self.url} is closed")
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = redis.Redis.from_url(
                        self._config.connect_url,
                        socket_connect_timeout=5.0,
                        socket_timeout=30.0,
                        socket_keepalive=True,
                        decode_responses=True,
                    )
        return self._client

    def _error(self, exc: RedisError) -> StoreError:
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            return StoreUnavailable(
                f"run history on {self.url} is unreachable: {exc}; check that Redis is running"
            )
        return StoreError(f"run history on {self.url} failed: {exc}")

    def _run_key(self, run_id: str) -> str:
        return f"{self._base}:run:{run_id}"

    def _tasks_key(self, run_id: str) -> str:
        return f"{self._base}:tasks:{run_id}"

    def _states_key(self, run_id: str) -> str:
        return f"{self._base}:states:{run_id}"

    # ------------------------------------------------------------- the protocol

    def write(self, batch: Sequence[HistoryRecord]) -> None:
        """Upsert runs and add states, in one MULTI/EXEC transaction."""
        if not rows_of(batch):  # checks every record
            return
        try:
            with self._redis().pipeline(transaction=True) as pipe:
                for record in batch:
                    text = json.dumps(asdict(record), separators=(",", ":"))
                    if isinstance(record, FlowRunRecord):
                        pipe.set(self._run_key(record.id), text)
                        pipe.zadd(f"{self._base}:runs", {record.id: record.created_at})
                    elif isinstance(record, TaskRunRecord):
                        pipe.hset(self._tasks_key(record.flow_run_id), record.id, text)
                    else:
                        field = f"{record.run_id}:{record.seq}"
                        pipe.hsetnx(self._states_key(record.flow_run_id), field, text)
                pipe.execute()
        except RedisError as exc:
            raise self._error(exc) from exc

    def list_flow_runs(self, limit: int = 20) -> list[FlowRunRecord]:
        """The newest flow runs first."""
        check_list_limit(limit)
        try:
            client = self._redis()
            ids = [str(i) for i in client.zrevrange(f"{self._base}:runs", 0, limit - 1)]
            texts = client.mget([self._run_key(i) for i in ids]) if ids else []
        except RedisError as exc:
            raise self._error(exc) from exc
        return [_flow(json.loads(t)) for t in texts if t is not None]

    def get_flow_run(self, run_id: str) -> FlowRunDetail:
        """One flow run with its states and task runs."""
        check_run_id(run_id)
        try:
            with self._redis().pipeline(transaction=True) as pipe:  # one consistent snapshot
                pipe.get(self._run_key(run_id))
                pipe.hvals(self._tasks_key(run_id))
                pipe.hvals(self._states_key(run_id))
                run_text, task_texts, state_texts = pipe.execute()
        except RedisError as exc:
            raise self._error(exc) from exc
        if run_text is None:
            raise RunNotFound(run_id)
        by_run: dict[str, list[StateRecord]] = {}
        for state in sorted(
            (StateRecord(**json.loads(t)) for t in state_texts), key=lambda s: (s.run_id, s.seq)
        ):
            by_run.setdefault(state.run_id, []).append(state)
        tasks = sorted(
            (_task(json.loads(t)) for t in task_texts), key=lambda t: (t.created_at, t.id)
        )
        return FlowRunDetail(
            _flow(json.loads(run_text)),
            tuple(by_run.get(run_id, ())),
            tuple(TaskRunDetail(t, tuple(by_run.get(t.id, ()))) for t in tasks),
        )

    def prune(self, keep_runs: int, max_age_seconds: float | None = None) -> int:
        """Delete old ended flow runs with their task runs and states."""
        keep_runs, max_age_seconds = check_prune(keep_runs, max_age_seconds)
        runs = f"{self._base}:runs"
        try:
            client = self._redis()
            candidates = {str(i) for i in client.zrevrange(runs, keep_runs, -1)}
            if max_age_seconds is not None:
                cutoff = time.time() - max_age_seconds
                candidates.update(
                    str(i) for i in client.zrangebyscore(runs, "-inf", f"({cutoff!r}")
                )
            ordered = sorted(candidates)
            deleted = 0
            for start in range(0, len(ordered), _CHUNK):
                chunk = ordered[start : start + _CHUNK]
                texts = client.mget([self._run_key(i) for i in chunk])
                ended = [
                    run_id
                    for run_id, text in zip(chunk, texts, strict=True)
                    if text is None or json.loads(text).get("ended_at") is not None
                ]
                if not ended:
                    continue
                with client.pipeline(transaction=True) as pipe:
                    pipe.zrem(runs, *ended)
                    for run_id in ended:
                        pipe.delete(
                            self._run_key(run_id), self._tasks_key(run_id), self._states_key(run_id)
                        )
                    pipe.execute()
                deleted += len(ended)
        except RedisError as exc:
            raise self._error(exc) from exc
        return deleted

    def close(self) -> None:
        """Close the connection pool; idempotent."""
        with self._lock:
            self._closed = True
            if self._client is not None:
                self._client.close()
                self._client = None


def _flow(data: dict[str, Any]) -> FlowRunRecord:
    return FlowRunRecord(**data)


def _task(data: dict[str, Any]) -> TaskRunRecord:
    data["limits"] = tuple(data.get("limits") or ())
    data["tags"] = tuple(data.get("tags") or ())
    return TaskRunRecord(**data)


def from_url(url: str) -> RedisHistory:
    """Open the history kept beside the limits of a ``redis://`` or ``rediss://`` URL."""
    return RedisHistory(RedisConfig.parse(url))
