"""Store.diagnose(): facts for ``sluice doctor``, read without changing anything."""

from __future__ import annotations

import time

import pytest

from sluice import LeaseLost, Limits
from sluice.store import StoreDiagnosis


def test_diagnose_names_the_backend_and_a_current_schema(limits: Limits, store_url: str) -> None:
    limits.create("db", slots=1)
    diagnosis = limits._store.diagnose()
    assert isinstance(diagnosis, StoreDiagnosis)
    assert diagnosis.backend == store_url.split("://", 1)[0]
    assert diagnosis.detail and "\n" not in diagnosis.detail
    assert isinstance(diagnosis.schema_version, int)
    assert diagnosis.schema_current is True
    assert diagnosis.expired_leases == 0


def test_diagnose_counts_expired_leases_and_reclaims_none(limits: Limits) -> None:
    limits.create("db", slots=2, lease_ttl=1)
    live = limits.acquire("db")
    lapsed = limits.acquire("db")
    limits._session.keeper.untrack_lease(lapsed.id)  # no more renewals: it expires
    deadline = time.monotonic() + 5
    while limits._store.diagnose().expired_leases == 0:
        assert time.monotonic() < deadline, "the unrenewed lease never showed as expired"
        time.sleep(0.05)
    assert limits._store.diagnose().expired_leases == 1
    assert limits._store.diagnose().expired_leases == 1  # diagnosing reclaimed nothing
    assert [h.lease_id for h in limits.inspect("db").holders] == [live.id]  # inspect reclaims
    assert limits._store.diagnose().expired_leases == 0
    live.release()
    with pytest.raises(LeaseLost):
        lapsed.release()
