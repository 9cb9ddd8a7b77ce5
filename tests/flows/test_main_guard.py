"""A script that runs a flow on ProcessPoolTaskRunner without the main guard: a clear error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import sluice.runs
from conformance._helpers import child_env

pytestmark = pytest.mark.slow

_SCRIPT = """
import os

from sluice import flow, task
from sluice.runners import ProcessPoolTaskRunner


@task
def double(x: int) -> int:
    return 2 * x


@flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
def doubles() -> list[int]:
    print("flow body in", os.getpid(), flush=True)
    return [future.result() for future in double.map(range(3))]

"""

_RUN = 'print("result", doubles(), flush=True)\n'
_GUARDED = 'if __name__ == "__main__":\n    ' + _RUN


@pytest.mark.parametrize("guarded", [False, True], ids=["unguarded", "guarded"])
def test_a_process_pool_flow_in_a_script_without_the_main_guard_says_what_to_add(
    sqlite_url: str, tmp_path: Path, guarded: bool
) -> None:
    script = tmp_path / "doubles.py"
    script.write_text(_SCRIPT + (_GUARDED if guarded else _RUN))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=child_env(SLUICE_URL=sqlite_url, SLUICE_PROGRESS="0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        start_new_session=True,  # so a hang can be ended with its worker processes
    )
    try:
        stdout, stderr = proc.communicate(timeout=60)  # it used to hang forever
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the script hung (killed after 60 s, with its worker processes)")
    assert stdout.count("flow body in") == 1, stdout  # never in a worker
    assert len(sluice.runs.list(10)) == 1  # the workers recorded no flow run of their own
    if guarded:
        assert proc.returncode == 0, stderr
        assert "result [0, 2, 4]" in stdout
        return
    assert proc.returncode == 1, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("sluice.errors.InvalidRequest: ProcessPoolTaskRunner"), stderr
    assert 'if __name__ == "__main__":' in last and "doubles.py" in last
    assert sluice.runs.get(sluice.runs.list(1)[0].id).run.state == "Failed"
