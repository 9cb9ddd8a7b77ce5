"""``sluice doctor``: which store, why, and whether it is healthy."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conformance._helpers import Attempt, wait_for_waiters, wait_until
from conformance._procs import hung_holder
from sluice import Limits
from sluice.errors import StoreError, StoreUnavailable
from sluice.store import acquire_store, known_schemes, release_store
from sluice.store.sqlite.schema import SCHEMA_VERSION as SQLITE_SCHEMA

from ._run import sluice

REPORT_KEYS = {
    "url",
    "source",
    "source_file",
    "chosen_by",
    "config_file",
    "reachable",
    "error",
    "backend",
    "detail",
    "schema_version",
    "schema_current",
    "clock_offset",
    "limits",
    "disabled_limits",
    "holders",
    "waiters",
    "expired_leases",
    "write_error",
}


def _db_path(url: str) -> Path:
    return Path(url[len("sqlite:///") :])


def test_doctor_on_a_store_not_yet_used_creates_nothing(tmp_path: Path) -> None:
    ran = sluice("doctor")
    assert ran.exit_code == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0] == f"store        sqlite:///{tmp_path / 'home' / 'sluice.db'}"
    assert lines[1].startswith("chosen by    default (no --url, SLUICE_URL or config file")
    assert "schema       none yet (created on first use)" in lines
    assert not (tmp_path / "home").exists()


def test_doctor_counts_limits_holders_waiters_and_expired_leases(
    db_url: str, limits: Limits
) -> None:
    limits.create("db", slots=1)
    limits.create("short", slots=5, lease_ttl=1)
    limits.create("off", slots=1, active=False)
    held = limits.acquire("db")
    waiter = Attempt(limits, "db", timeout=10, keep=False).start()
    # a real hung holder of "short": a child process, frozen, that renews nothing
    with hung_holder(limits, db_url, ["short"], probe="short") as hung:
        try:
            wait_for_waiters(limits, "db", 1)
            wait_until(
                lambda: limits._store.diagnose().expired_leases == 1,
                10,
                "the hung holder's lease to expire",
            )
            report = sluice("doctor", "--json", "--url", db_url)
            text = sluice("doctor", "--url", db_url)
        finally:
            held.release()
            waiter.passed()
        outcome = hung.thaw_and_leave()
    assert outcome[:3] == ("lease-lost", True, hung.lease_id), outcome
    assert report.exit_code == 0, report.stderr
    doc = report.json()
    assert set(doc) == REPORT_KEYS
    assert doc["url"] == db_url
    assert (doc["source"], doc["source_file"], doc["chosen_by"]) == ("flag", None, "flag --url")
    assert doc["reachable"] is True and doc["error"] is None
    assert doc["backend"] == "sqlite"
    assert doc["detail"].startswith("SQLite 3.") and "WAL" in doc["detail"]
    assert (doc["schema_version"], doc["schema_current"]) == (SQLITE_SCHEMA, True)
    assert abs(doc["clock_offset"]) < 1.0
    assert (doc["limits"], doc["disabled_limits"]) == (3, 1)
    assert (doc["holders"], doc["waiters"]) == (1, 1)  # the lapsed lease no longer holds
    assert doc["expired_leases"] == 1
    assert text.exit_code == 0
    out = text.stdout
    assert "reachable    yes, sqlite store: SQLite 3." in out
    assert f"schema       version {SQLITE_SCHEMA} (current)" in out
    assert "limits       3 (1 disabled)" in out
    assert "holders      1" in out
    # Still there: the counts are reads (inspect), which reclaim nothing and never wait
    # for the write lock; the next write step on the limit reclaims the lease.
    assert "expired      1 lease(s) past expiry, not reclaimed" in out


def test_doctor_says_which_file_chose_the_store(tmp_path: Path, db_url: str) -> None:
    (tmp_path / "sluice.toml").write_text(f'url = "{db_url}"\n')
    (tmp_path / "sub").mkdir()
    ran = sluice("doctor", "--json")
    assert ran.json()["source_file"] == str(tmp_path / "sluice.toml")
    assert ran.json()["config_file"] == str(tmp_path / "sluice.toml")
    assert f"chosen by    file {tmp_path / 'sluice.toml'}" in sluice("doctor").stdout


def test_doctor_on_an_unreachable_store_exits_5_after_its_report() -> None:
    url = "sqlite:////dev/null/sluice.db"
    ran = sluice("doctor", "--url", url)
    assert ran.exit_code == 5
    assert "reachable    no: cannot create SQLite store" in ran.stdout
    assert ran.error == (
        f"Error: cannot create SQLite store {url}: /dev/null is not a writable directory; "
        "check the path and its permissions"
    )
    doc = sluice("doctor", "--json", "--url", url).json()
    assert doc["reachable"] is False and "not a writable directory" in doc["error"]
    assert doc["schema_version"] is None and doc["limits"] is None


def test_doctor_on_a_store_from_a_newer_sluice_exits_1(db_url: str, limits: Limits) -> None:
    limits.create("db", slots=1)
    with sqlite3.connect(_db_path(db_url)) as conn:
        conn.execute("UPDATE sluice_meta SET value = '99' WHERE key = 'schema_version'")
    ran = sluice("doctor", "--url", db_url)
    assert ran.exit_code == 1
    assert "schema       version 99 (NOT the one this Sluice uses)" in ran.stdout
    assert "upgrade Sluice" in ran.error


def test_doctor_on_a_bad_url_is_a_usage_error() -> None:
    ran = sluice("doctor", "--url", "mongo://u:pw@127.0.0.1/x")
    assert ran.exit_code == 2
    assert ran.error == (
        "Error: unknown store scheme 'mongo' in 'mongo://u:***@127.0.0.1/x'; known schemes: "
        + ", ".join(f"{scheme}://" for scheme in known_schemes())
    )


def test_doctor_on_a_file_that_is_not_a_database_exits_1(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_bytes(b"not a database" * 100)
    ran = sluice("doctor", "--url", f"sqlite:///{tmp_path / 'junk.db'}")
    assert ran.exit_code == 1
    assert "file is not a database" in ran.error


def test_memory_store_diagnosis(mem_url: str) -> None:
    doc = sluice("doctor", "--json", "--url", mem_url).json()
    assert (doc["backend"], doc["schema_version"], doc["limits"]) == ("memory", None, 0)
    sluice("limit", "create", "m", "--slots", "1", "--url", mem_url)
    doc = sluice("doctor", "--json", "--url", mem_url).json()
    assert (doc["schema_version"], doc["schema_current"], doc["limits"]) == (SQLITE_SCHEMA, True, 1)
    assert "this process only" in doc["detail"]


# --------------------------------------------------------------------------- SQLite diagnose()


def test_sqlite_diagnose_of_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'sluice.db'}"
    store = acquire_store(url)
    try:
        diagnosis = store.diagnose()
    finally:
        release_store(store)
    assert (diagnosis.backend, diagnosis.schema_version, diagnosis.schema_current) == (
        "sqlite",
        None,
        False,
    )
    assert "no database yet" in diagnosis.detail
    assert not (tmp_path / "new").exists()


def test_sqlite_diagnose_of_an_unusable_path_or_a_foreign_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"junk" * 500)
    for url, error in (
        ("sqlite:////dev/null/x.db", StoreUnavailable),
        (f"sqlite:///{junk}", StoreError),
    ):
        store = acquire_store(url)
        try:
            with pytest.raises(error):
                store.diagnose()
        finally:
            release_store(store)


def _read_only(path: Path) -> Callable[[], None]:
    """Make a file read-only even for root (chattr +i where root runs the tests); the undo."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        return lambda: path.chmod(0o644)
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a file read-only")
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {done.stderr.decode().strip()}")

    def undo() -> None:
        subprocess.run(["chattr", "-i", str(path)], check=True)

    return undo


def test_doctor_says_a_read_only_database_cannot_be_written(tmp_path: Path) -> None:
    path = tmp_path / "ro" / "sluice.db"
    url = f"sqlite:///{path}"
    with Limits(url) as limits:
        limits.create("db", slots=1)
    undo = _read_only(path)
    try:
        ran = sluice("doctor", "--url", url)
        assert ran.exit_code == 1, ran.stdout
        assert "writes" in ran.stdout and "FAIL" in ran.stdout
        assert "cannot be written" in ran.error
    finally:
        undo()


def test_doctor_says_writes_work(db_url: str, limits: Limits) -> None:
    limits.create("db", slots=1)
    ran = sluice("doctor", "--url", db_url)
    assert ran.exit_code == 0, ran.stderr
    assert "writes       ok" in ran.stdout
    assert sluice("doctor", "--json", "--url", db_url).json()["write_error"] is None
