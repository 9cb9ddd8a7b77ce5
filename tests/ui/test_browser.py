"""The dashboard in a real headless Chromium: a holder comes and goes; a run's Gantt bars.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them);
elsewhere the test skips saying how to install them, except under CI=true,
where a missing browser fails. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import sluice.runs
from conftest import cross_process_only, require_module, skip_or_fail
from sluice import Limits

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
