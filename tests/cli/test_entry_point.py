"""The installed ``sluice`` program and ``python -m sluice``, run as separate processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import sluice as sluice_pkg
from conformance._helpers import wait_until
from sluice import Limits

from ._run import SLUICE, sluice_process


def test_the_program_is_installed_and_python_m_sluice_is_the_same() -> None:
    assert SLUICE.exists(), f"{SLUICE} is missing: install the package (pip install -e .)"
    ran = sluice_process("--version")
    assert (ran.exit_code, ran.stdout) == (0, f"sluice, version {sluice_pkg.__version__}\n")
    module = subprocess.run(
        [sys.executable, "-m", "sluice", "limit", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert module.returncode == 0
    assert module.stdout.startswith("Usage: sluice limit [OPTIONS] COMMAND [ARGS]...")


def test_every_exit_code_crosses_the_process_boundary(tmp_path: Path, db_url: str) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    steps = [
        (["limit", "create", "db", "--slots", "2"], 0, ""),
        (["limit", "create", "db", "--slots", "2"], 4, "already exists"),
        (["limit", "create", "x", "--rate", "fast"], 2, "'fast' is not a rate"),
        (["limit", "inspect", "nope"], 3, "no limit named 'nope'"),
        (["limit", "ls", "--url", "sqlite:////dev/null/x.db"], 5, "cannot create SQLite store"),
        (["limit", "ls", "--url", f"sqlite:///{tmp_path / 'typo.db'}"], 5, "no Sluice store at"),
        (["limit", "ls", "--url", f"sqlite:///{junk}"], 1, "file is not a database"),
    ]
    for args, code, message in steps:
        ran = sluice_process("--url", db_url, *args)
        assert ran.exit_code == code, (args, ran.stdout, ran.stderr)
        assert message in ran.error, (args, ran.stderr)
        if code:
            assert len(ran.stderr.strip().splitlines()) in (1, 4), ran.stderr  # 4: click usage


def test_env_and_file_configuration_reach_the_program(
    tmp_path: Path, db_url: str, limits: Limits, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits.create("from-db", slots=1)
    (tmp_path / "sluice.toml").write_text(f'url = "{db_url}"\n\n[limits.declared]\nslots = 3\n')
    (tmp_path / "deep" / "er").mkdir(parents=True)
    ran = sluice_process("limit", "apply", cwd=tmp_path / "deep" / "er")
    assert ran.exit_code == 0, ran.stderr
    assert "create     declared" in ran.stdout
    assert [limit.name for limit in limits.list()] == ["declared", "from-db"]

    other = f"sqlite:///{tmp_path / 'other.db'}"
    with Limits(other) as empty:
        empty.create("from-env", slots=1)
    monkeypatch.setenv("SLUICE_URL", other)  # the environment beats the file
    ran = sluice_process("limit", "ls", "--json")
    assert [row["name"] for row in ran.json()["limits"]] == ["from-env"]


def test_passwords_stay_out_of_the_programs_output(monkeypatch: pytest.MonkeyPatch) -> None:
    # A Redis URL on a port nobody listens on: unreachable (exit 5), password masked.
    monkeypatch.setenv("SLUICE_URL", "redis://:hunter2-secret@127.0.0.1:1/0")
    for args in (["limit", "ls"], ["doctor"], ["doctor", "--json"], ["limit", "watch", "x"]):
        ran = sluice_process(*args)
        assert ran.exit_code == 5, ran.stderr
        assert "hunter2-secret" not in ran.stdout + ran.stderr
        assert "redis://:***@127.0.0.1:1/0" in ran.stdout + ran.stderr


class _Output:
    """Collects a child's stdout lines on a thread, split into watch snapshots."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._lines: list[str] = []
        self._lock = threading.Lock()
        assert proc.stdout is not None
        stream = proc.stdout
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._lock:
                self._lines.append(line)

    def join(self) -> None:
        """Wait for the end of the child's output."""
        self._thread.join(10)

    def snapshots(self) -> list[str]:
        """Every complete snapshot so far (one is complete once the next one starts)."""
        with self._lock:
            text = "".join(self._lines)
        return text.split("--- ")[1:-1]

    def wait_for(self, after: int, test: Callable[[str], bool], what: str) -> int:
        """The index of the first snapshot after ``after`` that passes ``test`` (up to 15 s)."""

        def found() -> int | None:
            for index, snap in enumerate(self.snapshots()):
                if index > after and test(snap):
                    return index + 1  # truthy even for index 0
            return None

        try:
            return wait_until(found, 15, f"a snapshot {what}") - 1
        except AssertionError as exc:
            raise AssertionError(f"{exc}; got {self.snapshots()[-3:]!r}") from None


def test_watch_shows_a_holder_appear_and_leave_and_ctrl_c_ends_it(
    db_url: str, limits: Limits
) -> None:
    limits.create("db", slots=2)
    with subprocess.Popen(
        [str(SLUICE), "limit", "watch", "db", "--interval", "0.2", "--url", db_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    ) as proc:
        try:
            output = _Output(proc)
            empty = output.wait_for(-1, lambda s: "holders (0)" in s, "with no holders")
            lease = limits.acquire("db", holder="watched-holder")
            held = output.wait_for(
                empty,
                lambda s: "holders (1)" in s and "watched-holder" in s and "1/2 in use" in s,
                "showing the new holder",
            )
            lease.release()
            output.wait_for(
                held,
                lambda s: "holders (0)" in s and "watched-holder" not in s,
                "without the holder after its release",
            )
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
            assert proc.stderr is not None and proc.stderr.read() == ""
            output.join()
        finally:
            if proc.poll() is None:
                proc.kill()


def test_output_cut_short_by_a_closed_pipe_ends_quietly(db_url: str) -> None:
    with Limits(db_url) as limits:
        limits.create("db", slots=2)
    reader, writer = os.pipe()
    proc = subprocess.Popen(  # `sluice limit watch db --json | head -1`
        [str(SLUICE), "limit", "watch", "db", "--json", "--interval", "50ms", "--url", db_url],
        stdout=writer,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(writer)
    with os.fdopen(reader) as out:
        first = out.readline()  # one snapshot, then the reader is gone
    _, stderr = proc.communicate(timeout=60)
    assert first.startswith("{")
    assert stderr == ""  # no "unexpected BrokenPipeError", no traceback
    assert proc.returncode == 1
