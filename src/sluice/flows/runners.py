"""Task runners: where task bodies run once their limits are granted.

Admission is not the runner's job: each runner has one dispatcher (a thread
running an asyncio loop, :mod:`sluice.flows.dispatch`) that waits for limit
grants and for a free worker, then hands the body to the runner. A runner is
only ever given as many bodies at once as it has workers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import sys
import threading
from multiprocessing.process import BaseProcess
from typing import Any

from sluice.errors import InvalidRequest
from sluice.flows import context
from sluice.flows.futures import SluiceFuture
from sluice.flows.jobs import Job, Outcome, run_async_body, run_sync_body

__all__ = [
    "GRANTED_WORKERS_MAX",
    "ProcessPoolTaskRunner",
    "TaskRunner",
    "ThreadPoolTaskRunner",
    "exit_if_starting_worker",
]


def _check_workers(max_workers: object, default: int) -> int:
    if max_workers is None:
        return default
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise InvalidRequest(f"max_workers must be None or an int >= 1, got {max_workers!r}")
    return max_workers


GRANTED_WORKERS_MAX = 1000
"""How many bodies of task runs that hold their limits the default runner runs at once,
beyond its ``max_workers`` for task runs without limits."""


class TaskRunner:
    """Runs task bodies on ``max_workers`` workers; one per flow run (see :meth:`duplicate`)."""

    max_workers: int
    grows: bool = False
    """Whether task runs holding their limits' grants start at once, whatever
    ``max_workers`` says (up to :data:`GRANTED_WORKERS_MAX`): then a granted task run
    never waits for a worker, so no granted slot sits idle."""

    reports_running: bool = False
    """Whether the runner records Running itself, when a body really starts (a cluster
    that queues what it is handed), rather than the dispatcher at hand-over."""

    def duplicate(self) -> TaskRunner:
        """A fresh, unstarted runner with the same settings (each flow run gets its own)."""
        raise NotImplementedError

    async def argument(self, future: SluiceFuture[Any]) -> Any:
        """What a body is given for a future among its arguments: by default its result."""
        return await future

    def start(self) -> None:
        """Create the workers."""

    def run(self, job: Job) -> None:
        """Start a body on a free worker; ``job.finish`` is called when it ends."""
        raise NotImplementedError

    def shutdown(self, wait: bool = True) -> None:
        """Stop the workers (waiting for running bodies if ``wait``)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_workers={self.max_workers})"


class ThreadPoolTaskRunner(TaskRunner):
    """Sync bodies on a pool of threads; async bodies on an event loop owned by the runner.

    The default runner. With ``max_workers`` given, at most that many bodies run at
    once, sync and async together. Without it, task runs without limits share
    ``min(32, CPUs + 4)`` workers (as ``concurrent.futures``), and a task run that
    holds its limits' grants starts at once on a thread of its own (up to
    :data:`GRANTED_WORKERS_MAX`), so the slots it holds are never idle waiting
    for a worker.
    """

    def __init__(self, max_workers: int | None = None) -> None:
        self._requested = max_workers
        self.max_workers = _check_workers(max_workers, min(32, (os.cpu_count() or 1) + 4))
        self.grows = max_workers is None
        self._pool: cf.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def duplicate(self) -> ThreadPoolTaskRunner:
        return ThreadPoolTaskRunner(self._requested)

    def start(self) -> None:
        threads = self.max_workers + (GRANTED_WORKERS_MAX if self.grows else 0)
        self._pool = cf.ThreadPoolExecutor(threads, thread_name_prefix="sluice-worker")

    def _async_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._loop_thread = threading.Thread(
                    target=loop.run_forever, name="sluice-async-tasks", daemon=True
                )
                self._loop_thread.start()
                self._loop = loop
            return self._loop

    def run(self, job: Job) -> None:
        if job.is_async:
            asyncio.run_coroutine_threadsafe(run_async_body(job), self._async_loop())
        else:
            assert self._pool is not None, "runner not started"
            self._pool.submit(run_sync_body, job)

    def __repr__(self) -> str:
        if self.grows:
            return (
                f"ThreadPoolTaskRunner() ({self.max_workers} workers, more for granted task runs)"
            )
        return f"ThreadPoolTaskRunner(max_workers={self.max_workers})"

    def shutdown(self, wait: bool = True) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
        with self._lock:
            loop, thread = self._loop, self._loop_thread
            self._loop = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5.0 if wait else 0.1)
            if not thread.is_alive():
                loop.close()


# --------------------------------------------------------------------------- processes


_WORKER_NAME = "sluice-worker"

_UNGUARDED_EXIT = 86
"""Exit code of a worker process whose main module, imported as the worker starts, ran a
flow: the worker exits instead of running the flow again, and the parent says what to add."""


def exit_if_starting_worker() -> None:
    """In a worker process still importing the main module: exit, rather than run a flow
    there again (a script without the ``if __name__ == "__main__":`` guard)."""
    process = multiprocessing.current_process()
    if process.name == _WORKER_NAME and getattr(process, "_inheriting", False):
        raise SystemExit(_UNGUARDED_EXIT)


def _start_failure(pid: int | None, code: int | None) -> Outcome:
    """How a body ends whose worker process died before it could take one."""
    main = getattr(sys.modules.get("__main__"), "__file__", None) or "the main module"
    if code == _UNGUARDED_EXIT:
        return Outcome(
            "error",
            InvalidRequest(
                f"ProcessPoolTaskRunner's worker processes import the main module ({main}) "
                "as they start, and it runs a flow when imported: put the code that runs "
                'the flow under `if __name__ == "__main__":` (see "Safe importing of main '
                'module" in the multiprocessing documentation)'
            ),
        )
    return Outcome(
        "crashed",
        f"worker process {pid} exited (exit code {code}) as it started, before it could run "
        f"the task: importing the main module ({main}) failed there, or it was killed (its "
        "error output says why)",
    )


def _child_main(conn: multiprocessing.connection.Connection) -> None:
    """A worker process: say it started, then run each body sent, send back how it ended."""
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        target, args, kwargs, is_async, ids = message
        fn = getattr(target, "fn", target)  # a Task, or a plain function
        tokens = context.enter_remote(ids)
        try:
            value = asyncio.run(fn(*args, **kwargs)) if is_async else fn(*args, **kwargs)
            reply: tuple[str, Any] = ("ok", value)
        except BaseException as exc:
            reply = ("error", exc)
        finally:
            context.leave_remote(tokens)
        try:
            conn.send(reply)
        except Exception as exc:  # the value or exception does not pickle
            what = "return value" if reply[0] == "ok" else "exception"
            conn.send(
                (
                    "error",
                    InvalidRequest(
                        f"ProcessPoolTaskRunner could not send the task's {what} back to the "
                        f"flow: it must be picklable ({type(exc).__name__}: {exc})"
                    ),
                )
            )


class _Worker:
    """One worker process and the parent thread that feeds it and watches it die."""

    def __init__(self, ctx: Any, runner: ProcessPoolTaskRunner) -> None:
        self._runner = runner
        self.conn, child = ctx.Pipe()
        self.process: BaseProcess = ctx.Process(
            target=_child_main, args=(child,), name=_WORKER_NAME, daemon=True
        )
        self.process.start()
        child.close()
        self.started = False
        """Whether the process said it started (so it imported the main module)."""
        self.inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name="sluice-proc-feeder", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            job = self.inbox.get()
            if job is None:
                return
            if not self._one(job):
                return  # this worker is gone; a fresh one took its place

    def _one(self, job: Job) -> bool:
        run = job.task_run
        ids = context.remote_ids(run)
        try:
            target = job.task if job.task is not None else job.fn
            payload = pickle.dumps((target, job.args, job.kwargs, job.is_async, ids))
        except Exception as exc:
            job.finish(
                Outcome(
                    "error",
                    InvalidRequest(
                        f"ProcessPoolTaskRunner runs task {run.name!r} in another process, so "
                        "its function and arguments must be picklable (a module-level "
                        f"function, no lambdas or local objects): {type(exc).__name__}: {exc}"
                    ),
                )
            )
            self._runner._idle.put(self)
            return True
        with job.lock:
            job.on_interrupt = self.process.kill
            stopped = job.stop_requested
        if stopped:
            job.finish(Outcome("interrupted"))
            self._runner._idle.put(self)
            return True
        try:
            if not self.started:
                self.started = self._reply() is not None
            if self.started:
                self.conn.send_bytes(payload)
                reply = self._reply()
            else:
                reply = None
        except (EOFError, OSError):
            reply = None
        if reply is not None:
            job.finish(Outcome(reply[0], reply[1]))
            self._runner._idle.put(self)
            return True
        self.process.join(5.0)
        code = self.process.exitcode
        if job.stop_requested:
            job.finish(Outcome("interrupted"))
        elif not self.started:
            if code == _UNGUARDED_EXIT:
                self._runner._unguarded = True  # every worker would do the same
            job.finish(_start_failure(self.process.pid, code))
        else:
            job.finish(
                Outcome(
                    "crashed",
                    f"worker process {self.process.pid} died while running the task "
                    f"(exit code {code})",
                )
            )
        self.conn.close()
        self._runner._replace(self)
        return False

    def _reply(self) -> Any:
        """The process's next message, or None if it died first."""
        ready = multiprocessing.connection.wait([self.conn, self.process.sentinel])
        return self.conn.recv() if self.conn in ready else None

    def stop(self) -> None:
        self.inbox.put(None)
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(None)


class ProcessPoolTaskRunner(TaskRunner):
    """Bodies in ``max_workers`` worker processes (spawned, so functions, arguments and
    results must be picklable); a body that kills its worker is Crashed, and a timeout
    kills the worker running it. Admission still happens in the flow's process.

    A worker imports the main module as it starts, so a script runs its flow under
    ``if __name__ == "__main__":``; without that guard the workers exit at once instead
    of running the flow again, and its task runs fail with an InvalidRequest saying so.
    """

    def __init__(self, max_workers: int | None = None) -> None:
        self.max_workers = _check_workers(max_workers, os.cpu_count() or 1)
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._unguarded = False
        """Whether a worker showed that none can start (the script lacks the main guard)."""

    def duplicate(self) -> ProcessPoolTaskRunner:
        return ProcessPoolTaskRunner(self.max_workers)

    def start(self) -> None:
        """Workers start on first use, one per body running at once."""

    def _replace(self, dead: _Worker) -> None:
        with self._lock:
            if dead in self._workers:
                self._workers.remove(dead)

    def run(self, job: Job) -> None:
        if self._unguarded:
            job.finish(_start_failure(None, _UNGUARDED_EXIT))
            return
        try:
            worker = self._idle.get_nowait()
        except queue.Empty:
            try:
                worker = _Worker(self._ctx, self)
            except Exception as exc:  # the body never starts: say so, free its worker slot
                job.finish(
                    Outcome(
                        "crashed", f"could not start a worker process: {type(exc).__name__}: {exc}"
                    )
                )
                return
            with self._lock:
                self._workers.append(worker)
        worker.inbox.put(job)

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            workers = list(self._workers)
            self._workers.clear()
        for worker in workers:
            worker.stop()
        for worker in workers:
            worker.process.join(5.0 if wait else 0.5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(1.0)
