"""Choosing a store by URL: known schemes, clear errors, no passwords in messages."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sluice import Limits
from sluice.errors import ConfigError, StoreError
from sluice.settings import resolve_url
from sluice.store import known_schemes, redact_url


def test_an_unknown_scheme_lists_the_known_ones_and_hides_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        Limits("mongo://user:hunter2@127.0.0.1/db")
    message = str(caught.value)
    assert "'mongo'" in message
    for scheme in known_schemes():
        assert f"{scheme}://" in message
    assert "hunter2" not in message


def test_redact_url_masks_only_the_password() -> None:
    assert redact_url("redis://:s3cret@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redact_url("postgresql://me:pw@127.0.0.1/db") == "postgresql://me:***@127.0.0.1/db"
    assert redact_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert redact_url("redis://127.0.0.1/0?prefix=app") == "redis://127.0.0.1/0?prefix=app"


def test_redact_url_masks_passwords_in_query_parameters_and_nested_urls() -> None:
    url = (
        "postgresql://app@127.0.0.1/db?password=hunter22&sslmode=disable"
        "&listen_url=postgresql://app:nested-pw@127.0.0.1:5432/db"
    )
    shown = redact_url(url)
    assert "hunter22" not in shown and "nested-pw" not in shown
    assert "password=***" in shown and "sslmode=disable" in shown
    assert "listen_url=postgresql://app:***@127.0.0.1:5432/db" in shown
    assert redact_url("redis://127.0.0.1:6379/0?password=abc12") == (
        "redis://127.0.0.1:6379/0?password=***"
    )


def test_scrub_masks_every_secret_of_the_urls_wherever_it_appears() -> None:
    from sluice._urls import scrub

    url = "postgresql://u:s3cr3t-pw@h/db?listen_url=postgresql://u:other-pw@h/db"
    message = "failed for s3cr3t-pw at postgresql://u:other-pw@h/db (try again)"
    assert scrub(message, [url, None]) == "failed for *** at postgresql://u:***@h/db (try again)"


def test_a_password_in_a_query_parameter_never_reaches_limits_url_or_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        Limits("mongo://127.0.0.1/db?password=hunter2x")
    assert "hunter2x" not in str(caught.value)
    with Limits("memory://secret-test") as limits:
        assert "hunter" not in limits.url


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:", "nothing"])
def test_malformed_urls_are_config_errors_naming_the_url(url: str) -> None:
    with pytest.raises(ConfigError, match="URL"):
        Limits(url)


def test_relative_and_absolute_sqlite_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with Limits("sqlite:///rel/here.db") as limits:
        limits.create("x", slots=1)
    assert (tmp_path / "rel" / "here.db").exists()
    with Limits(f"sqlite:///{tmp_path}/rel/here.db") as same:
        assert same.get("x").slots == 1


def test_the_default_store_lives_in_sluice_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLUICE_URL", raising=False)
    monkeypatch.setenv("SLUICE_HOME", str(tmp_path / "home"))
    resolved = resolve_url()
    assert resolved.source == "default"
    assert resolved.url == f"sqlite:///{tmp_path / 'home' / 'sluice.db'}"
    monkeypatch.setenv("SLUICE_URL", "memory://from-env")
    assert resolve_url() == type(resolved)("memory://from-env", "env")
    assert resolve_url("memory://arg").source == "argument"


def test_a_database_from_a_newer_sluice_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "future.db"
    with Limits(f"sqlite:///{db}") as limits:
        limits.create("x", slots=1)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE sluice_meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    other = tmp_path / "copy.db"
    other.write_bytes(db.read_bytes())
    with pytest.raises(StoreError, match="schema version 99"):
        Limits(f"sqlite:///{other}").list()


def test_one_store_per_url_per_process(tmp_path: Path) -> None:
    a = Limits(f"sqlite:///{tmp_path}/s.db")
    b = Limits(f"sqlite:///{tmp_path}/./s.db")
    assert a._store is b._store
    a.close()
    b.create("still-open", slots=1)  # the store lives while any Limits uses it
    b.close()


def test_an_unwritable_sqlite_path_is_a_clear_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open SQLite store"):
        Limits(f"sqlite:///{blocker}/sub/x.db").list()
