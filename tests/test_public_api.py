"""The public surface is a contract: these names exist, and nothing else leaks into __all__."""

from __future__ import annotations

import inspect

import sluice
import sluice.aio
import sluice.errors


def test_top_level_exports_are_exactly_the_curated_list() -> None:
    assert sorted(sluice.__all__) == sorted(
        [
            "AcquireTimeout",
            "Holder",
            "InvalidRequest",
            "Lease",
            "LeaseLost",
            "LimitBusy",
            "LimitExists",
            "LimitNotFound",
            "LimitStatus",
            "LimitTotals",
            "Limit",
            "Limits",
            "MissingLimitWarning",
            "RunNotFound",
            "SluiceError",
            "State",
            "StateName",
            "TaskTimeoutError",
            "Waiter",
            "__version__",
            "as_completed",
            "concurrency",
            "errors",
            "flow",
            "get_run_logger",
            "rate_limit",
            "task",
            "wait",
        ]
    )
    for name in sluice.__all__:
        assert hasattr(sluice, name), name


def test_async_twins_have_the_same_method_names_and_parameters() -> None:
    for name in (
        "create",
        "ensure",
        "get",
        "list",
        "update",
        "enable",
        "disable",
        "reset",
        "delete",
        "inspect",
        "acquire",
        "rate_limit",
        "concurrency",
    ):
        sync_sig = inspect.signature(getattr(sluice.Limits, name))
        async_sig = inspect.signature(getattr(sluice.aio.Limits, name))
        assert list(sync_sig.parameters) == list(async_sig.parameters), name
        if name != "concurrency":  # a context manager factory in both
            assert inspect.iscoroutinefunction(getattr(sluice.aio.Limits, name)), name
    assert list(inspect.signature(sluice.concurrency).parameters) == list(
        inspect.signature(sluice.aio.concurrency).parameters
    )
    assert list(inspect.signature(sluice.rate_limit).parameters) == list(
        inspect.signature(sluice.aio.rate_limit).parameters
    )


def test_every_error_is_a_sluice_error_and_value_errors_are_value_errors() -> None:
    for name in sluice.errors.__all__:
        cls = getattr(sluice.errors, name)
        if name == "MissingLimitWarning":
            assert issubclass(cls, UserWarning)
        else:
            assert issubclass(cls, sluice.SluiceError), name
    assert issubclass(sluice.InvalidRequest, ValueError)
    assert issubclass(sluice.AcquireTimeout, TimeoutError)
    assert issubclass(sluice.LimitNotFound, LookupError)
    assert issubclass(sluice.TaskTimeoutError, TimeoutError)
    assert issubclass(sluice.RunNotFound, LookupError)


def test_flow_modules_export_their_contract() -> None:
    import sluice.runners
    import sluice.runs
    import sluice.runtime

    assert {"ThreadPoolTaskRunner", "ProcessPoolTaskRunner"} <= set(sluice.runners.__all__)
    assert {"list", "get", "why"} <= set(sluice.runs.__all__)
    assert sluice.runtime.flow_run.id is None
    assert sluice.runtime.task_run.id is None
    assert {s.value for s in sluice.StateName} == {
        "Pending",
        "Waiting",
        "Running",
        "Retrying",
        "Completed",
        "Failed",
        "Crashed",
        "Cancelled",
        "TimedOut",
    }


def test_public_callables_have_docstrings() -> None:
    for obj in (sluice.Limits, sluice.aio.Limits):
        for name, member in inspect.getmembers(obj):
            if not name.startswith("_") and callable(member):
                assert member.__doc__, f"{obj.__module__}.{obj.__name__}.{name}"
