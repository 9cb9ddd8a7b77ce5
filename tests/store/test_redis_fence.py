"""Redis fences stay above every fence handed out before the server lost its data.

A Redis without persistence that restarts comes back empty, while holders from before
still run until their next renewal tells them their leases are gone. The fence counter
is lost too; a counter that began again at 1 would give new holders smaller fences than
those stale holders, and a resource fencing on them would turn the new holders away. So
a fence is never below the server's clock in microseconds.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance._helpers import wait_until
from conftest import require_module, require_server
from sluice import Limits
from sluice.errors import LeaseLost

from ._servers import OwnRedis

redis = require_module("redis", "redis")

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def empty_on_restart(tmp_path: Path) -> Iterator[OwnRedis]:
    """A redis-server of this test's own with no persistence: a restart loses everything."""
    if shutil.which("redis-server") is None:
        require_server("127.0.0.1", 1, "install redis-server (Debian: apt install redis-server)")
    server = OwnRedis(tmp_path, persistent=False)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def server_micros(port: int) -> int:
    """The server's clock (TIME) in microseconds."""
    with redis.Redis("127.0.0.1", port) as client:
        seconds, micros = client.time()
        return int(seconds) * 1_000_000 + int(micros)


def test_fences_after_a_restart_without_data_exceed_those_before(
    empty_on_restart: OwnRedis,
) -> None:
    url = f"redis://127.0.0.1:{empty_on_restart.port}/0"
    with Limits(url) as limits:
        limits.create("db", slots=3, lease_ttl=3)
        old = [limits.acquire("db") for _ in range(3)]
        assert [lease.fence for lease in old] == sorted({lease.fence for lease in old})
        stale = max(lease.fence for lease in old)

        empty_on_restart.kill()
        empty_on_restart.start()  # empty: the limit, the leases and the fence counter are gone
        clock = server_micros(empty_on_restart.port)
        limits.create("db", slots=3, lease_ttl=3)
        new = limits.acquire("db", timeout=10)
        # Above every fence from before the loss: a counter from 1 would give 1 here.
        assert new.fence > stale
        assert new.fence >= clock  # it starts from the server's clock
        assert [h.fence for h in limits.inspect("db").holders] == [new.fence]
        later = limits.acquire("db", timeout=10)
        assert later.fence > new.fence

        # The stale holders learn their leases are gone at their next renewal (1 s).
        wait_until(lambda: all(lease.lost for lease in old), 5.0, "the old holders to learn")
        for lease in old:
            with pytest.raises(LeaseLost):
                lease.release()
        new.release()
        later.release()
