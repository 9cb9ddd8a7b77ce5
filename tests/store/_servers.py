"""Store servers of a test's own (redis-server, a PostgreSQL cluster): started on a free
loopback port, frozen with SIGSTOP and thawed, stopped by PID. Never the shared ones."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from conformance._helpers import wait_until
from conftest import require_server, skip_or_fail

__all__ = [
    "OwnPostgres",
    "OwnRedis",
    "free_port",
    "own_postgres_or_skip",
    "own_redis_or_skip",
    "pg_bin",
]


def pg_bin() -> Path | None:
    """Where initdb, pg_ctl and postgres are: SLUICE_TEST_PG_BIN, else the newest
    Debian-style /usr/lib/postgresql/N/bin, else the directory of an initdb on PATH."""
    if os.environ.get("SLUICE_TEST_PG_BIN"):
        return Path(os.environ["SLUICE_TEST_PG_BIN"])
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _wait_listening(port: int, what: str, within: float = 10.0) -> None:
    wait_until(lambda: _listening(port), within, f"{what} to listen on port {port}")


class OwnRedis:
    """A redis-server of this test's own, on a free loopback port; stopped by its PID."""

    def __init__(self, directory: Path, persistent: bool) -> None:
        self.port = free_port()
        self.directory = directory
        self.persistent = persistent
        self.extra: tuple[str, ...] = ()
        self.proc: subprocess.Popen[bytes] | None = None

    def restart_with(self, *extra: str) -> None:
        """Start again with extra server options (e.g. ``--requirepass``)."""
        self.kill()
        self.extra = extra
        self.start()

    def start(self) -> None:
        args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        args += list(self.extra)
        args += ["--dir", str(self.directory)]
        if self.persistent:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(self.port, "redis-server")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGKILL alone: it ends a frozen (SIGSTOPped) server too, and a SIGCONT first
            # would let it answer what it had received before it dies.
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing is answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


def own_redis_or_skip(directory: Path) -> OwnRedis:
    """A started OwnRedis; skip (fail under CI=true) without redis-server."""
    if shutil.which("redis-server") is None:
        require_server("127.0.0.1", 1, "install redis-server (Debian: apt install redis-server)")
    server = OwnRedis(directory, persistent=False)
    server.start()
    return server


class OwnPostgres:
    """A PostgreSQL cluster of this test's own: initdb'd in a temporary directory owned by
    the ``postgres`` user (as root, the server runs as that user), listening on a free
    loopback port with trust auth; stopped by its postmaster's PID."""

    def __init__(self) -> None:
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="sluice-pg-"))
        self.data = self.directory / "data"
        self.pid: int | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        bin_dir = pg_bin()
        assert bin_dir is not None, "no PostgreSQL server binaries (see own_postgres_or_skip)"
        self._run(str(bin_dir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync")  # fmt: skip
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.directory}"
            " -c fsync=off -c synchronous_commit=off"
        )
        self._run(str(bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.directory / "log"),
                  "-w", "-t", "30", "-o", options, "start")  # fmt: skip
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def _processes(self) -> list[int]:
        """The postmaster and every process it started."""
        assert self.pid is not None
        children = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.pid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        return [self.pid, *(int(c) for c in children)]

    def pause(self) -> None:
        """Freeze the server: SIGSTOP its postmaster, then every backend it started."""
        for pid in self._processes():
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self._processes():
            os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stop the cluster (by PID: SIGQUIT, an immediate shutdown) and remove its files."""
        if self.pid is not None:
            pids = self._processes()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGQUIT)
            pid = self.pid
            with contextlib.suppress(AssertionError):
                wait_until(lambda: not _alive(pid), 10.0, "the postmaster to stop")
            if _alive(self.pid):
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            self.pid = None
        shutil.rmtree(self.directory, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def own_postgres_or_skip() -> OwnPostgres:
    """A started OwnPostgres; skip (fail under CI=true) without PostgreSQL's server binaries."""
    bin_dir = pg_bin()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        skip_or_fail(
            "no PostgreSQL server binaries (initdb, pg_ctl): apt install postgresql, "
            "or set SLUICE_TEST_PG_BIN"
        )
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        skip_or_fail("running as root, and no runuser to start PostgreSQL as postgres")
    server = OwnPostgres()
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server
