"""The dashboard in a real headless Chromium: a holder comes and goes; a run's Gantt bars;
a run's logs and tracebacks as it runs and fails.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them);
elsewhere the test skips saying how to install them, except under CI=true,
where a missing browser fails. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import sluice.runs
from conformance._helpers import wait_until
from conftest import cross_process_only, require_module, skip_or_fail
from sluice import Limits, flow, get_run_logger, task
from sluice.flows.context import LOG_RECORDS_PER_RUN

from . import _flows
from .test_cli import _start

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver as Chrome
    from selenium.webdriver.remote.webelement import WebElement

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
INSTALL = "apt-get install -y --no-install-recommends chromium chromium-driver"


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None
    )
    if chromium and driver:
        return chromium, driver
    skip_or_fail(f"no headless Chromium with its driver; install them with: {INSTALL}")


@pytest.fixture
def browser() -> Iterator[Chrome]:
    """A headless Chromium at 1280x800, driven by Selenium."""
    chromium, driver = _browser_paths()
    webdriver = require_module("selenium.webdriver", "dev")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,800",
    ):
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    chrome.set_window_size(1280, 800)
    try:
        yield chrome
    finally:
        chrome.quit()


HOLD = """
import sys
from sluice import Limits
with Limits(sys.argv[1]).concurrency("browser-db", holder="held-by-browser-test"):
    print("held", flush=True)
    sys.stdin.readline()
"""


def _shot(driver: Chrome, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def _full_shot(driver: Chrome, name: str) -> Path:
    """A screenshot of the whole page, beyond the window's height (Chromium's DevTools)."""
    import base64

    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    print(f"screenshot: {path}")
    return path


def _attribute(element: WebElement, name: str) -> str:
    value = element.get_attribute(name)
    assert value is not None, f"no {name} attribute on {element}"
    return value


@pytest.mark.slow
@cross_process_only
def test_limits_page_shows_a_holder_come_and_go_and_a_run_has_one_bar_per_task_run(
    browser: Chrome, store_url: str, limits: Limits, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    limits.create("browser-db", slots=2)
    limits.create(_flows.LIMIT, slots=1)
    _flows.pipeline()
    run = sluice.runs.get(sluice.runs.list(1)[0].id)

    server, base = _start(
        ["ui", "--port", "0", "--interval", "250ms", "--url", store_url], tmp_path
    )
    assert server.stdout is not None
    token_line = server.stdout.readline()
    assert "?token=" in token_line
    token = token_line.split("?token=")[1].strip()
    driver = browser
    wait = WebDriverWait(driver, 15)

    def holders_cell() -> str:
        # Read in one script: the page re-renders its table on every refresh.
        return str(
            driver.execute_script(
                """for (const row of document.querySelectorAll('#content tbody tr')) {
                     const cells = row.querySelectorAll('td');
                     if (cells[0].textContent === 'browser-db') return cells[5].textContent;
                   }
                   return '';"""
            )
        )

    def text_of(element_id: str) -> str:
        return str(
            driver.execute_script(
                "const e = document.getElementById(arguments[0]); return e ? e.textContent : '';",
                element_id,
            )
        )

    def elements(css: str) -> Callable[[object], list[WebElement]]:
        """A wait condition: the elements ``css`` selects (falsy while there are none)."""
        return lambda _: driver.find_elements(By.CSS_SELECTOR, css)

    holder = None
    try:
        driver.get(base)
        wait.until(lambda _: holders_cell() == "0")
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD, store_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        wait.until(lambda _: holders_cell() == "1")
        assert "1 / 2" in text_of("content")
        wide = driver.execute_script("return document.documentElement.scrollWidth")
        assert wide <= 1280, f"the limits page scrolls sideways at 1280x800: {wide}px wide"
        _shot(driver, "limits-page-with-holder")

        driver.get(f"{base}limits/browser-db?token={token}")
        wait.until(lambda _: "held-by-browser-test" in text_of("holders"))
        assert "token=" not in driver.current_url
        assert text_of("mode") == "Admin"
        driver.execute_script("document.getElementById('chart-heading').scrollIntoView()")
        _shot(driver, "limit-page-with-holder")

        holder.communicate("\n", timeout=15)  # releases, exits, and closes the pipes
        assert holder.returncode == 0
        wait.until(lambda _: text_of("holders") == "No holders.")

        driver.get(f"{base}runs/{run.run.id}")
        bars = wait.until(
            lambda _: driver.find_elements(By.CSS_SELECTOR, "svg.gantt g.gantt-bar") or False
        )
        assert len(bars) == len(run.task_runs) == _flows.TASK_RUNS
        assert {b.get_attribute("data-task-run") for b in bars} == {t.run.id for t in run.task_runs}
        kinds = {
            r.get_attribute("data-kind")
            for r in driver.find_elements(By.CSS_SELECTOR, "g.gantt-bar rect")
        }
        assert {"limit", "running", "failed", "retry"} <= kinds
        labels = " ".join(_attribute(b, "aria-label") for b in bars)
        assert f"waiting on limit “{_flows.LIMIT}”, queue position" in labels
        _shot(driver, "run-page")
        driver.set_window_size(375, 812)
        driver.get(f"{base}runs/{run.run.id}")
        wait.until(lambda _: driver.find_elements(By.CSS_SELECTOR, "g.gantt-bar"))
        width = driver.execute_script("return document.documentElement.scrollWidth")
        assert width <= 375, f"the page scrolls sideways on a phone: {width}px wide"
        _shot(driver, "run-page-phone")
        for path, ready, shot in (
            ("", "#content tbody tr", "limits-page-phone"),
            ("limits/browser-db", "#content dl.facts", "limit-page-phone"),
        ):
            driver.get(base + path)
            wait.until(elements(ready))
            width = driver.execute_script("return document.documentElement.scrollWidth")
            assert width <= 375, f"/{path} scrolls sideways on a phone: {width}px wide"
            _shot(driver, shot)
        # selenium leaves Chromium's get_log unannotated
        browser_log = driver.get_log("browser")  # type: ignore[no-untyped-call]
        logs = [e for e in browser_log if "favicon" not in e["message"]]
        assert not [e for e in logs if e["level"] == "SEVERE"], logs
    finally:
        if holder is not None and holder.returncode is None:
            holder.kill()
            holder.communicate()
        server.terminate()
        server.communicate(timeout=10)


def _fits(driver: Chrome, what: str) -> None:
    """Asserts the page does not scroll sideways: nothing wider than the window."""
    wide, inner = driver.execute_script(
        "return [document.scrollingElement.scrollWidth, window.innerWidth]"
    )
    assert wide <= inner, f"{what} scrolls sideways: {wide}px wide in a {inner}px window"


def _box(driver: Chrome, css: str) -> dict[str, float]:
    """The viewport rectangle of the first element ``css`` selects."""
    box = driver.execute_script(
        "const e = document.querySelector(arguments[0]);"
        "if (!e) return null; const r = e.getBoundingClientRect();"
        "return {top: r.top, bottom: r.bottom, width: r.width, inner: window.innerHeight};",
        css,
    )
    assert box is not None, f"nothing matches {css!r}"
    return dict(box)


@pytest.mark.slow
def test_a_run_of_1200_task_runs_groups_its_gantt_and_fits_a_phone(
    browser: Chrome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url = f"sqlite:///{tmp_path / 'many.db'}"
    monkeypatch.setenv("SLUICE_URL", url)
    monkeypatch.setenv("SLUICE_PROGRESS", "0")
    with Limits(url) as limits:
        limits.create(_flows.MANY_LIMIT, slots=3)
    _flows.many()
    (listed,) = sluice.runs.list(1)
    run_id = listed.id
    assert len(sluice.runs.get(run_id).task_runs) == _flows.MANY_TASK_RUNS

    server, base = _start(["ui", "--port", "0", "--interval", "250ms", "--url", url], tmp_path)
    driver = browser
    wait = WebDriverWait(driver, 30)

    def groups() -> list[WebElement]:
        return driver.find_elements(By.CSS_SELECTOR, "svg.gantt g.gantt-group")

    try:
        driver.get(f"{base}runs/{run_id}")
        shown = wait.until(lambda _: groups() or False)
        # One row per task, with its count: not 1,200 rows of 26 px.
        assert {_attribute(g, "data-task"): int(_attribute(g, "data-count")) for g in shown} == {
            name: _flows.MANY_TASK_RUNS // 3 for name in _flows.MANY_TASKS
        }
        assert not driver.find_elements(By.CSS_SELECTOR, "g.gantt-bar")
        assert driver.find_elements(By.CSS_SELECTOR, "g.gantt-group rect.density")
        labels = " ".join(_attribute(g, "aria-label") for g in shown)
        assert "fetch_page: 400 task runs (400 Completed)" in labels
        # The why comes first: its headline and table start in the first viewport.
        for css in ("#why-headline", "#why-causes table"):
            box = _box(driver, css)
            assert 0 <= box["top"] < box["inner"], f"{css} is below the fold: {box}"
        assert "bounded" in driver.find_element(By.ID, "why-headline").text
        _shot(driver, "run-page-1200-task-runs")

        # One row per task run on demand: the box scrolls and keeps its time axis in view.
        driver.find_element(By.CSS_SELECTOR, ".gantt-tools button").click()
        bars = wait.until(lambda _: driver.find_elements(By.CSS_SELECTOR, "g.gantt-bar") or False)
        assert len(bars) == _flows.MANY_TASK_RUNS
        driver.execute_script(
            "const box = document.querySelector('.gantt-scroll');"
            "box.scrollIntoView(); box.scrollTop = box.scrollHeight / 2;"
        )
        scroller, axis = _box(driver, ".gantt-scroll"), _box(driver, ".gantt-axis-wrap")
        assert driver.execute_script("return document.querySelector('.gantt-scroll').scrollTop") > 0
        assert abs(axis["top"] - scroller["top"]) <= 2, (axis, scroller)

        # Charts redraw for the width they get: a phone's 400 px, without reloading.
        driver.find_element(By.CSS_SELECTOR, ".gantt-tools button").click()
        wait.until(lambda _: groups() or False)
        wide = float(_attribute(groups()[0].find_element(By.XPATH, ".."), "width"))
        driver.set_window_size(400, 850)
        wait.until(
            lambda _: (
                float(
                    driver.execute_script(
                        "const s = document.querySelector('svg.gantt');"
                        "return s ? s.getAttribute('width') : 9999;"
                    )
                )
                <= 400
            )
        )
        assert wide > 400
        _fits(driver, "the run page at 400 px (resized)")

        driver.get(f"{base}runs/{run_id}")
        wait.until(lambda _: groups() or False)
        _fits(driver, "the run page at 400 px")
        box = _box(driver, "#why-headline")
        assert 0 <= box["top"] < box["inner"], f"the why is below the fold on a phone: {box}"
        _shot(driver, "run-page-phone-400")
        driver.execute_script("document.getElementById('gantt-heading').scrollIntoView()")
        _shot(driver, "run-page-phone-400-gantt")

        driver.get(f"{base}limits/{_flows.MANY_LIMIT}")
        wait.until(lambda _: driver.find_elements(By.CSS_SELECTOR, "svg.timeline") or False)
        assert driver.find_element(By.ID, "wait-percentiles").text.startswith("p50 ")
        assert driver.find_element(By.ID, "head-of-line").text == "Head of line: nobody waits."
        _fits(driver, "the limit page at 400 px")
        timeline = _box(driver, "svg.timeline")
        assert timeline["width"] <= 400
        _shot(driver, "limit-page-phone-400")
        _full_shot(driver, "limit-page-phone-400-full")

        # The runs list's filters: kept in the address, answered from the store.
        driver.set_window_size(1280, 800)
        driver.get(f"{base}runs")
        wait.until(lambda _: driver.find_elements(By.CSS_SELECTOR, "#content tbody tr"))
        driver.find_element(By.ID, "filter-flow").send_keys("nope")
        driver.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
        wait.until(lambda _: "No flow runs match" in driver.find_element(By.ID, "content").text)
        assert driver.current_url.endswith("/runs?flow=nope")
        driver.get(f"{base}runs?flow=many&state=Completed&id={run_id[:6]}")
        rows = wait.until(
            lambda _: driver.find_elements(By.CSS_SELECTOR, "#content tbody tr") or False
        )
        assert len(rows) == 1 and run_id[:8] in rows[0].text
        assert driver.find_element(By.ID, "filter-state").get_attribute("value") == "Completed"
        # selenium leaves Chromium's get_log unannotated
        browser_log = driver.get_log("browser")  # type: ignore[no-untyped-call]
        logs = [e for e in browser_log if "favicon" not in e["message"]]
        assert not [e for e in logs if e["level"] == "SEVERE"], logs
    finally:
        server.terminate()
        server.communicate(timeout=10)


CHATTY_LINES = LOG_RECORDS_PER_RUN + 50  # beyond the records a run keeps
SCRIPT_LINE = "page 7: <script>window.injected = true</script> <b>not bold</b>"
_go_on = threading.Event()


@task
def chatty() -> None:
    """Logs more lines than its run keeps."""
    for i in range(CHATTY_LINES):
        get_run_logger().info("line %d of the chatty task", i)


@task
def fetch_logged() -> None:
    """Logs a line holding markup, waits for the test, then fails."""
    get_run_logger().info(SCRIPT_LINE)
    _go_on.wait(60)
    raise RuntimeError("the page is gone")


def _deep(depth: int, call: Callable[[], None]) -> None:
    """``call()`` from ``depth`` frames down: a traceback through here is long."""
    if depth:
        _deep(depth - 1, call)
    else:
        call()


@flow(name="logged-crawler")
def logged_crawler() -> None:
    chatty.submit().result()
    _deep(12, fetch_logged.submit().result)


@pytest.mark.slow
def test_a_run_page_shows_its_logs_as_they_come_and_its_tracebacks_as_text(
    browser: Chrome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url = f"sqlite:///{tmp_path / 'logs.db'}"
    monkeypatch.setenv("SLUICE_URL", url)
    monkeypatch.setenv("SLUICE_PROGRESS", "0")
    failures: list[BaseException] = []

    def run_flow() -> None:
        try:
            logged_crawler()
        except RuntimeError as exc:
            failures.append(exc)

    _go_on.clear()
    runner = threading.Thread(target=run_flow, name="logged-crawler")
    runner.start()
    server: subprocess.Popen[str] | None = None
    try:
        (listed,) = wait_until(lambda: sluice.runs.list(1), 15, "the flow run in the history")
        run_id = listed.id
        server, base = _start(["ui", "--port", "0", "--interval", "250ms", "--url", url], tmp_path)
        driver = browser
        wait = WebDriverWait(driver, 20)

        def messages() -> list[str]:
            # Read in one script: the rows are appended to while the run runs.
            return list(
                driver.execute_script(
                    "return [...document.querySelectorAll('.log-table tbody td.log-text')]"
                    ".map((td) => td.textContent);"
                )
            )

        # While the run runs: the records so far, the markup as text, no traceback yet.
        driver.get(f"{base}runs/{run_id}")
        wait.until(lambda _: SCRIPT_LINE in messages())
        assert "Running" in driver.find_element(By.ID, "updated").text
        assert not driver.find_elements(By.CSS_SELECTOR, ".traceback")
        row = driver.find_element(By.CSS_SELECTOR, ".log-table tbody tr:last-child")
        cells = row.find_elements(By.TAG_NAME, "td")
        assert [c.text for c in cells[1:]] == [
            "INFO",
            "fetch_logged " + _task_id(run_id)[:8],
            SCRIPT_LINE,
        ]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", cells[0].text), cells[0].text
        assert driver.execute_script("return window.injected") is None
        assert not driver.find_elements(By.CSS_SELECTOR, "#content script, #content b")
        # The chatty task's first lines, as many as a run keeps, and the note of its bound.
        shown = messages()
        chatty_lines = [m for m in shown if m.startswith("line ")]
        assert chatty_lines == [f"line {i} of the chatty task" for i in range(LOG_RECORDS_PER_RUN)]
        assert any(m.startswith("log bound reached") for m in shown)
        box = driver.execute_script(
            "const b = document.querySelector('.logs-scroll');"
            "return [b.scrollHeight, b.clientHeight, b.scrollTop];"
        )
        assert box[0] > box[1] > 0, f"the records do not scroll in their box: {box}"
        assert box[2] > 0, f"a running run's box does not show its newest records: {box}"
        _fits(driver, "the run page with 200 log records")

        # It fails: the page refreshes to its traceback and the records of the failure.
        _go_on.set()
        runner.join(30)
        assert failures and "the page is gone" in str(failures[0])
        wait.until(lambda _: "Ended" in driver.find_element(By.ID, "updated").text)
        # The flow logs its end just after writing it: the page looks once more.
        wait.until(lambda _: any(m.startswith("flow run logged-crawler") for m in messages()))
        api_logs = sluice.runs.logs(run_id)
        assert len(messages()) == len(api_logs)
        shown = messages()
        assert shown.index(SCRIPT_LINE) < next(
            i for i, m in enumerate(shown) if m.startswith("task run fetch_logged")
        )
        follows = driver.execute_script(
            "const b = document.querySelector('.logs-scroll');"
            "return b.scrollHeight - b.scrollTop - b.clientHeight;"
        )
        assert follows < 4, f"the box did not follow the records to its end: {follows}px left"
        task_run = _task_id(run_id)
        block = driver.find_element(By.CSS_SELECTOR, f'.traceback[data-traceback="{task_run}"]')
        assert "(Failed)" in block.find_element(By.TAG_NAME, "h3").text
        text = block.find_element(By.CSS_SELECTOR, "pre.traceback-text").text
        assert text.startswith("Traceback (most recent call last):"), text
        assert text.splitlines()[-1] == "RuntimeError: the page is gone"
        assert 'raise RuntimeError("the page is gone")' in text
        # The flow run's traceback (through _deep) is long: it starts collapsed to its end.
        flow_block = driver.find_element(By.CSS_SELECTOR, f'.traceback[data-traceback="{run_id}"]')
        summary = flow_block.find_element(By.TAG_NAME, "summary")
        assert summary.text.startswith("RuntimeError: the page is gone"), summary.text
        pre = flow_block.find_element(By.CSS_SELECTOR, "pre.traceback-text")
        assert not pre.is_displayed()
        summary.click()
        assert pre.is_displayed() and "Traceback (most recent call last):" in pre.text
        driver.execute_script("document.getElementById('logs-heading').scrollIntoView()")
        _shot(driver, "run-page-logs")
        _full_shot(driver, "run-page-logs-full")

        driver.set_window_size(400, 850)
        driver.get(f"{base}runs/{run_id}")
        wait.until(lambda _: len(messages()) == len(api_logs))
        _fits(driver, "the run page's logs at 400 px")
        driver.execute_script("document.getElementById('logs-heading').scrollIntoView()")
        _shot(driver, "run-page-logs-phone-400")
        # selenium leaves Chromium's get_log unannotated
        browser_log = driver.get_log("browser")  # type: ignore[no-untyped-call]
        logs = [e for e in browser_log if "favicon" not in e["message"]]
        assert not [e for e in logs if e["level"] == "SEVERE"], logs
    finally:
        _go_on.set()
        runner.join(30)
        if server is not None:
            server.terminate()
            server.communicate(timeout=10)


def _task_id(run_id: str) -> str:
    """The id of the flow run's fetch_logged task run."""
    detail = sluice.runs.get(run_id)
    return next(t.run.id for t in detail.task_runs if t.run.task == "fetch_logged")
