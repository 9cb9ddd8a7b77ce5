"""The checkers themselves: each must be able to fail, or a test built on it proves nothing."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import require_module, selected_store_ids

from ._helpers import Holdings, stays


def test_holdings_flags_over_admission_and_ignores_touching_ends() -> None:
    over = Holdings(slots={"db": 2})
    over.add("db", 2, 0.0, 1.0)
    over.add(["db"], 1, 0.5, 2.0)
    with pytest.raises(AssertionError, match="3 units held"):
        over.check()
    touching = Holdings(slots={"db": 2})
    touching.add("db", 2, 0.0, 1.0)
    touching.add("db", 2, 1.0, 2.0)
    assert touching.check() == {"db": 2}


def test_holdings_merges_what_another_process_recorded() -> None:
    child = Holdings()
    with child.holding(["a", "b"], 2):
        pass
    child.rate_grant("r", 1, 0.0, 0.001)
    parent = Holdings(slots={"a": 1, "b": 2}, rates={"r": (1.0, 1)})
    parent.merge(child.records())
    assert parent.count("a") == parent.count("b") == parent.count("r") == 1
    with pytest.raises(AssertionError, match="'a': 2 units held"):
        parent.check()


def test_holdings_flags_a_rate_window_over_burst() -> None:
    holdings = Holdings(rates={"api": (10.0, 2)})
    for start in (0.0, 0.01, 0.05, 0.09):
        holdings.rate_grant("api", 1, start, start + 0.001)
    with pytest.raises(AssertionError, match="windows over burst"):
        holdings.check()


def test_holdings_refuses_to_check_nothing() -> None:
    with pytest.raises(AssertionError, match="nobody held 'db'"):
        Holdings(slots={"db": 1}).check()
    with pytest.raises(AssertionError, match="no rate grant on 'api'"):
        Holdings(rates={"api": (1.0, 1)}).check()


def test_wait_full_fails_when_the_limit_never_fills() -> None:
    holdings = Holdings(slots={"db": 2})
    with holdings.holding("db"), pytest.raises(AssertionError, match="at most 1 unit"):
        holdings.wait_full("db", 2, timeout=0.05)
    done = threading.Event()

    def second() -> None:
        with holdings.holding("db"):
            holdings.wait_full("db", 2, timeout=5)
        done.set()

    with holdings.holding("db"):
        thread = threading.Thread(target=second)
        thread.start()
        holdings.wait_full("db", 2, timeout=5)
    thread.join(5)
    assert done.is_set()


def test_stays_fails_when_the_state_changes() -> None:
    changed = threading.Event()
    threading.Timer(0.02, changed.set).start()
    with pytest.raises(AssertionError, match="stopped holding"):
        stays(lambda: not changed.is_set(), 5.0, "the state")


def test_a_missing_module_skips_locally_and_fails_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"pip install 'sluice\[ui\]'"):
        require_module("sluice_no_such_module", "ui")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and sluice_no_such_module"):
        require_module("sluice_no_such_module", "ui")
    assert require_module("json", "dev").dumps([]) == "[]"


def test_importorskip_fails_on_ci_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/conftest.py makes a direct pytest.importorskip fail under CI=true as well."""
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        pytest.importorskip("sluice_no_such_module")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and could not import"):
        pytest.importorskip("sluice_no_such_module")
    assert pytest.importorskip("json").dumps({}) == "{}"


def test_store_selection_follows_sluice_test_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_TEST_STORES", "sqlite, memory,nope")
    assert selected_store_ids() == ("memory", "sqlite")
    monkeypatch.delenv("SLUICE_TEST_STORES")
    assert selected_store_ids() == ("memory", "sqlite", "redis", "postgres")


def test_a_narrowed_store_table_is_an_error_on_ci() -> None:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "CI": "true", "SLUICE_TEST_STORES": "memory"}
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{__file__}::{NOTHING}"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == pytest.ExitCode.USAGE_ERROR, ran.stdout + ran.stderr
    assert "CI=true and SLUICE_TEST_STORES='memory' leaves out" in ran.stderr


NOTHING = "test_holdings_refuses_to_check_nothing"


def test_the_sleep_lint_flags_unexplained_sleeps_and_stale_entries(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "check_test_sleeps", Path(__file__).resolve().parents[2] / "scripts/check_test_sleeps.py"
    )
    assert spec is not None and spec.loader is not None
    lint = importlib.util.module_from_spec(spec)
    sys.modules["check_test_sleeps"] = lint  # dataclasses look their module up there
    spec.loader.exec_module(lint)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "import asyncio, time\n"
        "from time import sleep as nap\n"
        "time.sleep(0.1)  # explained\n"
        "nap(0.2)\n"
        "async def f() -> None:\n"
        "    await asyncio.sleep(0)\n"  # one turn of the loop: not a sleep
        "    await asyncio.sleep(0.3)\n"
    )
    allowed = tmp_path / "allowed.txt"
    allowed.write_text(
        "# comment\n"
        "tests/test_x.py: time.sleep(0.1) -> a duration under test\n"
        "tests/test_x.py: time.sleep(9) -> stale\n"
        "tests/test_x.py: nap(0.2) ->\n"
    )
    problems = lint.check(tmp_path, allowed)
    assert len(problems) == 4, problems
    assert problems[0].startswith("allowed.txt:4: not 'path: text -> reason'")
    assert problems[1].startswith("tests/test_x.py:4: nap(0.2)")
    assert problems[2].startswith("tests/test_x.py:7: await asyncio.sleep(0.3)")
    assert problems[3].startswith("allowed.txt:3: matches no sleep in tests/test_x.py")
