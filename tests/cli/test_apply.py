"""``sluice limit apply``: declared limits, the plan, idempotence and --prune."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice import LeaseLost, Limit, Limits

from ._run import sluice

DECLARED = """
[limits.db]
slots = 20

[limits.api]
rate = "600/min"
burst = 5
lease_ttl = "1m"

[limits."client:invoices"]
slots = 3
rate = 2.5
active = false
"""


@pytest.fixture
def toml(tmp_path: Path, db_url: str) -> Path:
    """sluice.toml in the current directory, naming this test's store."""
    path = tmp_path / "sluice.toml"
    path.write_text(f'url = "{db_url}"\n{DECLARED}')
    return path


def _names(limits: Limits) -> list[str]:
    return [limit.name for limit in limits.list()]


def test_apply_creates_then_changes_nothing_the_second_time(toml: Path, limits: Limits) -> None:
    first = sluice("limit", "apply")
    assert first.exit_code == 0, first.stderr
    assert first.stdout.splitlines()[1:] == [
        "  create     api              rate 10/s, burst 5, lease TTL 1m",
        "  create     client:invoices  slots 3, rate 2.5/s, burst 3, lease TTL 30s, disabled",
        "  create     db               slots 20, lease TTL 30s",
        "applied: 3 created, 0 updated, 0 unchanged",
    ]
    assert limits.list() == [
        Limit("api", None, 10.0, 5, True, 60.0),
        Limit("client:invoices", 3, 2.5, 3, False, 30.0),
        Limit("db", 20, None, None, True, 30.0),
    ]
    second = sluice("limit", "apply", "--json")
    assert second.exit_code == 0
    plan = second.json()
    assert plan["applied"] is False
    assert [(a["action"], a["name"]) for a in plan["actions"]] == [
        ("unchanged", "api"),
        ("unchanged", "client:invoices"),
        ("unchanged", "db"),
    ]
    assert sluice("limit", "apply").stdout.endswith("nothing to change\n")


def test_dry_run_prints_the_plan_and_changes_nothing(toml: Path, limits: Limits) -> None:
    ran = sluice("limit", "apply", "--dry-run", "--json")
    assert ran.exit_code == 0
    plan = ran.json()
    assert plan["file"] == str(toml)
    assert plan["dry_run"] is True and plan["applied"] is False
    assert [a["action"] for a in plan["actions"]] == ["create"] * 3
    assert plan["actions"][0]["limit"] == {
        "name": "api",
        "slots": None,
        "rate": 10.0,
        "burst": 5,
        "lease_ttl": 60.0,
        "active": True,
    }
    assert limits.list() == []
    assert sluice("limit", "apply", "--dry-run").stdout.endswith(
        "dry run: nothing changed; run without --dry-run to apply\n"
    )


def test_apply_updates_what_differs_and_keeps_holders(toml: Path, limits: Limits) -> None:
    limits.create("db", slots=10, rate=5.0)
    limits.create("api", rate=10.0, burst=5, lease_ttl=60)
    limits.create("client:invoices", slots=3, rate=2.5, burst=3, active=True)
    lease = limits.acquire("db", occupy=4)
    ran = sluice("limit", "apply", "--json")
    assert ran.exit_code == 0
    actions = {a["name"]: a for a in ran.json()["actions"]}
    assert actions["api"]["action"] == "unchanged"
    assert actions["db"]["action"] == "update"
    assert actions["db"]["changes"] == {
        "slots": {"from": 10, "to": 20},
        "rate": {"from": 5.0, "to": None},
        "burst": {"from": 5, "to": None},
    }
    assert actions["client:invoices"]["changes"] == {"active": {"from": True, "to": False}}
    assert limits.get("db") == Limit("db", 20, None, None, True, 30.0)
    assert limits.get("client:invoices").active is False
    status = limits.inspect("db")
    assert [h.lease_id for h in status.holders] == [lease.id] and status.in_use == 4
    lease.release()
    text = sluice("limit", "apply", "--dry-run")
    assert "unchanged  db" in text.stdout


def test_the_plan_shows_each_change(toml: Path, limits: Limits) -> None:
    limits.create("db", slots=10)
    ran = sluice("limit", "apply", "--dry-run")
    assert "  update     db               slots 10 -> 20" in ran.stdout.splitlines()


def test_limits_missing_from_the_file_are_left_alone_without_prune(
    toml: Path, limits: Limits
) -> None:
    limits.create("old", slots=1)
    ran = sluice("limit", "apply")
    assert ran.exit_code == 0
    assert "(1 stored limit(s) not in the file left alone: old; --prune deletes them)" in ran.stdout
    assert "old" in _names(limits)
    assert sluice("limit", "apply", "--json").json()["unmanaged"] == ["old"]


def test_prune_deletes_limits_missing_from_the_file(toml: Path, limits: Limits) -> None:
    limits.create("old", slots=1)
    ran = sluice("limit", "apply", "--prune")
    assert ran.exit_code == 0
    assert "  delete     old              0 holder(s)" in ran.stdout.splitlines()
    assert ran.stdout.endswith("applied: 3 created, 0 updated, 0 unchanged, 1 deleted\n")
    assert _names(limits) == ["api", "client:invoices", "db"]
    again = sluice("limit", "apply", "--prune").stdout.splitlines()  # idempotent
    assert [line.split()[0] for line in again[1:]] == ["unchanged"] * 3 + ["nothing"]


def test_prune_refuses_held_limits_and_changes_nothing(toml: Path, limits: Limits) -> None:
    limits.create("old", slots=2)
    limits.create("idle", slots=2)
    lease = limits.acquire("old")
    ran = sluice("limit", "apply", "--prune")
    assert ran.exit_code == 4
    assert ran.error == (
        "Error: not pruning held limit(s) 'old' (1 holder); nothing was changed. Wait for "
        "their holders, reset them with `sluice limit reset NAME`, or add --force"
    )
    assert _names(limits) == ["idle", "old"]  # not even the creates or the idle delete
    assert sluice("limit", "apply", "--prune", "--dry-run").exit_code == 4

    ran = sluice("limit", "apply", "--prune", "--force", "--json")
    assert ran.exit_code == 0
    deletes = [a for a in ran.json()["actions"] if a["action"] == "delete"]
    assert [(a["name"], a["holders"]) for a in deletes] == [("idle", 0), ("old", 1)]
    assert _names(limits) == ["api", "client:invoices", "db"]
    with pytest.raises(LeaseLost):
        lease.release()


def test_apply_reads_tool_sluice_in_pyproject(
    tmp_path: Path, db_url: str, limits: Limits, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pyproject.toml").write_text(
        f'[project]\nname = "demo"\n\n[tool.sluice]\nurl = "{db_url}"\n\n'
        '[tool.sluice.limits.db]\nslots = 4\nlease_ttl = "45s"\n'
    )
    (tmp_path / "pkg").mkdir()
    monkeypatch.chdir(tmp_path / "pkg")
    ran = sluice("limit", "apply")
    assert ran.exit_code == 0, ran.stderr
    assert ran.stdout.startswith(f"plan for {tmp_path / 'pyproject.toml'} on {db_url}:")
    assert limits.list() == [Limit("db", 4, None, None, True, 45.0)]


def test_apply_a_named_file_uses_its_url(tmp_path: Path, db_url: str, limits: Limits) -> None:
    other = tmp_path / "conf" / "prod.toml"
    other.parent.mkdir()
    other.write_text(f'url = "{db_url}"\n[limits.x]\nslots = 1\n')
    (tmp_path / "sluice.toml").write_text('url = "memory://not-this-one"\n')
    ran = sluice("limit", "apply", str(other))
    assert ran.exit_code == 0, ran.stderr
    assert _names(limits) == ["x"]


def test_the_flag_overrides_the_files_url(tmp_path: Path, db_url: str, limits: Limits) -> None:
    (tmp_path / "sluice.toml").write_text('url = "memory://not-this-one"\n[limits.x]\nslots = 1\n')
    assert sluice("limit", "apply", "--url", db_url).exit_code == 0
    assert _names(limits) == ["x"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[limits.db]\nslot = 3\n", "[limits.db]: unknown key 'slot' (did you mean 'slots'?)"),
        ('[limits.db]\nrate = "ten/s"\n', "[limits.db]: rate: 'ten/s' is not a rate"),
        ('[limits.db]\nslots = 3\nlease_ttl = "ages"\n', "[limits.db]: lease_ttl: 'ages' is not"),
        ('[limits.db]\nslots = "3"\n', "[limits.db]: slots must be an int from 1 to 2,147,483,647"),
        ("[limits.db]\nslots = 3\nactive = 1\n", "[limits.db]: active must be a bool"),
        ("[limits.db]\nburst = 3\n", "[limits.db]: limit 'db': burst=3 needs a rate"),
        ("[limits.db]\nactive = true\n", "[limits.db]: limit 'db' needs slots="),
        ('[limits."a b"]\nslots = 3\n', "[limits.a b]: invalid limit name 'a b'"),
        ("[limits]\ndb = 3\n", "[limits.db] must be a table"),
        ("limits = 3\n", ": limits must be a table of [limits.NAME] tables"),
        ("[limit.db]\nslots = 3\n", ": unknown key 'limit' (did you mean 'limits'?)"),
        ('url = "memory://x"\n', " declares no limits; add tables like [limits.NAME]"),
    ],
)
def test_a_bad_file_is_a_usage_error_naming_file_table_and_key(
    tmp_path: Path, db_url: str, limits: Limits, body: str, message: str
) -> None:
    path = tmp_path / "limits.toml"
    path.write_text(f"[limits.good]\nslots = 1\n{body}" if "limits." in body else body)
    ran = sluice("limit", "apply", str(path), "--url", db_url)
    assert ran.exit_code == 2, ran.stdout
    assert ran.error.startswith(f"Error: {path}")
    assert message in ran.error
    assert limits.list() == []  # "good" was not created either


def test_apply_without_a_file_anywhere_is_a_usage_error(tmp_path: Path) -> None:
    ran = sluice("limit", "apply")
    assert ran.exit_code == 2
    assert ran.error == (
        f"Error: no sluice.toml, or pyproject.toml with [tool.sluice], in {tmp_path} "
        "or its parents; give FILE"
    )
    ran = sluice("limit", "apply", "missing.toml")
    assert ran.exit_code == 2
    assert "'missing.toml' does not exist" in ran.error


def test_a_file_with_several_bad_entries_names_them_all_and_changes_nothing(
    tmp_path: Path, db_url: str
) -> None:
    config = tmp_path / "sluice.toml"
    config.write_text(
        f'url = "{db_url}"\n'
        "[limits.aaa]\nslots = 2\n"
        "[limits.bbb]\nslots = 3\n"
        '[limits.ccc]\nslots = "three"\n'
        "[limits.ddd]\nslots = 4\n"
        "[limits.eee]\nrate = 1e300\n"
    )
    ran = sluice("limit", "apply", str(config))
    assert ran.exit_code == 2, ran.stderr
    assert "2 limits in" in ran.stderr and "nothing was changed" in ran.stderr
    assert "[limits.ccc]: slots must be an int" in ran.stderr
    assert "[limits.eee]: rate must be units per second" in ran.stderr
    with Limits(db_url) as limits:
        assert limits.list() == []


def test_the_plan_is_printed_before_it_is_applied(tmp_path: Path, db_url: str) -> None:
    config = tmp_path / "sluice.toml"
    config.write_text(f'url = "{db_url}"\n[limits.aaa]\nslots = 2\n[limits.bbb]\nslots = 3\n')
    ran = sluice("limit", "apply", str(config))
    assert ran.exit_code == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0].startswith("plan for ")
    assert [line.split()[0] for line in lines[1:3]] == ["create", "create"]
    assert lines[-1] == "applied: 2 created, 0 updated, 0 unchanged"
