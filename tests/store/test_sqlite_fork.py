"""A process that forks: the child gets its own identity, and never keeps its parent alive."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sluice import Limits

SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from sluice import Limits

    limits = Limits(sys.argv[1])
    lease = limits.acquire("db")            # held by the parent, with threads running
    child = os.fork()
    if child == 0:
        extra = limits.acquire("other", timeout=10)   # the inherited client works
        assert extra.id != lease.id
        extra.release()
        print("child-ok", flush=True)
        time.sleep(120)
        os._exit(0)
    print("held", os.getpid(), child, flush=True)
    time.sleep(120)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_works_and_does_not_keep_a_killed_parent_alive(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/fork.db"
    with Limits(url) as limits:
        limits.create("db", slots=1, lease_ttl=60)
        limits.create("other", slots=1, lease_ttl=60)
        proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, url], stdout=subprocess.PIPE, text=True
        )
        child_pid = None
        try:
            assert proc.stdout is not None
            lines = {}
            for _ in range(2):
                words = proc.stdout.readline().split()
                lines[words[0]] = words[1:]
            assert sorted(lines) == ["child-ok", "held"], lines
            child_pid = int(lines["held"][1])
            holders = limits.inspect("db").holders
            assert [h.pid for h in holders] == [proc.pid]
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            started = time.monotonic()
            # The child still runs, holding copies of the parent's descriptors; the
            # parent's slot must come back anyway, long before its 60 s lease TTL.
            with limits.concurrency("db", timeout=5):
                waited = time.monotonic() - started
            assert waited < 1.0
            os.kill(child_pid, 0)  # the child is indeed still alive
        finally:
            for pid in (proc.pid, child_pid):
                if pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
