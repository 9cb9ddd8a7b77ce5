"""Task bodies on a Dask cluster: :class:`DaskTaskRunner` and :func:`get_dask_client`.

What runs where: admission stays in the flow's process (the dispatcher waits for
a task run's limits there), and only a granted task run is handed to the cluster
with ``Client.submit``, under the key ``"<task name>-<task run id>"``. The body
runs in a worker thread; as it starts, the worker sends an event (topic
``sluice-<runner id>``) and the runner records Running at that moment, so the
time between hand-over and start is recorded as Waiting for a worker. Its
return value stays on the cluster: the task run's future holds the Dask future,
a downstream task run of the same flow is handed that Dask future (Dask moves
the data between workers), and ``.result()`` fetches the value on first use.

A worker dying mid-body (the scheduler's ``remove-worker`` event, or
``KilledWorker``) ends the task run Crashed at once; losing the scheduler
cancels every Dask future, which fails the task runs still on it. A timeout
cancels the Dask future, and the worker interrupts the body at its own deadline
the way :mod:`sluice.flows.jobs` interrupts a thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import importlib
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from sluice.errors import ConfigError, InvalidRequest, SluiceError, TaskTimeoutError
from sluice.flows import context
from sluice.flows.dispatch import execution_of
from sluice.flows.futures import RemoteResult, SluiceFuture
from sluice.flows.jobs import Deadline, Interrupted, Job, Outcome
from sluice.flows.runners import TaskRunner
from sluice.flows.states import State, StateName

if TYPE_CHECKING:
    import distributed

__all__ = ["INSTALL_HINT", "DaskTaskRunner", "get_dask_client"]

INSTALL_HINT = "pip install 'sluice[dask]'"

CONNECT_TIMEOUT = 10.0
"""Seconds to reach a scheduler at ``address`` unless ``client_kwargs`` gives ``timeout``."""

SUBMITTED_MAX = 100_000
"""How many bodies one flow run hands to the cluster at once; Dask queues those
beyond its worker threads (so an adaptive cluster sees the demand)."""


def _distributed() -> ModuleType:
    """The ``distributed`` package, or a ConfigError saying how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise ConfigError(
            f"DaskTaskRunner needs the distributed package: {INSTALL_HINT} ({exc})"
        ) from exc
    return distributed


# --------------------------------------------------------------------------- on a worker


@dataclass(frozen=True)
class _Call:
    """What the worker needs besides the function and its arguments."""

    key: str
    topic: str
    ids: context.RemoteIds
    name: str
    is_async: bool
    timeout: float | None


def _on_worker(
    call: _Call, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """In a Dask worker: report the start, run the body as its task run, within its timeout."""
    import distributed

    worker = distributed.get_worker()
    worker.log_event(call.topic, [call.key, worker.address, time.time()])
    token = context.enter_remote(call.ids)
    try:
        if call.is_async:
            return asyncio.run(_async_body(call, fn(*args, **kwargs)))
        try:
            with Deadline(call.timeout):
                value = fn(*args, **kwargs)
        except Interrupted:
            assert call.timeout is not None
            raise TaskTimeoutError(call.name, call.timeout) from None
        return value
    finally:
        context.leave_remote(token)


async def _async_body(call: _Call, body: Any) -> Any:
    if call.timeout is None:
        return await body
    try:
        return await asyncio.wait_for(body, call.timeout)
    except asyncio.TimeoutError:
        raise TaskTimeoutError(call.name, call.timeout) from None


# --------------------------------------------------------------------------- in the flow


class _Submitted:
    """A body handed to the cluster: its job, its Dask future, where and whether it started."""

    __slots__ = ("future", "job", "key", "lock", "started", "worker")

    def __init__(self, job: Job, key: str) -> None:
        self.job = job
        self.key = key
        self.future: distributed.Future[Any] | None = None
        self.worker: str | None = None
        self.started = False
        self.lock = threading.Lock()


class _DaskResult(RemoteResult):
    """A task run's return value, kept on the cluster as a Dask future."""

    def __init__(self, future: distributed.Future[Any], runner: DaskTaskRunner, run: str) -> None:
        self.future = future
        self.runner = runner
        self.run = run  # "task run NAME (ID)", for messages
        self.lost: str | None = None  # why the value is gone, once it is
        self._value: Any = None
        self._fetched = False
        self._lock = threading.Lock()

    def fetch(self, timeout: float | None = None) -> Any:
        with self._lock:
            if self._fetched:
                return self._value
            self.check()
            try:
                value = self.future.result(timeout)
            except Exception as exc:
                self.check()
                raise SluiceError(
                    f"could not fetch the result of {self.run} from the Dask cluster: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self._value, self._fetched = value, True
            return value

    def check(self) -> None:
        """Raise a SluiceError if the value is no longer on the cluster."""
        if self.lost is not None:
            raise SluiceError(f"the result of {self.run} is gone: {self.lost}")
        if self.runner._client is None:
            raise SluiceError(
                f"the result of {self.run} stayed on the Dask cluster, and the flow run's "
                "DaskTaskRunner has closed: fetch results (.result()) inside the flow"
            )


def _state_after(run: context.TaskRun, at: float) -> float:
    """``at`` (a worker's clock), kept between the run's last state and now."""
    return max(run.state.timestamp, min(at, time.time()))


class DaskTaskRunner(TaskRunner):
    """Bodies on a Dask cluster: the scheduler at ``address``, or a temporary cluster
    (``cluster_class(**cluster_kwargs)``, a ``distributed.LocalCluster`` by default,
    adaptive with ``adapt_kwargs``) started for the flow run and closed at its end.
    Admission stays in the flow's process; results stay on the cluster."""

    reports_running = True

    def __init__(
        self,
        address: str | None = None,
        cluster_class: Callable[..., Any] | str | None = None,
        cluster_kwargs: Mapping[str, Any] | None = None,
        adapt_kwargs: Mapping[str, Any] | None = None,
        client_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        _distributed()
        if address is not None and not isinstance(address, str):
            raise InvalidRequest(f"address must be a scheduler address string, got {address!r}")
        if address is not None and (cluster_class, cluster_kwargs, adapt_kwargs) != (
            None,
            None,
            None,
        ):
            raise InvalidRequest(
                "DaskTaskRunner: give address (a running scheduler) or cluster_class, "
                "cluster_kwargs and adapt_kwargs (a temporary cluster), not both"
            )
        for label, value in (
            ("cluster_kwargs", cluster_kwargs),
            ("adapt_kwargs", adapt_kwargs),
            ("client_kwargs", client_kwargs),
        ):
            if value is not None and not isinstance(value, Mapping):
                raise InvalidRequest(f"{label} must be a dict or None, got {value!r}")
        self.address = address
        self.cluster_class = cluster_class
        self.cluster_kwargs = dict(cluster_kwargs or {})
        self.adapt_kwargs = dict(adapt_kwargs) if adapt_kwargs is not None else None
        self.client_kwargs = dict(client_kwargs or {})
        self.max_workers = SUBMITTED_MAX
        self._client: distributed.Client | None = None
        self._cluster: Any = None
        self._topic = f"sluice-{uuid.uuid4().hex}"
        self._lock = threading.Lock()
        self._submitted: dict[str, _Submitted] = {}
        self._results: weakref.WeakValueDictionary[str, _DaskResult] = weakref.WeakValueDictionary()
        self._helper: cf.ThreadPoolExecutor | None = None

    def duplicate(self) -> DaskTaskRunner:
        return DaskTaskRunner(
            self.address,
            self.cluster_class,
            self.cluster_kwargs if self.address is None else None,
            self.adapt_kwargs,
            self.client_kwargs,
        )

    def __repr__(self) -> str:
        if self.address is not None:
            return f"DaskTaskRunner(address={self.address!r})"
        name = getattr(self.cluster_class, "__name__", None) or "LocalCluster"
        adaptive = ", adaptive" if self.adapt_kwargs is not None else ""
        return f"DaskTaskRunner({name}{adaptive})"

    @property
    def client(self) -> distributed.Client:
        """The Dask client of the running flow run (a SluiceError before start or after end)."""
        if self._client is None:
            raise SluiceError(f"{self!r} is not running (it runs during its flow run)")
        return self._client

    # ------------------------------------------------------------ start and stop

    def start(self) -> None:
        """Connect to the scheduler (or start the temporary cluster) and listen to it."""
        dd = _distributed()
        if self.address is not None:
            kwargs = {"timeout": CONNECT_TIMEOUT, "set_as_default": False, **self.client_kwargs}
            try:
                client = dd.Client(self.address, **kwargs)
            except Exception as exc:  # OSError, TimeoutError, a bad address (ValueError)
                raise ConfigError(
                    f"DaskTaskRunner could not reach the Dask scheduler at {self.address!r} "
                    f"within {kwargs['timeout']}s: {type(exc).__name__}: {exc}"
                ) from exc
        else:
            client = self._start_cluster(dd)
        self._client = client
        self._helper = cf.ThreadPoolExecutor(1, thread_name_prefix="sluice-dask")
        client.subscribe_topic(self._topic, self._on_started)
        client.subscribe_topic("all", self._on_cluster_event)

    def _start_cluster(self, dd: ModuleType) -> distributed.Client:
        import dask

        make = self.cluster_class or dd.LocalCluster
        if isinstance(make, str):  # "package.module.ClassName"
            module, _, attr = make.rpartition(".")
            make = getattr(importlib.import_module(module), attr)
        # A task whose worker dies is Crashed here: Dask must not start it again elsewhere.
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            cluster = make(**self.cluster_kwargs)
        try:
            if self.adapt_kwargs is not None:
                cluster.adapt(**self.adapt_kwargs)
            kwargs = {"set_as_default": False, **self.client_kwargs}
            client: distributed.Client = dd.Client(cluster, **kwargs)
        except BaseException:
            cluster.close()
            raise
        self._cluster = cluster
        return client

    def shutdown(self, wait: bool = True) -> None:
        client, cluster = self._client, self._cluster
        self._client = self._cluster = None
        if client is not None:
            with contextlib.suppress(Exception):  # else the scheduler reports our own leaving
                for topic in (self._topic, "all"):
                    client.unsubscribe_topic(topic)  # type: ignore[no-untyped-call]
            client.close()  # type: ignore[no-untyped-call]
        if cluster is not None:
            cluster.close()
        if self._helper is not None:
            self._helper.shutdown(wait=wait)

    # ------------------------------------------------------------ bodies

    def run(self, job: Job) -> None:
        run = job.task_run
        client = self._client
        if client is None or client.status != "running":
            status = client.status if client is not None else "closed"
            job.finish(Outcome("error", self._scheduler_gone(status)))
            return
        key = f"{run.name}-{run.id}" + (f"-{run.attempts}" if run.attempts > 1 else "")
        call = _Call(
            key,
            self._topic,
            context.remote_ids(run),
            run.name,
            job.is_async,
            getattr(job.task, "timeout_seconds", None),
        )
        submitted = _Submitted(job, key)
        with self._lock:
            self._submitted[key] = submitted
        run.set_state(
            State(
                StateName.WAITING,
                message=f"handed to the Dask cluster, waiting for a worker ({self!r})",
            )
        )
        try:
            future = client.submit(
                _on_worker, call, job.fn, job.args, job.kwargs, key=key, pure=False
            )
        except Exception as exc:
            with self._lock:
                self._submitted.pop(key, None)
            job.finish(
                Outcome(
                    "error",
                    InvalidRequest(
                        f"DaskTaskRunner runs task {run.name!r} on a Dask cluster, so its "
                        "function and arguments must be picklable: "
                        f"{type(exc).__name__}: {exc}"
                    ),
                )
            )
            return
        submitted.future = future
        with job.lock:
            job.on_interrupt = lambda: self._cancel(future)
            stopped = job.stop_requested
        if stopped:
            self._cancel(future)
        future.add_done_callback(self._on_done)  # type: ignore[no-untyped-call]

    async def argument(self, future: SluiceFuture[Any]) -> Any:
        """The upstream's Dask future if it ran on this cluster (Dask moves the data
        between workers); otherwise its result."""
        value = await asyncio.wrap_future(future._future)
        if isinstance(value, _DaskResult) and value.runner is self:
            value.check()
            return value.future
        if isinstance(value, RemoteResult):
            return await asyncio.get_running_loop().run_in_executor(None, value.fetch)
        return value

    def _cancel(self, future: distributed.Future[Any]) -> None:
        """Cancel a Dask future without blocking the caller (a client call is a round trip)."""
        helper = self._helper
        if helper is not None:
            with contextlib.suppress(RuntimeError):  # shut down: the client is closing
                helper.submit(future.cancel)

    def _mark_running(self, submitted: _Submitted, at: float | None) -> None:
        """Record Running once, when the body started (its worker's clock, kept in order)."""
        job = submitted.job
        with submitted.lock:
            if submitted.started or job.stop_requested or job.outcome.done():
                return
            submitted.started = True
            run = job.task_run
            run.set_state(State(StateName.RUNNING, timestamp=_state_after(run, at or time.time())))

    def _on_started(self, event: tuple[float, Any]) -> None:
        """On the client's loop: a body started on a worker."""
        key, worker, at = event[1]
        with self._lock:
            submitted = self._submitted.get(key)
        if submitted is not None:
            submitted.worker = worker
            self._mark_running(submitted, float(at))

    def _on_done(self, future: distributed.Future[Any]) -> None:
        """On Dask's callback thread: a Dask future finished, erred or was cancelled."""
        with self._lock:
            submitted = self._submitted.pop(str(future.key), None)
        if submitted is None:
            return  # already ended (its worker's death was reported first)
        job = submitted.job
        status = future.status
        outcome: Outcome
        if status == "finished":
            self._mark_running(submitted, None)
            run = job.task_run
            result = _DaskResult(future, self, f"task run {run.name!r} ({run.id})")
            with self._lock:
                self._results[submitted.key] = result
            outcome = Outcome("ok", result)
        elif status == "error":
            outcome = self._error(submitted, future)
        elif status == "cancelled" and job.stop_requested:
            outcome = Outcome("interrupted")
        elif status == "cancelled":
            client = self._client
            outcome = Outcome("error", self._scheduler_gone(client.status if client else "closed"))
        else:  # "lost"
            outcome = Outcome("crashed", f"the Dask cluster lost the task ({status})")
        job.finish(outcome)

    def _error(self, submitted: _Submitted, future: distributed.Future[Any]) -> Outcome:
        dd = _distributed()
        try:
            exc = future.exception()  # type: ignore[no-untyped-call]
        except Exception as error:  # the client lost the scheduler meanwhile
            exc = error
        if isinstance(exc, dd.KilledWorker):
            worker = submitted.worker or "its worker"
            return Outcome("crashed", f"Dask worker {worker} died while running the task ({exc})")
        self._mark_running(submitted, None)
        return Outcome("error", exc)

    def _on_cluster_event(self, event: tuple[float, Any]) -> None:
        """On the client's loop: a worker left; crash the bodies it had, drop its results.

        Every task of ours the scheduler had on that worker is Crashed, also one whose
        start was not reported (it may have started, its report lost with the worker):
        Dask would otherwise start it again elsewhere, so a body might run twice.
        """
        msg = event[1]
        if not isinstance(msg, dict) or msg.get("action") != "remove-worker":
            return
        worker = msg.get("worker")
        crashed: list[_Submitted] = []
        lost: list[_DaskResult] = []
        with self._lock:
            for key in msg.get("processing-tasks") or ():
                submitted = self._submitted.get(key)
                if submitted is not None and submitted.worker in (None, worker):
                    crashed.append(self._submitted.pop(key))
            for key in msg.get("lost-computed-tasks") or ():
                result = self._results.get(key)
                if result is not None:
                    lost.append(result)
        for submitted in crashed:
            if submitted.future is not None:
                self._cancel(submitted.future)  # Dask would start it again elsewhere
            what = "running the task" if submitted.started else "holding the task"
            submitted.job.finish(Outcome("crashed", f"Dask worker {worker} died while {what}"))
        for result in lost:
            result.lost = f"Dask worker {worker}, which held it, died"
            self._cancel(result.future)  # Dask would compute it again, outside its limits

    def _scheduler_gone(self, status: str) -> SluiceError:
        where = self.address or "of the flow run's cluster"
        return SluiceError(
            f"the Dask scheduler {where} went away while the task run was on it "
            f"(client status {status!r}): the task run's slots are released"
        )


def get_dask_client(timeout: float | None = None) -> distributed.Client:
    """The Dask client of the cluster running this code: in a task body run by a
    :class:`DaskTaskRunner` (the worker's client), or in a flow run on one."""
    dd = _distributed()
    try:
        dd.get_worker()
    except ValueError:
        pass
    else:
        client: distributed.Client = dd.get_client(timeout=timeout)
        return client
    flow_run = context.current_flow_run()
    if flow_run is not None:
        try:
            runner = execution_of(flow_run).runner
        except KeyError:
            runner = None
        if isinstance(runner, DaskTaskRunner):
            return runner.client
    raise SluiceError(
        "get_dask_client() is for a task body run by a DaskTaskRunner, or a flow run on one"
    )
