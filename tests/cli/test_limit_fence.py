"""`sluice limit inspect` shows each holder's fence; `reset --help` says what a reset promises."""

from __future__ import annotations

from sluice import Limits

from ._run import sluice


def test_inspect_shows_each_holders_fence(db_url: str, limits: Limits) -> None:
    limits.create("db", slots=3)
    first = limits.acquire("db")
    second = limits.acquire("db", occupy=2)
    try:
        text = sluice("limit", "inspect", "db", "--url", db_url)
        doc = sluice("limit", "inspect", "db", "--json", "--url", db_url).json()
    finally:
        first.release()
        second.release()
    assert text.exit_code == 0
    header, *rows = text.stdout.split("holders (2)\n")[1].split("\n\n")[0].splitlines()
    assert header.split()[:3] == ["LEASE", "FENCE", "OCCUPY"]
    assert [row.split()[:3] for row in rows] == [
        [lease.id, str(lease.fence), str(lease.occupy)] for lease in (first, second)
    ]
    assert [(h["lease_id"], h["fence"]) for h in doc["holders"]] == [
        (first.id, first.fence),
        (second.id, second.fence),
    ]
    assert second.fence > first.fence


def test_reset_help_says_what_a_reset_promises() -> None:
    out = " ".join(sluice("limit", "reset", "--help").stdout.split())
    assert "Revoke every lease" in out
    assert "waiters start right away" in out
    assert "flow task runs holding it are stopped" in out
    assert "within a third of the lease TTL" in out
    assert "fence" in out
