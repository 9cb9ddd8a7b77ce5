"""``sluice limit ...`` through click's test runner: output, --json, errors and exit codes."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from conformance._helpers import wait_for_waiters
from sluice import AcquireTimeout, LeaseLost, Limit, Limits

from ._run import sluice

# --------------------------------------------------------------------------- create


def test_create_stores_what_the_options_say(db_url: str, limits: Limits) -> None:
    ran = sluice(
        "limit", "create", "api", "--url", db_url,
        "--slots", "20", "--rate", "600/min", "--burst", "5", "--lease-ttl", "1m", "--disabled",
    )  # fmt: skip
    assert ran.exit_code == 0, ran.stderr
    assert ran.stdout == (
        "created limit 'api': slots 20, rate 10/s, burst 5, lease TTL 1m, disabled\n"
    )
    assert limits.get("api") == Limit("api", 20, 10.0, 5, False, 60.0)


@pytest.mark.parametrize(
    ("rate", "per_second"), [("10/s", 10.0), ("2/h", 2 / 3600), ("1/5s", 0.2), ("0.5/s", 0.5)]
)
def test_create_accepts_every_rate_form(
    db_url: str, limits: Limits, rate: str, per_second: float
) -> None:
    assert sluice("limit", "create", "r", "--rate", rate, "--url", db_url).exit_code == 0
    assert limits.get("r").rate == pytest.approx(per_second, rel=1e-12)
    assert limits.get("r").burst == 1 if per_second < 1 else 10


def test_create_without_slots_or_rate_is_a_usage_error(db_url: str, limits: Limits) -> None:
    ran = sluice("limit", "create", "x", "--url", db_url)
    assert ran.exit_code == 2
    assert ran.error == "Error: give --slots N (units held at once), --rate R (10/s), or both"
    assert limits.list() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "10/x"], "'10/x' is not a rate: use COUNT/PERIOD such as 10/s"),
        (["--slots", "3", "--lease-ttl", "soon"], "'soon' is not a duration"),
        (["--slots", "0"], "slots must be an int from 1 to 2,147,483,647 or None, got 0"),
        (["--slots", "3", "--lease-ttl", "500ms"], "lease_ttl must be seconds between 1 and"),
        (["--slots", "3", "--burst", "2"], "burst=2 needs a rate"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_value(
    db_url: str, limits: Limits, args: list[str], message: str
) -> None:
    ran = sluice("limit", "create", "x", "--url", db_url, *args)
    assert ran.exit_code == 2
    assert message in ran.error
    assert limits.list() == []


def test_a_bad_name_is_a_usage_error(db_url: str) -> None:
    ran = sluice("limit", "create", "no spaces", "--slots", "1", "--url", db_url)
    assert ran.exit_code == 2
    assert ran.error == (
        "Error: invalid limit name 'no spaces': use 1-128 characters of letters, digits and ._:/-"
    )


def test_create_of_an_existing_name_exits_4_and_changes_nothing(
    db_url: str, limits: Limits
) -> None:
    limits.create("db", slots=2)
    ran = sluice("limit", "create", "db", "--slots", "9", "--url", db_url)
    assert ran.exit_code == 4
    assert ran.error == (
        "Error: limit 'db' already exists; change it with `sluice limit update db ...`, "
        "or declare it in sluice.toml and run `sluice limit apply`"
    )
    assert limits.get("db").slots == 2


# --------------------------------------------------------------------------- ls


def test_ls_shows_a_table_and_json_with_units_in_use_and_waiters(
    db_url: str, limits: Limits
) -> None:
    limits.create("db", slots=1)
    limits.create("api", rate=2.0, burst=4, active=False)
    lease = limits.acquire("db")
    waiter = threading.Thread(target=lambda: limits.acquire("db", timeout=10).release())
    waiter.start()
    try:
        wait_for_waiters(limits, "db", 1)
        table = sluice("limit", "ls", "--url", db_url)
        listed = sluice("limit", "ls", "--json", "--url", db_url)
    finally:
        lease.release()
        waiter.join()
    assert table.exit_code == 0
    assert table.stdout.splitlines() == [
        "NAME  IN USE/SLOTS  RATE  BURST  WAITERS  ACTIVE",
        "api   0/-           2/s   4      0        no",
        "db    1/1           -     -      1        yes",
    ]
    assert listed.exit_code == 0
    assert listed.json() == {
        "limits": [
            {
                "name": "api",
                "slots": None,
                "rate": 2.0,
                "burst": 4,
                "lease_ttl": 30.0,
                "active": False,
                "in_use": 0,
                "holders": 0,
                "waiters": 0,
            },
            {
                "name": "db",
                "slots": 1,
                "rate": None,
                "burst": None,
                "lease_ttl": 30.0,
                "active": True,
                "in_use": 1,
                "holders": 1,
                "waiters": 1,
            },
        ]
    }


def made(url: str) -> str:
    """``url``, once a store exists there (opening it from Python creates it)."""
    with Limits(url) as limits:
        limits.list()
    return url


def test_reading_commands_refuse_a_store_that_does_not_exist_and_create_nothing(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "x.db"
    url = f"sqlite:///{missing}"
    for args in (["limit", "ls"], ["limit", "inspect", "db"], ["run", "ls"], ["run", "show", "x"]):
        ran = sluice(*args, "--url", url)
        assert ran.exit_code == 5, (args, ran.stderr)
        assert ran.error.startswith(f"Error: no Sluice store at {url}"), ran.error
        assert "nothing was created" in ran.error
    assert not (tmp_path / "no").exists()
    assert sluice("limit", "create", "db", "--slots", "1", "--url", url).exit_code == 0
    assert sluice("limit", "ls", "--url", url).exit_code == 0  # writing created it


def test_ls_of_an_empty_store(db_url: str) -> None:
    made(db_url)
    assert sluice("limit", "ls", "--url", db_url).stdout.startswith("no limits;")
    assert sluice("limit", "ls", "--json", "--url", db_url).json() == {"limits": []}


# --------------------------------------------------------------------------- inspect


def test_inspect_shows_holders_and_waiters(db_url: str, limits: Limits) -> None:
    limits.create("db", slots=3)
    lease = limits.acquire("db", occupy=2, holder="flow invoices / task get-page-7")
    waiter = threading.Thread(
        target=lambda: limits.acquire("db", occupy=2, timeout=10, holder="queued-task").release()
    )
    waiter.start()
    try:
        wait_for_waiters(limits, "db", 1)
        text = sluice("limit", "inspect", "db", "--url", db_url)
        doc = sluice("limit", "inspect", "db", "--json", "--url", db_url).json()
    finally:
        lease.release()
        waiter.join()
    assert text.exit_code == 0
    out = text.stdout
    assert "limit db (active)" in out
    assert "2/3 in use" in out
    assert "holders (1)" in out and "flow invoices / task get-page-7" in out
    assert "waiters (1)" in out and "queued-task" in out
    assert lease.id in out

    assert doc["name"] == "db" and doc["in_use"] == 2 and doc["next_token_in"] is None
    [holder] = doc["holders"]
    assert holder["lease_id"] == lease.id
    assert holder["occupy"] == 2
    assert holder["holder"] == "flow invoices / task get-page-7"
    assert holder["pid"] > 0 and holder["host"]
    assert 0 <= holder["held_for"] < 10 and 20 < holder["expires_in"] <= 30
    assert holder["since"].endswith("+00:00")
    [queued] = doc["waiters"]
    assert (queued["position"], queued["occupy"], queued["holder"]) == (1, 2, "queued-task")
    assert 0 <= queued["waiting_for"] < 10


def test_inspect_says_when_the_next_rate_token_is_due(db_url: str, limits: Limits) -> None:
    limits.create("api", rate=1 / 60, burst=2)
    assert "next token  available now" in sluice("limit", "inspect", "api", "--url", db_url).stdout
    limits.rate_limit("api", occupy=2)  # the bucket is empty now
    text = sluice("limit", "inspect", "api", "--url", db_url).stdout
    doc = sluice("limit", "inspect", "api", "--json", "--url", db_url).json()
    assert "rate        1/min, burst 2" in text
    assert "next token  in " in text
    assert 50 < doc["next_token_in"] <= 60
    assert doc["rate"] == pytest.approx(1 / 60)


def test_inspect_shows_the_totals_every_process_added_up(db_url: str, limits: Limits) -> None:
    limits.create("db", slots=1)
    assert (
        "totals      nothing granted yet"
        in sluice("limit", "inspect", "db", "--url", db_url).stdout
    )
    held = limits.acquire("db", occupy=1)
    with pytest.raises(AcquireTimeout):
        limits.acquire("db", timeout=0)
    held.release()
    text = sluice("limit", "inspect", "db", "--url", db_url).stdout
    assert "totals      1 grant (1 unit), mean wait 0ms, 1 timed out, 0 expired leases" in text
    doc = sluice("limit", "inspect", "db", "--json", "--url", db_url).json()
    totals = doc["totals"]
    assert (totals["grants"], totals["granted_units"], totals["timeouts"]) == (1, 1, 1)
    assert totals["expired_leases_reclaimed"] == 0
    assert [b["count"] for b in totals["wait_buckets"]] == [1] + [0] * 12
    assert totals["wait_buckets"][-1]["le"] is None


def test_inspect_of_a_missing_limit_exits_3(db_url: str) -> None:
    ran = sluice("limit", "inspect", "nope", "--url", made(db_url))
    assert ran.exit_code == 3
    assert ran.error == (
        "Error: no limit named 'nope'; list them with `sluice limit ls`, "
        "or create it with `sluice limit create NAME --slots N`"
    )


# --------------------------------------------------------------------------- watch


def test_watch_prints_count_snapshots_and_exits_0(db_url: str, limits: Limits) -> None:
    limits.create("db", slots=2)
    ran = sluice("limit", "watch", "db", "--interval", "50ms", "--count", "3", "--url", db_url)
    assert ran.exit_code == 0
    assert ran.stdout.count("limit db (active)") == 3
    assert ran.stdout.count("\n--- ") + ran.stdout.startswith("--- ") == 3

    lines = sluice(
        "limit", "watch", "db", "--json", "--interval", "50ms", "--count", "2", "--url", db_url
    ).stdout.splitlines()
    assert len(lines) == 2
    assert all(line.startswith('{"name": "db"') for line in lines)


def test_watch_rejects_a_tiny_interval(db_url: str) -> None:
    ran = sluice("limit", "watch", "db", "--interval", "1ms", "--url", db_url)
    assert ran.exit_code == 2
    assert "1ms is too short; use at least 50ms" in ran.error


def test_watch_of_a_missing_limit_exits_3(db_url: str) -> None:
    ran = sluice("limit", "watch", "nope", "--count", "1", "--url", made(db_url))
    assert ran.exit_code == 3


# --------------------------------------------------------------------------- update


def test_update_changes_only_what_is_given(db_url: str, limits: Limits) -> None:
    limits.create("db", slots=5, rate=10.0, burst=10, lease_ttl=30)
    lease = limits.acquire("db")
    ran = sluice("limit", "update", "db", "--slots", "8", "--url", db_url)
    assert ran.exit_code == 0
    assert ran.stdout == "updated limit 'db': slots 5 -> 8\n"
    assert limits.get("db") == Limit("db", 8, 10.0, 10, True, 30.0)
    assert [h.lease_id for h in limits.inspect("db").holders] == [lease.id]  # holders kept

    ran = sluice("limit", "update", "db", "--rate", "1/5s", "--lease-ttl", "2m", "--url", db_url)
    assert ran.stdout == "updated limit 'db': rate 10/s -> 12/min, lease TTL 30s -> 2m\n"
    assert limits.get("db") == Limit("db", 8, 0.2, 10, True, 120.0)
    lease.release()


def test_update_with_none_removes_a_setting(db_url: str, limits: Limits) -> None:
    limits.create("db", slots=5, rate=10.0)
    ran = sluice("limit", "update", "db", "--rate", "none", "--url", db_url)
    assert ran.exit_code == 0
    assert ran.stdout == "updated limit 'db': rate 10/s -> -, burst 10 -> -\n"
    assert limits.get("db") == Limit("db", 5, None, None, True, 30.0)

    ran = sluice("limit", "update", "db", "--slots", "none", "--url", db_url)
    assert ran.exit_code == 2  # nothing would be left to limit
    assert "needs slots=" in ran.error
    assert limits.get("db").slots == 5


def test_update_without_options_is_a_usage_error(db_url: str, limits: Limits) -> None:
    limits.create("db", slots=5)
    ran = sluice("limit", "update", "db", "--url", db_url)
    assert ran.exit_code == 2
    assert ran.error == "Error: give at least one of --slots, --rate, --burst, --lease-ttl"


def test_update_of_a_missing_limit_exits_3(db_url: str) -> None:
    assert sluice("limit", "update", "nope", "--slots", "1", "--url", db_url).exit_code == 3


# --------------------------------------------------------------------------- enable/disable


def test_disable_and_enable(db_url: str, limits: Limits) -> None:
    limits.create("db", slots=1)
    ran = sluice("limit", "disable", "db", "--url", db_url)
    assert (ran.exit_code, ran.stdout) == (
        0,
        "disabled limit 'db': it admits everyone until enabled\n",
    )
    assert limits.get("db").active is False
    ran = sluice("limit", "enable", "db", "--url", db_url)
    assert (ran.exit_code, ran.stdout) == (0, "enabled limit 'db'\n")
    assert limits.get("db").active is True
    assert sluice("limit", "enable", "nope", "--url", db_url).exit_code == 3
    assert sluice("limit", "disable", "nope", "--url", db_url).exit_code == 3


# --------------------------------------------------------------------------- reset


def test_reset_says_how_many_holders_were_released(db_url: str, limits: Limits) -> None:
    limits.create("db", slots=3)
    held = [limits.acquire("db"), limits.acquire("db")]
    ran = sluice("limit", "reset", "db", "--yes", "--url", db_url)
    assert (ran.exit_code, ran.stdout) == (0, "reset limit 'db': released 2 holder(s)\n")
    assert limits.inspect("db").holders == []
    for lease in held:
        with pytest.raises(LeaseLost):
            lease.release()


def test_reset_asks_first_and_a_no_changes_nothing(db_url: str, limits: Limits) -> None:
    limits.create("db", slots=3)
    lease = limits.acquire("db")
    ran = sluice("limit", "reset", "db", "--url", db_url, input="n\n")
    assert ran.exit_code == 1
    assert "Release all 1 holder(s) of limit 'db'?" in ran.stderr
    assert ran.error == "Error: cancelled; nothing changed (pass --yes to skip the question)"
    assert [h.lease_id for h in limits.inspect("db").holders] == [lease.id]

    ran = sluice("limit", "reset", "db", "--url", db_url, input="y\n")
    assert ran.exit_code == 0
    assert limits.inspect("db").holders == []


def test_reset_of_a_missing_limit_exits_3_without_asking(db_url: str) -> None:
    ran = sluice("limit", "reset", "nope", "--url", db_url)
    assert ran.exit_code == 3
    assert "Release" not in ran.stderr


# --------------------------------------------------------------------------- delete


def test_delete_refuses_while_held_unless_forced(db_url: str, limits: Limits) -> None:
    limits.create("db", slots=3)
    lease = limits.acquire("db")
    ran = sluice("limit", "delete", "db", "--yes", "--url", db_url)
    assert ran.exit_code == 4
    assert ran.error == (
        "Error: limit 'db' has 1 holder(s); wait for them, release them with "
        "`sluice limit reset db`, or pass --force"
    )
    assert limits.get("db").slots == 3

    ran = sluice("limit", "delete", "db", "--yes", "--force", "--url", db_url)
    assert (ran.exit_code, ran.stdout) == (0, "deleted limit 'db'\n")
    assert limits.list() == []
    with pytest.raises(LeaseLost):
        lease.release()


def test_delete_asks_first(db_url: str, limits: Limits) -> None:
    limits.create("db", slots=3)
    ran = sluice("limit", "delete", "db", "--url", db_url, input="\n")  # default: no
    assert ran.exit_code == 1
    assert "Delete limit 'db' (0 holder(s))? [y/N]" in ran.stderr
    assert [lim.name for lim in limits.list()] == ["db"]
    assert sluice("limit", "delete", "db", "--url", db_url, input="y\n").exit_code == 0
    assert limits.list() == []
    assert sluice("limit", "delete", "db", "--yes", "--url", db_url).exit_code == 3


# --------------------------------------------------------------------------- --url


def test_url_is_accepted_on_the_root_the_group_and_the_command(
    tmp_path: Path, db_url: str, limits: Limits, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits.create("here", slots=1)
    other = made(f"sqlite:///{tmp_path / 'other.db'}")
    for args in (
        ["--url", db_url, "limit", "ls", "--json"],
        ["limit", "--url", db_url, "ls", "--json"],
        ["limit", "ls", "--json", "--url", db_url],
        ["--url", other, "limit", "--url", other, "ls", "--json", "--url", db_url],  # innermost
    ):
        ran = sluice(*args)
        assert ran.exit_code == 0, (args, ran.stderr)
        assert [row["name"] for row in ran.json()["limits"]] == ["here"], args
    monkeypatch.setenv("SLUICE_URL", db_url)
    assert [row["name"] for row in sluice("limit", "ls", "--json").json()["limits"]] == ["here"]
    assert sluice("limit", "ls", "--json", "--url", other).json() == {"limits": []}  # flag wins


def test_memory_urls_work_within_one_process(mem_url: str) -> None:
    assert sluice("limit", "create", "m", "--slots", "2", "--url", mem_url).exit_code == 0
    assert sluice("limit", "ls", "--json", "--url", mem_url).json()["limits"][0]["slots"] == 2


@pytest.mark.parametrize("url", ["", "nothing", "sqlite://", "mongo://db"])
def test_a_url_the_library_rejects_is_a_usage_error(url: str) -> None:
    ran = sluice("limit", "ls", "--url", url)
    assert ran.exit_code == 2
    assert ran.error.startswith("Error: ")
    assert "URL" in ran.error or "scheme" in ran.error


@pytest.mark.parametrize(
    "url",
    [
        "mongodb://:s3cret-pw@127.0.0.1:27017/0",  # a scheme Sluice has no store for
        "mysql://me:s3cret-pw@127.0.0.1/db",
        "me:s3cret-pw@127.0.0.1",  # no scheme: not even a URL, still masked
        "redis//:s3cret-pw@127.0.0.1:6379",
    ],
)
def test_passwords_in_urls_never_appear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    def check(*args: str) -> None:
        ran = sluice(*args)
        assert ran.exit_code == 2, ran.stderr
        assert "s3cret-pw" not in ran.stdout + ran.stderr
        assert ":***@127.0.0.1" in ran.error

    check("--url", url, "limit", "ls")
    check("doctor", "--url", url)
    (tmp_path / "sluice.toml").write_text(f'url = "{url}"\n')
    check("limit", "inspect", "x")
    monkeypatch.setenv("SLUICE_URL", url)
    check("doctor", "--json")


def test_a_store_that_cannot_be_reached_exits_5() -> None:
    ran = sluice("limit", "ls", "--url", "sqlite:////dev/null/sluice.db")
    assert ran.exit_code == 5
    assert ran.error.startswith("Error: cannot create SQLite store sqlite:////dev/null/sluice.db")
    assert "check the path and its permissions" in ran.error


def test_a_store_error_exits_1(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    ran = sluice("limit", "ls", "--url", f"sqlite:///{tmp_path / 'junk.db'}")
    assert ran.exit_code == 1
    assert "file is not a database" in ran.error


def test_an_unexpected_failure_is_one_line_exiting_1(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Limits) -> list[Limit]:
        raise RuntimeError("disk on fire")

    made(db_url)
    monkeypatch.setattr(Limits, "list", broken)
    ran = sluice("limit", "ls", "--url", db_url)
    assert ran.exit_code == 1
    assert ran.stderr == (
        "Error: unexpected RuntimeError: disk on fire; set SLUICE_DEBUG=1 for a traceback "
        "and please report it\n"
    )
    monkeypatch.setenv("SLUICE_DEBUG", "1")
    with pytest.raises(RuntimeError, match="disk on fire"):
        sluice("limit", "ls", "--url", db_url)
