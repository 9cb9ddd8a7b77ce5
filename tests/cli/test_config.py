"""Configuration resolves in one order: flag, SLUICE_URL, sluice.toml / [tool.sluice], default."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.errors import ConfigError
from sluice.settings import find_config, load_config, resolve_url

from ._run import sluice


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_order_is_flag_then_env_then_file_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = resolve_url()
    assert default.source == "default"
    assert default.url == f"sqlite:///{tmp_path / 'home' / 'sluice.db'}"

    toml = _write(tmp_path / "sluice.toml", 'url = "memory://from-file"\n')
    assert resolve_url() == type(default)("memory://from-file", "file", toml)

    monkeypatch.setenv("SLUICE_URL", "memory://from-env")
    assert resolve_url() == type(default)("memory://from-env", "env")

    assert resolve_url("memory://from-flag") == type(default)("memory://from-flag", "argument")


def test_the_cli_reports_where_its_url_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def source() -> tuple[str, str]:
        report = sluice("doctor", "--json").json()
        return report["source"], report["url"]

    assert source() == ("default", f"sqlite:///{tmp_path / 'home' / 'sluice.db'}")
    _write(tmp_path / "sluice.toml", 'url = "memory://cli-file"\n')
    assert source() == ("file", "memory://cli-file")
    monkeypatch.setenv("SLUICE_URL", "memory://cli-env")
    assert source() == ("env", "memory://cli-env")
    report = sluice("--url", "memory://cli-flag", "doctor", "--json").json()
    assert (report["source"], report["url"]) == ("flag", "memory://cli-flag")


def test_the_nearest_file_in_this_directory_or_a_parent_is_used(tmp_path: Path) -> None:
    top = _write(tmp_path / "sluice.toml", 'url = "memory://top"\n')
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    found = find_config(deep)
    assert found is not None and found.path == top

    near = _write(tmp_path / "a" / "pyproject.toml", '[tool.sluice]\nurl = "memory://near"\n')
    found = find_config(deep)
    assert found is not None and found.path == near and found.url == "memory://near"


def test_sluice_toml_wins_over_pyproject_in_the_same_directory(tmp_path: Path) -> None:
    _write(tmp_path / "pyproject.toml", '[tool.sluice]\nurl = "memory://pyproject"\n')
    _write(tmp_path / "sluice.toml", 'url = "memory://sluice-toml"\n')
    found = find_config(tmp_path)
    assert found is not None and found.url == "memory://sluice-toml"


def test_a_pyproject_without_tool_sluice_is_passed_over(tmp_path: Path) -> None:
    _write(tmp_path / "sluice.toml", 'url = "memory://outer"\n')
    _write(tmp_path / "inner" / "pyproject.toml", '[project]\nname = "x"\n')
    found = find_config(tmp_path / "inner")
    assert found is not None and found.url == "memory://outer"


def test_a_relative_sqlite_path_in_a_file_is_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path / "proj" / "sluice.toml", 'url = "sqlite:///data/limits.db"\n')
    (tmp_path / "proj" / "src").mkdir()
    monkeypatch.chdir(tmp_path / "proj" / "src")
    resolved = resolve_url()
    assert resolved.source == "file"
    assert resolved.url == f"sqlite:///{tmp_path / 'proj' / 'data' / 'limits.db'}"


def test_an_unknown_key_names_the_file_the_table_and_the_key(tmp_path: Path) -> None:
    _write(tmp_path / "sluice.toml", 'uri = "memory://x"\n')
    with pytest.raises(ConfigError) as caught:
        resolve_url()
    message = str(caught.value)
    assert str(tmp_path / "sluice.toml") in message
    assert "'uri'" in message and "did you mean 'url'" in message

    _write(tmp_path / "pyproject.toml", "[tool.sluice]\nurl = 3\n")
    with pytest.raises(ConfigError, match=r"pyproject.toml \[tool.sluice\]: url must be"):
        load_config(tmp_path / "pyproject.toml")


def test_a_broken_file_is_a_usage_error_naming_the_file(tmp_path: Path) -> None:
    _write(tmp_path / "sluice.toml", "url = [\n")
    ran = sluice("limit", "ls")
    assert ran.exit_code == 2
    assert ran.error.startswith(f"Error: {tmp_path / 'sluice.toml'} is not valid TOML")


def test_the_file_is_not_read_when_a_flag_or_env_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path / "sluice.toml", "url = [\n")  # would be an error if read
    assert resolve_url("memory://flag").url == "memory://flag"
    monkeypatch.setenv("SLUICE_URL", "memory://env")
    assert resolve_url().url == "memory://env"
