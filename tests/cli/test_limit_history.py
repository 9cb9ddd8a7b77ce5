"""``sluice limit history NAME``: the audit record of the CLI's admin actions, every store."""

from __future__ import annotations

import getpass
import os
import re
import socket

from sluice import Limits

from ._run import sluice, sluice_process


def test_each_admin_command_leaves_a_record_of_who_what_and_when(store_url: str) -> None:
    with Limits(store_url) as limits:
        limits.create("db", slots=2)
        lease = limits.acquire("db")
        for args in (
            ("update", "db", "--slots", "5", "--rate", "10/s"),
            ("disable", "db"),
            ("enable", "db"),
            ("reset", "db", "--yes"),
            ("delete", "db", "--yes"),
        ):
            ran = sluice("limit", *args, "--url", store_url)
            assert ran.exit_code == 0, ran.stderr
        assert lease.lost

    data = sluice("limit", "history", "db", "--json", "--url", store_url).json()
    assert data["limit"] == "db"
    records = data["records"]
    assert [r["action"] for r in records] == ["delete", "reset", "enable", "disable", "update"]
    update = records[-1]
    assert update["changes"] == {
        "slots": {"from": 2, "to": 5},
        "rate": {"from": None, "to": 10.0},
        "burst": {"from": None, "to": 10},
    }
    assert records[1]["changes"] == {"revoked": 1}
    assert records[0]["changes"]["force"] is False
    for record in records:
        who = record["who"]
        assert (who["user"], who["host"], who["pid"]) == (
            getpass.getuser(),
            socket.gethostname(),
            os.getpid(),
        )
        assert who["address"] is None
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", record["at"])

    table = sluice("limit", "history", "db", "--url", store_url)
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["WHEN", "(UTC)", "ACTION", "WHO", "WHAT"]
    assert "slots 2 -> 5, rate none -> 10/s, burst none -> 10" in lines[-1]
    assert "revoked 1 lease" in table.stdout and "not forced; it had slots 5" in table.stdout
    assert f"{getpass.getuser()}@{socket.gethostname()}" in lines[1]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  delete ", lines[1])
    newest = sluice("limit", "history", "db", "--count", "1", "--json", "--url", store_url)
    assert [r["action"] for r in newest.json()["records"]] == ["delete"]


def test_a_limit_with_no_record_and_an_unknown_limit(db_url: str) -> None:
    with Limits(db_url) as limits:
        limits.create("db", slots=1)
    ran = sluice("limit", "history", "db", "--url", db_url)
    assert ran.exit_code == 0
    assert ran.stdout.strip() == "no admin actions recorded for limit 'db'"
    assert sluice("limit", "history", "db", "--json", "--url", db_url).json() == {
        "limit": "db",
        "records": [],
    }
    missing = sluice("limit", "history", "nope", "--url", db_url)
    assert missing.exit_code == 3
    assert "nope" in missing.error


def test_the_installed_program_is_recorded_as_sluice(db_url: str) -> None:
    with Limits(db_url) as limits:
        limits.create("db", slots=1)
    assert sluice_process("limit", "update", "db", "--slots", "3", "--url", db_url).exit_code == 0
    data = sluice("limit", "history", "db", "--json", "--url", db_url).json()
    (record,) = data["records"]
    assert record["who"]["program"] == "sluice"
    assert record["who"]["pid"] != os.getpid()
    assert record["who"]["text"].startswith(f"{getpass.getuser()}@{socket.gethostname()} (sluice")
