"""Run history in Redis: the same server and key prefix as the limits, so one URL configures both.

Keys (all under the deployment's hash tag ``{prefix}``, like the limits'):

* ``{prefix}:hist:runs``: sorted set of flow run ids, scored by ``created_at``;
* ``{prefix}:hist:run:ID``: the flow run record (JSON);
* ``{prefix}:hist:tasks:ID``: hash of task run id -> task run record (JSON);
* ``{prefix}:hist:states:ID``: hash of ``run_id:seq`` -> state record (JSON);
* ``{prefix}:hist:logs:ID``: hash of ``seq`` -> log record (JSON);
* ``{prefix}:hist:open``: hash of flow run id -> owner, for the flow runs not ended;
* ``{prefix}:hist:owners``: hash of owner -> its host, pid, last heartbeat (its clock)
  and interval (JSON);
* ``{prefix}:hist:alive:OWNER``: set at each heartbeat to expire after
  ``MISSED_BEATS`` intervals, by the server's clock: an owner without it is gone;
* ``{prefix}:hist:version``: the layout's version (2; absent: 1, which had no owners
  or logs: its records read as they are).

A batch is written in one ``MULTI``/``EXEC`` transaction; a state or log record
is written with ``HSETNX``, so writing it again changes nothing. A reader ends
the open runs of a gone owner in a transaction that ``WATCH``-es the runs and the
owner's key, so a run that ended, or an owner that beat, in between is left alone.
Retention is bounded by :meth:`RedisHistory.prune`, which the flow layer calls.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import redis
from redis.exceptions import RedisError, WatchError

from sluice import _fork
from sluice.errors import RunNotFound, StoreError, StoreUnavailable
from sluice.settings import history_heartbeat
from sluice.store.history import (
    MISSED_BEATS,
    FlowRunDetail,
    FlowRunRecord,
    HistoryRecord,
    RunLogRecord,
    StateRecord,
    TaskRunDetail,
    TaskRunRecord,
)
from sluice.store.history_rows import (
    HISTORY_VERSION,
    Owner,
    check_list_limit,
    check_prune,
    check_run_id,
    crash_records,
    from_json,
    new_owner_id,
    rows_of,
)
from sluice.store.redis.config import RedisConfig

__all__ = ["RedisHistory", "from_url"]

log = logging.getLogger("sluice.store.redis")

_CHUNK = 500  # ids per command when deleting many runs


class RedisHistory:
    """Flow runs, task runs, states and logs under ``{prefix}:hist:*`` keys of the limits' Redis."""

    def __init__(self, config: RedisConfig) -> None:
        self.url = config.url
        self._config = config
        self._base = f"{{{config.prefix}}}:hist"
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._closed = False
        self._checked = False
        self._new_owner()
        _fork.track(self, RedisHistory._new_owner)

    # ------------------------------------------------------------- plumbing

    def _new_owner(self) -> None:
        self._owner = new_owner_id()
        self._registered = False
        self._beat_at = 0.0  # time.monotonic() of this handle's last heartbeat

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
        client = self._client
        if not self._checked:
            self._check_version(client)
        return client

    def _check_version(self, client: redis.Redis) -> None:
        key = f"{self._base}:version"
        raw = _text(client.get(key))
        if raw is not None and int(raw) > HISTORY_VERSION:
            raise StoreError(
                f"the run history on {self.url} has version {raw}, newer than this "
                f"Sluice understands ({HISTORY_VERSION}); upgrade Sluice"
            )
        if raw is None or int(raw) < HISTORY_VERSION:
            client.set(key, HISTORY_VERSION)  # 1 -> 2 adds keys only: nothing to rewrite
        self._checked = True

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

    def _logs_key(self, run_id: str) -> str:
        return f"{self._base}:logs:{run_id}"

    def _alive_key(self, owner: str) -> str:
        return f"{self._base}:alive:{owner}"

    # ------------------------------------------------------------- owners

    def _queue_beat(self, pipe: Any) -> None:
        me = Owner.mine(self._owner)
        self._beat_at = time.monotonic()
        text = json.dumps(
            {"host": me.host, "pid": me.pid, "beat_at": me.beat_at, "every": me.every}
        )
        pipe.hset(f"{self._base}:owners", me.id, text)
        pipe.set(self._alive_key(me.id), "1", px=max(int(me.every * MISSED_BEATS * 1000), 1))

    def _queue_records(self, pipe: Any, batch: Sequence[HistoryRecord], owner: str) -> None:
        for record in batch:
            text = json.dumps(asdict(record), separators=(",", ":"))
            if isinstance(record, FlowRunRecord):
                pipe.set(self._run_key(record.id), text)
                pipe.zadd(f"{self._base}:runs", {record.id: record.created_at})
                if record.ended_at is None:
                    pipe.hset(f"{self._base}:open", record.id, owner)
                else:
                    pipe.hdel(f"{self._base}:open", record.id)
            elif isinstance(record, TaskRunRecord):
                pipe.hset(self._tasks_key(record.flow_run_id), record.id, text)
            elif isinstance(record, StateRecord):
                field = f"{record.run_id}:{record.seq}"
                pipe.hsetnx(self._states_key(record.flow_run_id), field, text)
            else:
                pipe.hsetnx(self._logs_key(record.flow_run_id), str(record.seq), text)

    def _reap(self) -> None:
        """End the runs of owners that are gone as Crashed; best effort, never fails a read."""
        try:
            self._reap_now()
        except (RedisError, StoreError) as exc:
            log.warning("sluice: could not end the runs of a gone process on %s: %s", self.url, exc)

    def _reap_now(self) -> None:
        client = self._redis()
        open_runs = {str(k): str(v) for k, v in client.hgetall(f"{self._base}:open").items()}
        owners = sorted({o for o in open_runs.values() if o != self._owner})
        if not owners:
            return
        with client.pipeline(transaction=False) as pipe:
            for owner in owners:
                pipe.exists(self._alive_key(owner))
            alive = pipe.execute()
        gone = {owner for owner, n in zip(owners, alive, strict=True) if not n}
        for owner in sorted(gone):
            runs = sorted(run for run, o in open_runs.items() if o == owner)
            raw = client.hget(f"{self._base}:owners", owner)
            info = json.loads(raw) if raw else {}
            found = Owner(
                owner,
                str(info.get("host", "")),
                int(info.get("pid", 0)),
                info.get("beat_at"),
                float(info.get("every", 0.0)),
            )
            self._end_runs(client, found, runs)

    def _end_runs(self, client: redis.Redis, owner: Owner, runs: list[str]) -> None:
        watched = [self._alive_key(owner.id), *(self._run_key(r) for r in runs)]
        with client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(*watched)  # type: ignore[no-untyped-call]
                seen_gone = time.time()
                records: list[HistoryRecord] = []
                for run_id in runs:
                    try:
                        detail = self._detail(pipe, run_id)
                    except RunNotFound:
                        continue
                    if detail.run.ended_at is None:
                        records += crash_records(detail, owner, seen_gone, "stopped its heartbeat")
                pipe.multi()
                self._queue_records(pipe, records, "")
                pipe.hdel(f"{self._base}:open", *runs)
                pipe.hdel(f"{self._base}:owners", owner.id)
                pipe.execute()
            except WatchError:
                pass  # the owner beat, or a run changed: the next read looks again

    # ------------------------------------------------------------- the protocol

    def write(self, batch: Sequence[HistoryRecord]) -> None:
        """Upsert runs and add states and logs, in one MULTI/EXEC transaction."""
        rows = rows_of(batch)  # checks every record
        if not rows:
            return
        try:
            with self._redis().pipeline(transaction=True) as pipe:
                self._queue_records(pipe, batch, self._owner)
                if rows.open_flows and self._beat_due():
                    self._queue_beat(pipe)
                pipe.execute()
        except RedisError as exc:
            raise self._error(exc) from exc
        if rows.open_flows:
            self._registered = True

    def _beat_due(self) -> bool:
        """Whether a write that opens runs must renew the heartbeat too (none for a while)."""
        return not self._registered or time.monotonic() - self._beat_at >= history_heartbeat()

    def heartbeat(self) -> bool:
        """Renew this process's heartbeat; False if its runs were ended as Crashed."""
        try:
            with self._redis().pipeline(transaction=True) as pipe:
                pipe.hexists(f"{self._base}:owners", self._owner)
                self._queue_beat(pipe)
                known = pipe.execute()[0]
        except RedisError as exc:
            raise self._error(exc) from exc
        lost = self._registered and not known
        self._registered = True
        return not lost

    def list_flow_runs(self, limit: int = 20) -> list[FlowRunRecord]:
        """The newest flow runs first."""
        check_list_limit(limit)
        self._reap()
        try:
            client = self._redis()
            ids = [str(i) for i in client.zrevrange(f"{self._base}:runs", 0, limit - 1)]
            texts = client.mget([self._run_key(i) for i in ids]) if ids else []
        except RedisError as exc:
            raise self._error(exc) from exc
        return [from_json(FlowRunRecord, json.loads(t)) for t in texts if t is not None]

    def get_flow_run(self, run_id: str) -> FlowRunDetail:
        """One flow run with its states and task runs."""
        check_run_id(run_id)
        self._reap()
        try:
            with self._redis().pipeline(transaction=True) as pipe:  # one consistent snapshot
                return self._detail(pipe, run_id)
        except RedisError as exc:
            raise self._error(exc) from exc

    def _detail(self, pipe: Any, run_id: str) -> FlowRunDetail:
        """Read one flow run through ``pipe``: queued in one transaction, or at once while
        it watches keys (its reads then run immediately)."""
        if pipe.watching:
            run_text = pipe.get(self._run_key(run_id))
            task_texts = pipe.hvals(self._tasks_key(run_id))
            state_texts = pipe.hvals(self._states_key(run_id))
        else:
            pipe.get(self._run_key(run_id))
            pipe.hvals(self._tasks_key(run_id))
            pipe.hvals(self._states_key(run_id))
            run_text, task_texts, state_texts = pipe.execute()
        if run_text is None:
            raise RunNotFound(run_id)
        by_run: dict[str, list[StateRecord]] = {}
        for state in sorted(
            (from_json(StateRecord, json.loads(t)) for t in state_texts),
            key=lambda s: (s.run_id, s.seq),
        ):
            by_run.setdefault(state.run_id, []).append(state)
        tasks = sorted(
            (from_json(TaskRunRecord, json.loads(t)) for t in task_texts),
            key=lambda t: (t.created_at, t.id),
        )
        return FlowRunDetail(
            from_json(FlowRunRecord, json.loads(run_text)),
            tuple(by_run.get(run_id, ())),
            tuple(TaskRunDetail(t, tuple(by_run.get(t.id, ()))) for t in tasks),
        )

    def get_logs(self, run_id: str) -> list[RunLogRecord]:
        """A flow run's log records in order."""
        check_run_id(run_id)
        try:
            with self._redis().pipeline(transaction=True) as pipe:
                pipe.exists(self._run_key(run_id))
                pipe.hvals(self._logs_key(run_id))
                exists, texts = pipe.execute()
        except RedisError as exc:
            raise self._error(exc) from exc
        if not exists:
            raise RunNotFound(run_id)
        records = [from_json(RunLogRecord, json.loads(t)) for t in texts]
        return sorted(records, key=lambda r: r.seq)

    def prune(self, keep_runs: int, max_age_seconds: float | None = None) -> int:
        """Delete old ended flow runs with their task runs, states and logs."""
        keep_runs, max_age_seconds = check_prune(keep_runs, max_age_seconds)
        self._reap()
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
                            self._run_key(run_id),
                            self._tasks_key(run_id),
                            self._states_key(run_id),
                            self._logs_key(run_id),
                        )
                    pipe.execute()
                deleted += len(ended)
            self._forget_idle_owners(client)
        except RedisError as exc:
            raise self._error(exc) from exc
        return deleted

    def _forget_idle_owners(self, client: redis.Redis) -> None:
        """Drop the entries of gone owners that own no open run."""
        owners = sorted(str(o) for o in client.hkeys(f"{self._base}:owners"))
        if not owners:
            return
        busy = {str(o) for o in client.hvals(f"{self._base}:open")}
        idle = [o for o in owners if o not in busy and o != self._owner]
        if not idle:
            return
        with client.pipeline(transaction=False) as pipe:
            for owner in idle:
                pipe.exists(self._alive_key(owner))
            alive = pipe.execute()
        gone = [o for o, n in zip(idle, alive, strict=True) if not n]
        if gone:
            client.hdel(f"{self._base}:owners", *gone)

    def close(self) -> None:
        """Close the connection pool; idempotent."""
        with self._lock:
            self._closed = True
            if self._client is not None:
                self._client.close()
                self._client = None


def _text(value: Any) -> str | None:
    """A reply of a client that decodes responses, as the str it is."""
    return None if value is None else str(value)


def from_url(url: str) -> RedisHistory:
    """Open the history kept beside the limits of a ``redis://`` or ``rediss://`` URL."""
    return RedisHistory(RedisConfig.parse(url))
