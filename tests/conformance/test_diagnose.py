"""Store.diagnose(): facts for ``sluice doctor``, read without changing anything."""

from __future__ import annotations

from sluice import Limits
from sluice.store import StoreDiagnosis

from ._helpers import wait_until
from ._procs import hung_holder


def test_diagnose_names_the_backend_and_a_current_schema(limits: Limits, store_url: str) -> None:
    limits.create("db", slots=1)
    diagnosis = limits._store.diagnose()
    assert isinstance(diagnosis, StoreDiagnosis)
    assert diagnosis.backend == store_url.split("://", 1)[0]
    assert diagnosis.detail and "\n" not in diagnosis.detail
    assert isinstance(diagnosis.schema_version, int)
    assert diagnosis.schema_current is True
    assert diagnosis.expired_leases == 0


def test_diagnose_counts_expired_leases_and_reclaims_none(
    mp_limits: Limits, cross_process_url: str
) -> None:
    limits = mp_limits
    limits.create("db", slots=2, lease_ttl=2)
    live = limits.acquire("db")
    with hung_holder(limits, cross_process_url, ["db"]) as hung:
        wait_until(
            lambda: limits._store.diagnose().expired_leases == 1,
            10,
            "the hung holder's lease to show as expired",
        )
        assert limits._store.diagnose().expired_leases == 1  # diagnosing reclaimed nothing
        assert [h.lease_id for h in limits.inspect("db").holders] == [live.id]  # shown gone
        limits.acquire("db", timeout=0).release()  # a write step that needs the unit reclaims
        assert limits._store.diagnose().expired_leases == 0
        live.release()
        outcome = hung.thaw_and_leave()
        assert outcome == ("lease-lost", True, hung.lease_id, ["db"], "ok"), outcome
