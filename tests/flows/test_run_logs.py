"""Run logs and tracebacks, through the public API on every store: what run loggers and
Sluice log about a run is kept with it in the run history (bounded per run) and shown by
``sluice run logs``; a failed run keeps its traceback, shown by ``sluice run show``; a
:class:`RunFormatter` formats any record."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from cli._run import sluice
from sluice import Limits, flow, get_run_logger, runs, runtime, task
from sluice.flows import context
from sluice.flows.context import LOG_BYTES_PER_RUN, LOG_RECORDS_PER_RUN
from sluice.flows.logs import RunFormatter
from sluice.runners import ThreadPoolTaskRunner


@task
def extract() -> int:
    get_run_logger().info("fetched %d rows", 20)
    return 20


def _deep(rows: int) -> None:
    raise ValueError(f"cannot load {rows} rows")


@task
def load(rows: int) -> None:
    _deep(rows)


@flow(name="etl")
def etl() -> None:
    get_run_logger().info("starting")
    load.submit(extract.submit().result()).result()


def _failed_etl(url: str) -> str:
    with pytest.raises(ValueError, match="cannot load 20 rows"):
        etl()
    (run,) = runs.list(1, url=url)
    assert run.flow == "etl" and run.state == "Failed"
    return run.id


def test_a_failed_task_runs_traceback_is_shown_by_run_show(flow_url: str) -> None:
    run_id = _failed_etl(flow_url)

    shown = sluice("run", "show", run_id, "--url", flow_url)
    assert shown.exit_code == 0, shown.stderr
    load_id = next(
        t.run.id for t in runs.get(run_id, url=flow_url).task_runs if t.run.task == "load"
    )
    after = shown.stdout.split(f"traceback of task run {load_id} (load):", 1)[1]
    assert "Traceback (most recent call last):" in after
    assert "in _deep" in after and "ValueError: cannot load 20 rows" in after
    assert f"traceback of flow run {run_id} (etl):" in shown.stdout  # the flow failed with it

    data = sluice("run", "show", run_id, "--json", "--url", flow_url).json()
    by_task = {t["task"]: t for t in data["task_runs"]}
    assert by_task["extract"]["traceback"] == ""  # completed: none
    assert "in _deep" in by_task["load"]["traceback"]
    assert by_task["load"]["traceback"].rstrip().endswith("ValueError: cannot load 20 rows")
    assert "in _deep" in data["traceback"]


def test_run_logs_prints_what_the_runs_logged_in_order_with_the_traceback(flow_url: str) -> None:
    run_id = _failed_etl(flow_url)

    ran = sluice("run", "logs", run_id, "--url", flow_url)
    assert ran.exit_code == 0, ran.stderr
    lines = ran.stdout.splitlines()
    starting = next(i for i, line in enumerate(lines) if line.endswith("flow run: starting"))
    fetched = next(i for i, line in enumerate(lines) if "fetched 20 rows" in line)
    failed = next(i for i, line in enumerate(lines) if "ERROR" in line and "'load'" in line)
    assert starting < fetched < failed
    assert " INFO " in lines[starting] and "task run 'extract'" in lines[fetched]
    assert "Failed: ValueError: cannot load 20 rows" in lines[failed]
    below = lines[failed + 1 : failed + 12]
    assert any("in _deep" in line for line in below)
    assert all(line.startswith("    ") for line in below if line and "ERROR" not in line)

    records = sluice("run", "logs", run_id, "--json", "--url", flow_url).json()["logs"]
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)
    fetched_json = next(r for r in records if r["message"] == "fetched 20 rows")
    assert fetched_json["level"] == "INFO" and fetched_json["task"] == "extract"
    assert fetched_json["logger"] == "sluice.runs" and fetched_json["flow_run_id"] == run_id
    error = next(r for r in records if r["levelno"] == logging.ERROR and r["task"] == "load")
    assert "in _deep" in error["message"]
    assert any(r["message"] == "starting" and r["task_run_id"] is None for r in records)
    assert runs.logs(run_id, url=flow_url)[0].message == "starting"


def test_run_logs_of_an_unknown_run_exits_3(flow_url: str) -> None:
    with Limits(flow_url) as limits:
        limits.list()  # the store exists, without that run
    ran = sluice("run", "logs", "0" * 32, "--url", flow_url)
    assert ran.exit_code == 3 and "no flow run with id" in ran.error


@task
def chatty(count: int) -> None:
    log = get_run_logger()
    for i in range(count):
        log.info("line %d", i)


@task
def wordy() -> None:
    get_run_logger().info("x" * (LOG_BYTES_PER_RUN + 1000))


@flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
def noisy(count: int) -> str:
    chatty.submit(count).result()
    wordy.submit().result()
    get_run_logger().info("the flow still logs")
    run_id = runtime.flow_run.id
    assert run_id is not None
    return run_id


def test_each_run_keeps_its_first_records_and_bytes_and_says_it_reached_the_bound(
    flow_url: str,
) -> None:
    run_id = noisy(LOG_RECORDS_PER_RUN + 50)
    detail = runs.get(run_id, url=flow_url)
    ids = {t.run.task: t.run.id for t in detail.task_runs}
    records = runs.logs(run_id, url=flow_url)

    kept = [r for r in records if r.run_id == ids["chatty"]]
    lines = [r.message for r in kept if r.message.startswith("line ")]
    assert lines == [f"line {i}" for i in range(LOG_RECORDS_PER_RUN)]  # its first ones
    (note,) = [r for r in kept if not r.message.startswith("line ")]
    assert note.level == logging.WARNING and "log bound reached" in note.message
    assert note.seq > max(r.seq for r in kept if r is not note)

    (big,) = [r for r in records if r.run_id == ids["wordy"]]
    assert "bytes cut" in big.message
    assert len(big.message.encode()) <= LOG_BYTES_PER_RUN + 100
    assert any(r.run_id == run_id and r.message == "the flow still logs" for r in records)


def test_a_flow_run_with_its_task_runs_keeps_at_most_its_bound(
    flow_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(context, "LOG_RECORDS_PER_FLOW_RUN", 30)
    run_id = noisy(40)
    records = runs.logs(run_id, url=flow_url)
    notes = [r for r in records if "log bound reached" in r.message]
    assert len(records) == 30 + len(notes) and len(notes) == 1
    assert "no more records of this flow run" in notes[0].message
    assert all(r.message != "the flow still logs" for r in records)


def test_the_run_formatter_formats_records_with_and_without_run_fields() -> None:
    fmt = "%(levelname)s %(flow_run_name)s/%(task_run_name)s [%(run)s] %(message)s"
    plain = logging.makeLogRecord({"msg": "hello %s", "args": ("world",), "levelname": "INFO"})
    assert RunFormatter(fmt).format(plain) == "INFO -/- [-] hello world"
    assert not hasattr(plain, "flow_run_name")  # the record itself is left as it was
    ran = logging.makeLogRecord(
        {"msg": "fetched", "levelname": "INFO", "flow_run_name": "etl", "task_run_name": "get"}
    )
    assert RunFormatter(fmt).format(ran) == (
        "INFO etl/get [task run 'get' of flow run 'etl'] fetched"
    )


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """What a handler with a RunFormatter on ``sluice`` prints, DEBUG records included."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(RunFormatter("%(name)s|%(flow_run_name)s|%(task_run_name)s|%(message)s"))
    logger = logging.getLogger("sluice")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@task(limits=["db"])
def query() -> int:
    get_run_logger().info("queried")
    return 1


@flow(name="report")
def report() -> int:
    return query.submit().result()


def test_a_handler_with_the_run_formatter_formats_every_record_of_a_flow(
    flow_url: str, captured: io.StringIO
) -> None:
    with Limits(flow_url) as limits:
        limits.create("db", slots=1)
    assert report() == 1
    lines = captured.getvalue().splitlines()
    assert "sluice.runs|report|query|queried" in lines
    limits_lines = [line for line in lines if line.startswith("sluice.limits|")]
    assert limits_lines and all(line.count("|") >= 3 for line in limits_lines)
