"""`sluice ui` and `sluice metrics serve`: what they print, check and refuse; real servers."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from conformance._helpers import wait_until
from conftest import cross_process_only, require_module
from sluice import Limits
from sluice.cli import cli
from sluice.cli.ui import UIPlan

# The package's `ui` and `metrics` attributes are the commands; these are their modules.
cli_ui = importlib.import_module("sluice.cli.ui")
cli_metrics = importlib.import_module("sluice.cli.metrics")

SLUICE = Path(sys.executable).with_name("sluice")


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[UIPlan]:
    """Plans that `sluice ui` would have served (it returns at once instead)."""
    plans: list[UIPlan] = []

    def fake_serve(plan: UIPlan) -> None:
        plans.append(plan)
        plan.sock.close()

    monkeypatch.setattr(cli_ui, "serve", fake_serve)
    return plans


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_ui_help_names_every_option() -> None:
    result = invoke("ui", "--help")
    assert result.exit_code == 0
    for option in ("--host", "--port", "--interval", "--read-only", "--url"):
        assert option in result.output


def test_ui_prints_a_one_time_url_with_a_token_and_binds_loopback(
    served: list[UIPlan], store_url: str
) -> None:
    result = invoke("ui", "--port", "0", "--url", store_url)
    assert result.exit_code == 0, result.output
    (plan,) = served
    port = int(plan.url.rstrip("/").rsplit(":", 1)[1])
    assert port > 0 and plan.url == f"http://127.0.0.1:{port}/"
    assert plan.token is not None and len(plan.token) >= 40
    assert f"admin: open http://127.0.0.1:{port}/?token={plan.token}" in result.output
    assert result.output.count(plan.token) == 1
    assert "warning" not in result.output


def test_ui_tokens_differ_between_runs(served: list[UIPlan], store_url: str) -> None:
    invoke("ui", "--port", "0", "--url", store_url)
    invoke("ui", "--port", "0", "--url", store_url)
    assert served[0].token != served[1].token


def test_ui_warns_when_listening_beyond_this_machine(served: list[UIPlan], store_url: str) -> None:
    result = CliRunner().invoke(cli, ["ui", "--host", "0.0.0.0", "--port", "0", "--url", store_url])
    assert result.exit_code == 0
    assert "warning: the dashboard listens on 0.0.0.0" in result.stderr
    assert "--host 127.0.0.1" in result.stderr


def test_ui_read_only_prints_no_token(served: list[UIPlan], store_url: str) -> None:
    result = invoke("ui", "--read-only", "--port", "0", "--url", store_url)
    assert served[0].token is None
    assert "token=" not in result.output and "read-only" in result.output


@pytest.mark.parametrize(
    ("url", "driver", "extra"),
    [
        ("redis://user:s3cret@127.0.0.1:1/0", "redis", "redis"),
        ("postgresql://user:s3cret@127.0.0.1:1/test", "psycopg", "postgres"),
    ],
    ids=["redis", "postgres"],
)
def test_ui_on_an_unreachable_store_says_so_and_masks_its_password(
    served: list[UIPlan], url: str, driver: str, extra: str
) -> None:
    """A real store that cannot be reached (nothing listens on port 1 of loopback)."""
    require_module(driver, extra)
    masked = url.replace("s3cret", "***")
    result = CliRunner().invoke(cli, ["ui", "--port", "0", "--url", url])
    assert result.exit_code == 0, result.output + result.stderr  # it serves, and says why not
    assert f"sluice ui: {masked} on http://127.0.0.1:" in result.output
    (plan,) = served
    with TestClient(plan.app, base_url="http://127.0.0.1:8787") as http:
        limits = http.get("/api/limits")
        assert limits.status_code == 200
        error = limits.json()["error"]
        assert error.startswith("StoreUnavailable: ") and f"{masked} is unreachable" in error
        assert http.get("/api/session").json()["store"] == masked
        assert "sluice_store_up 0.0" in http.get("/metrics").text
        pages = [http.get(path).text for path in ("/", "/runs", "/api/runs", "/metrics")]
    assert "s3cret" not in result.output + result.stderr + limits.text + "".join(pages)


def test_a_url_ui_refuses_is_shown_with_its_password_masked(served: list[UIPlan]) -> None:
    url = "redis://user:s3cret@127.0.0.1:1/0?prefix=bad%20prefix"
    result = CliRunner().invoke(cli, ["ui", "--port", "0", "--url", url])
    assert result.exit_code == 2 and served == []
    assert "redis://user:***@127.0.0.1:1/0?prefix=bad%20prefix" in result.stderr
    assert "s3cret" not in result.output + result.stderr


def test_ui_refuses_a_bad_interval_and_a_busy_port(store_url: str) -> None:
    result = CliRunner().invoke(cli, ["ui", "--interval", "10ms", "--url", store_url])
    assert result.exit_code == 2 and "use 250ms to 60s" in result.stderr
    with __import__("socket").socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = str(busy.getsockname()[1])
        result = CliRunner().invoke(cli, ["ui", "--port", port, "--url", store_url])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_a_missing_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, store_url: str
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a)
    )
    result = CliRunner().invoke(cli, ["ui", "--url", store_url])
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: `sluice ui` needs uvicorn: pip install 'sluice[ui]'"
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "prometheus_client" else real(name, *a),
    )
    result = CliRunner().invoke(cli, ["metrics", "serve", "--url", store_url])
    assert result.exit_code == 1
    assert "pip install 'sluice[metrics]'" in result.stderr


def test_metrics_serve_prints_where_and_stops_cleanly(
    monkeypatch: pytest.MonkeyPatch, store_url: str
) -> None:
    def interrupted(self: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_metrics.WSGIServer, "serve_forever", interrupted)
    assert "--port" in invoke("metrics", "serve", "--help").output
    result = invoke("metrics", "serve", "--port", "0", "--url", store_url)
    assert result.exit_code == 0
    assert re.search(r"on http://127\.0\.0\.1:\d+/metrics", result.output)


def _start(args: list[str], tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "SLUICE_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(
        [str(SLUICE), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    match = re.search(r"(http://127\.0\.0\.1:\d+/)", first)
    if match is None:
        proc.kill()
        pytest.fail(f"no address in {first!r}: {proc.communicate()}")
    return proc, match.group(1)


def _get(url: str, **headers: str) -> tuple[int, str]:
    """GET ``url``, asking again until the server answers (up to 15 s)."""
    failures: list[OSError] = []

    def attempt() -> tuple[int, str] | None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as r:
                return r.status, r.read().decode()
        except OSError as exc:
            failures.append(exc)
            return None

    try:
        return wait_until(attempt, 15, f"an answer from {url}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last error: {failures[-1:]}") from None


@pytest.mark.slow
@cross_process_only
def test_sluice_ui_and_metrics_serve_answer_http(tmp_path: Path, store_url: str) -> None:
    with Limits(store_url) as limits:  # this process acquires; the exporters count it
        limits.create("served", slots=2)
        limits.acquire("served", occupy=2).release()
        limits.acquire("served").release()
    ui, base = _start(["ui", "--port", "0", "--url", store_url], tmp_path)
    exporter, exporter_base = _start(
        ["metrics", "serve", "--port", "0", "--url", store_url], tmp_path
    )
    try:
        status, page = _get(base)
        assert status == 200 and 'data-page="limits"' in page
        assert _get(base + "api/limits")[1].startswith('{"sampled_at"')
        assert "sluice_store_up 1.0" in _get(base + "metrics")[1]
        exported = _get(exporter_base + "metrics")[1]
        assert "sluice_store_up 1.0" in exported
        assert 'sluice_limit_grants_total{limit="served"} 2.0' in exported
        assert 'sluice_limit_granted_units_total{limit="served"} 3.0' in exported
    finally:
        for proc in (ui, exporter):
            proc.terminate()
            proc.communicate(timeout=10)  # waits, and closes the pipes
