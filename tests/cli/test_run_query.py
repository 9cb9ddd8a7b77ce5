"""``sluice run ls`` filters (flow, state, time, id prefix) and ``run show/why`` with an id
prefix, on every store."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

import pytest

from sluice import Limits, flow
from sluice.store import open_history
from sluice.store.history import FlowRunRecord

from ._run import sluice


@flow
def nightly() -> int:
    """Completes."""
    return 1


@flow
def broken() -> None:
    """Fails."""
    raise ValueError("broken on purpose")


@pytest.fixture
def recorded(store_url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, float]:
    """Three flow runs in ``store_url``: nightly, broken (Failed), then nightly again; and a
    moment between the last two's creation."""
    monkeypatch.setenv("SLUICE_URL", store_url)
    monkeypatch.setenv("SLUICE_PROGRESS", "0")
    _make_store(store_url)
    nightly()
    with pytest.raises(ValueError, match="broken on purpose"):
        broken()
    nightly()
    newest, failed = open_history(store_url).list_flow_runs(2)
    assert newest.created_at > failed.created_at
    return store_url, (newest.created_at + failed.created_at) / 2


def _ids(*args: str) -> list[str]:
    ran = sluice("run", "ls", "--json", *args)
    assert ran.exit_code == 0, ran.stderr
    return [r["flow"] + ":" + r["state"] for r in ran.json()["runs"]]


def test_ls_filters_by_flow_state_and_time(recorded: tuple[str, float]) -> None:
    url, between = recorded
    assert _ids("--url", url) == ["nightly:Completed", "broken:Failed", "nightly:Completed"]
    assert _ids("--flow", "nightly", "--url", url) == ["nightly:Completed"] * 2
    assert _ids("--state", "failed", "--url", url) == ["broken:Failed"]
    assert len(_ids("--state", "Failed", "--state", "completed", "--url", url)) == 3
    iso = datetime.fromtimestamp(between, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert _ids("--since", iso, "--url", url) == ["nightly:Completed"]
    assert _ids("--until", iso, "--url", url) == ["broken:Failed", "nightly:Completed"]
    assert len(_ids("--since", "1h", "--url", url)) == 3
    assert _ids("--since", "1h", "--until", "30m", "--url", url) == []
    assert _ids("--flow", "nightly", "--limit", "1", "--url", url) == ["nightly:Completed"]
    none = sluice("run", "ls", "--flow", "nope", "--url", url)
    assert none.exit_code == 0 and none.stdout.strip() == "no flow runs match"

    bad = sluice("run", "ls", "--state", "done", "--url", url)
    assert bad.exit_code == 2 and "unknown state 'done'" in bad.stderr
    assert "Completed" in bad.stderr
    late = sluice("run", "ls", "--since", "yesterday", "--url", url)
    assert late.exit_code == 2 and "is not a time" in late.stderr


def test_ls_table_shows_utc_times_with_a_z(recorded: tuple[str, float]) -> None:
    url, _ = recorded
    table = sluice("run", "ls", "--url", url).stdout.splitlines()
    assert table[0].split() == ["ID", "FLOW", "STATE", "STARTED", "DURATION"]
    started = table[1].split()[3]
    assert started.endswith("Z") and len(started) == len("2025-01-31T12:00:00Z")


def test_show_and_why_take_a_unique_id_prefix(recorded: tuple[str, float]) -> None:
    url, _ = recorded
    (failed,) = sluice("run", "ls", "--json", "--state", "Failed", "--url", url).json()["runs"]
    prefix = failed["id"][:8]
    assert _ids("--id", prefix, "--url", url) == ["broken:Failed"]
    shown = sluice("run", "show", prefix, "--json", "--url", url)
    assert shown.exit_code == 0, shown.stderr
    assert shown.json()["id"] == failed["id"]
    text = sluice("run", "show", prefix.upper(), "--url", url)
    assert text.exit_code == 0 and failed["id"] in text.stdout
    why = sluice("run", "why", prefix, "--json", "--url", url)
    assert why.exit_code == 0 and why.json()["run_id"] == failed["id"]


def _make_store(url: str) -> None:
    """The store itself (`run` commands refuse a store that does not exist)."""
    with Limits(url) as limits:
        limits.ensure("made", slots=1)


def _record(url: str, run_id: str, flow_name: str) -> None:
    now = time.time()
    open_history(url).write([FlowRunRecord(run_id, flow_name, "Completed", now, now, now)])


def test_an_ambiguous_prefix_lists_the_candidates_and_exits_3(store_url: str) -> None:
    first = "6970ff67" + uuid.uuid4().hex[8:]
    second = "6970ff68" + uuid.uuid4().hex[8:]
    _make_store(store_url)
    _record(store_url, first, "alpha")
    _record(store_url, second, "beta")
    for prefix in ("6970", "6970ff6"):
        ran = sluice("run", "show", prefix, "--url", store_url)
        assert ran.exit_code == 3
        assert f"2 flow runs have ids starting with {prefix!r}" in ran.error
        assert f"{first} (alpha)" in ran.error and f"{second} (beta)" in ran.error
    unique = sluice("run", "show", "6970ff67", "--json", "--url", store_url)
    assert unique.exit_code == 0 and unique.json()["id"] == first
    for missing in ("697", "6970ff69", "not-hex"):
        ran = sluice("run", "show", missing, "--url", store_url)
        assert ran.exit_code == 3
        assert f"no flow run with id {missing!r}" in ran.error
    bad = sluice("run", "ls", "--id", "xyz", "--url", store_url)
    assert bad.exit_code == 2 and "not hexadecimal" in bad.stderr
