"""The dashboard's limit API gives each holder's fence, as `limit inspect --json` does."""

from __future__ import annotations

from starlette.testclient import TestClient

from sluice import Limits


def test_api_limit_gives_each_holders_fence(client: TestClient, limits: Limits) -> None:
    limits.create("db", slots=2)
    leases = [limits.acquire("db"), limits.acquire("db")]
    try:
        data = client.get("/api/limits/db").json()
    finally:
        for lease in leases:
            lease.release()
    assert [(h["lease_id"], h["fence"]) for h in data["holders"]] == [
        (lease.id, lease.fence) for lease in leases
    ]
