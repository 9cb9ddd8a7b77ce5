"""Admin operations: create/ensure/get/list/update/enable/disable/reset/delete/inspect.

Semantics 8 (bad input is rejected loudly, naming the value) and 10 (admin never
corrupts state: leases record what they took; holders survive every change).
"""

from __future__ import annotations

import math
import os
import re
import socket
import string
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice import Limit, Limits, LimitStatus
from sluice.errors import (
    AcquireTimeout,
    InvalidRequest,
    LeaseLost,
    LimitBusy,
    LimitExists,
    LimitNotFound,
    SluiceError,
)

from ._helpers import CLOCK_SLACK, snapshot

pytestmark = pytest.mark.timeout(30)

NAME_CHARS = set(string.ascii_letters + string.digits + "._:/-")


# --------------------------------------------------------------------------- create / get / list


def test_create_returns_the_limit_with_defaults(limits: Limits) -> None:
    made = limits.create("db", slots=20)
    assert made == Limit(name="db", slots=20, rate=None, burst=None, active=True, lease_ttl=30.0)
    assert limits.get("db") == made
    assert isinstance(made.lease_ttl, float)


@pytest.mark.parametrize(("rate", "burst"), [(10.0, 10), (2.5, 3), (0.5, 1), (1, 1), (100, 100)])
def test_a_rate_alone_gets_burst_max_1_ceil_rate(limits: Limits, rate: float, burst: int) -> None:
    made = limits.create("api", rate=rate)
    assert made.rate == pytest.approx(rate)
    assert made.burst == burst
    assert made.slots is None
    assert limits.get("api") == made


def test_create_keeps_every_given_field(limits: Limits) -> None:
    made = limits.create("api", slots=5, rate=10.0, burst=4, lease_ttl=12.5, active=False)
    assert made == Limit("api", 5, 10.0, 4, False, 12.5)
    assert limits.get("api") == made


def test_create_twice_raises_limit_exists_and_keeps_the_first(limits: Limits) -> None:
    limits.create("db", slots=2)
    with pytest.raises(LimitExists) as info:
        limits.create("db", slots=7, rate=3.0)
    assert isinstance(info.value, SluiceError)
    assert "db" in str(info.value)
    assert limits.get("db").slots == 2
    assert limits.get("db").rate is None


def test_get_of_a_missing_limit_raises_limit_not_found(limits: Limits) -> None:
    with pytest.raises(LimitNotFound) as info:
        limits.get("nope")
    assert info.value.names == ("nope",)
    assert isinstance(info.value, LookupError)


def test_list_is_sorted_by_name(limits: Limits) -> None:
    assert limits.list() == []
    for name in ["m", "b", "z", "a.1", "a"]:
        limits.create(name, slots=1)
    assert [lim.name for lim in limits.list()] == ["a", "a.1", "b", "m", "z"]
    assert all(isinstance(lim, Limit) for lim in limits.list())


def test_limit_is_frozen(limits: Limits) -> None:
    made = limits.create("db", slots=1)
    with pytest.raises(AttributeError):
        made.slots = 5  # type: ignore[misc]
    assert limits.get("db").slots == 1


def test_two_clients_on_one_url_share_one_store(limits: Limits, store_url: str) -> None:
    with Limits(store_url) as other:
        other.create("shared", slots=3)
        lease = other.acquire("shared", occupy=2)
        assert limits.get("shared").slots == 3
        assert limits.inspect("shared").in_use == 2
        lease.release()
        assert limits.inspect("shared").in_use == 0


def test_distinct_memory_names_are_distinct_stores() -> None:
    first = f"memory://iso-{uuid.uuid4().hex}"
    second = f"memory://iso-{uuid.uuid4().hex}"
    with Limits(first) as a, Limits(second) as b:
        a.create("only-in-a", slots=1)
        assert [lim.name for lim in a.list()] == ["only-in-a"]
        assert b.list() == []
        with pytest.raises(LimitNotFound):
            b.get("only-in-a")


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"slots": 0}, ["slots", "0"]),
        ({"slots": -3}, ["slots", "-3"]),
        ({"slots": 2.5}, ["slots", "2.5"]),
        ({"slots": True}, ["slots", "True"]),
        ({"slots": "4"}, ["slots", "'4'"]),
        ({"rate": 0}, ["rate", "0"]),
        ({"rate": -1.5}, ["rate", "-1.5"]),
        ({"rate": math.nan}, ["rate", "nan"]),
        ({"rate": math.inf}, ["rate", "inf"]),
        ({"rate": False}, ["rate", "False"]),
        ({"rate": 5.0, "burst": 0}, ["burst", "0"]),
        ({"rate": 5.0, "burst": 1.5}, ["burst", "1.5"]),
        ({"slots": 1, "burst": 3}, ["burst", "rate"]),
        ({}, ["slots", "rate"]),
        ({"slots": 1, "lease_ttl": 0.5}, ["lease_ttl", "0.5"]),
        ({"slots": 1, "lease_ttl": 86_401}, ["lease_ttl", "86401"]),
        ({"slots": 1, "lease_ttl": math.nan}, ["lease_ttl", "nan"]),
        ({"slots": 1, "lease_ttl": "30"}, ["lease_ttl", "'30'"]),
        ({"slots": 1, "active": "yes"}, ["active", "'yes'"]),
    ],
)
def test_bad_values_are_rejected_naming_value_and_field(
    limits: Limits, kwargs: dict[str, object], fragments: list[str]
) -> None:
    with pytest.raises(InvalidRequest) as info:
        limits.create("db", **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    with pytest.raises(LimitNotFound):
        limits.get("db")
    assert limits.list() == []


@pytest.mark.parametrize("ttl", [1, 1.0, 86_400, 86_400.0, 30])
def test_lease_ttl_bounds_are_inclusive(limits: Limits, ttl: float) -> None:
    assert limits.create("db", slots=1, lease_ttl=ttl).lease_ttl == float(ttl)


@pytest.mark.parametrize(
    "name", ["", "a b", "é", "x" * 129, "semi;colon", "star*", "new\nline", "tab\t"]
)
def test_bad_names_are_rejected_naming_the_name(limits: Limits, name: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        limits.create(name, slots=1)
    assert repr(name) in str(info.value)
    assert limits.list() == []


@pytest.mark.parametrize("name", [None, 5, b"db", ["db"]])
def test_names_of_the_wrong_type_are_rejected(limits: Limits, name: object) -> None:
    with pytest.raises(InvalidRequest):
        limits.create(name, slots=1)  # type: ignore[arg-type]
    assert limits.list() == []


def test_every_allowed_character_and_length_128_are_accepted(limits: Limits) -> None:
    names = ["a", "x" * 128, "Z9._:/-", "tenant/acme:api.v2-read", "0"]
    for name in names:
        assert limits.create(name, slots=1).name == name
    assert [lim.name for lim in limits.list()] == sorted(names)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(name=st.text(alphabet=st.characters(codec="ascii"), min_size=0, max_size=130))
def test_name_rule_property(limits: Limits, name: str) -> None:
    valid = 1 <= len(name) <= 128 and set(name) <= NAME_CHARS
    if not valid:
        with pytest.raises(InvalidRequest):
            limits.create(name, slots=1)
        return
    made = limits.ensure(name, slots=1)
    assert made.name == name
    assert limits.get(name).name == name


# --------------------------------------------------------------------------- ensure


def test_ensure_creates_when_missing(limits: Limits) -> None:
    made = limits.ensure("db", slots=4, rate=2.0)
    assert made == Limit("db", 4, 2.0, 2, True, 30.0)
    assert limits.get("db") == made


def test_ensure_leaves_an_existing_limit_and_its_holders_untouched(limits: Limits) -> None:
    original = limits.create("db", slots=2, lease_ttl=10)
    lease = limits.acquire("db")
    before = snapshot(limits, "db")
    again = limits.ensure("db", slots=50, rate=9.0, lease_ttl=99)
    assert again == original
    assert snapshot(limits, "db") == before
    lease.release()
    assert limits.inspect("db").in_use == 0


def test_ensure_validates_even_when_the_limit_exists(limits: Limits) -> None:
    limits.create("db", slots=2)
    with pytest.raises(InvalidRequest):
        limits.ensure("db", slots=0)
    assert limits.get("db").slots == 2


# --------------------------------------------------------------------------- update


def test_update_changes_only_the_given_fields(limits: Limits) -> None:
    limits.create("api", slots=5, rate=10.0, burst=4, lease_ttl=20)
    assert limits.update("api", slots=7) == Limit("api", 7, 10.0, 4, True, 20.0)
    assert limits.update("api", burst=6) == Limit("api", 7, 10.0, 6, True, 20.0)
    assert limits.update("api", lease_ttl=5) == Limit("api", 7, 10.0, 6, True, 5.0)
    assert limits.update("api", rate=3.0) == Limit("api", 7, 3.0, 6, True, 5.0)
    assert limits.get("api") == Limit("api", 7, 3.0, 6, True, 5.0)


def test_update_slots_none_removes_slots_when_a_rate_remains(limits: Limits) -> None:
    limits.create("api", slots=5, rate=10.0)
    updated = limits.update("api", slots=None)
    assert updated.slots is None
    assert updated.rate == 10.0
    assert limits.get("api") == updated


def test_update_rate_none_removes_the_rate_and_its_burst(limits: Limits) -> None:
    limits.create("api", slots=5, rate=10.0, burst=3)
    updated = limits.update("api", rate=None)
    assert (updated.slots, updated.rate, updated.burst) == (5, None, None)


def test_adding_a_rate_without_burst_gets_the_default_burst(limits: Limits) -> None:
    limits.create("api", slots=5)
    assert limits.update("api", rate=2.5).burst == 3


def test_update_that_would_leave_nothing_is_rejected_and_changes_nothing(limits: Limits) -> None:
    limits.create("db", slots=5)
    before = snapshot(limits, "db")
    with pytest.raises(InvalidRequest):
        limits.update("db", slots=None)
    assert snapshot(limits, "db") == before


def test_update_without_fields_is_rejected(limits: Limits) -> None:
    limits.create("db", slots=5)
    with pytest.raises(InvalidRequest):
        limits.update("db")
    assert limits.get("db").slots == 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"slots": 0},
        {"slots": True},
        {"rate": -1},
        {"burst": 0},
        {"lease_ttl": 0.1},
        {"lease_ttl": 100_000},
        {"rate": math.nan},
    ],
)
def test_bad_updates_change_nothing(limits: Limits, kwargs: dict[str, object]) -> None:
    limits.create("api", slots=5, rate=10.0, burst=4)
    lease = limits.acquire("api", occupy=2)
    before = snapshot(limits, "api")
    with pytest.raises(InvalidRequest):
        limits.update("api", **kwargs)
    assert snapshot(limits, "api") == before
    lease.release()


def test_update_keeps_holders(limits: Limits) -> None:
    limits.create("db", slots=3)
    lease = limits.acquire("db", occupy=2)
    limits.update("db", slots=10, lease_ttl=60)
    status = limits.inspect("db")
    assert status.in_use == 2
    assert [h.lease_id for h in status.holders] == [lease.id]
    lease.release()
    assert limits.inspect("db").in_use == 0


def test_lowering_slots_below_use_keeps_holders_and_newcomers_wait(limits: Limits) -> None:
    limits.create("db", slots=3)
    leases = [limits.acquire("db") for _ in range(3)]
    limits.update("db", slots=1)
    status = limits.inspect("db")
    assert status.limit.slots == 1
    assert status.in_use == 3
    assert sorted(h.lease_id for h in status.holders) == sorted(lease.id for lease in leases)
    for lease in leases[:2]:
        lease.release()
        with pytest.raises(AcquireTimeout):
            limits.acquire("db", timeout=0)
    assert limits.inspect("db").in_use == 1
    leases[2].release()
    newcomer = limits.acquire("db", timeout=0)
    assert limits.inspect("db").in_use == 1
    newcomer.release()
    assert limits.inspect("db").in_use == 0


def test_occupy_above_a_lowered_slots_is_rejected(limits: Limits) -> None:
    limits.create("db", slots=4)
    limits.update("db", slots=2)
    with pytest.raises(InvalidRequest):
        limits.acquire("db", occupy=3, timeout=0)


# --------------------------------------------------------------------------- enable / disable


def test_disable_and_enable_flip_active(limits: Limits) -> None:
    limits.create("db", slots=1)
    assert limits.disable("db").active is False
    assert limits.get("db").active is False
    assert limits.disable("db").active is False  # idempotent
    assert limits.enable("db").active is True
    assert limits.get("db") == Limit("db", 1, None, None, True, 30.0)


def test_inactive_limit_admits_everyone_and_records_nothing(limits: Limits) -> None:
    limits.create("db", slots=1, active=False)
    leases = [limits.acquire("db", occupy=1, timeout=0) for _ in range(5)]
    status = limits.inspect("db")
    assert status.in_use == 0
    assert status.holders == []
    assert status.waiters == []
    for lease in leases:
        lease.release()
    assert limits.inspect("db").in_use == 0


def test_inactive_rate_limit_takes_no_tokens(limits: Limits) -> None:
    limits.create("api", rate=1.0, burst=1, active=False)
    for _ in range(5):
        limits.rate_limit("api", timeout=0)
    limits.enable("api")
    assert limits.inspect("api").next_token_in == 0.0
    limits.rate_limit("api", timeout=0)


def test_disable_enable_while_leases_are_out_keeps_counts_exact(limits: Limits) -> None:
    limits.create("db", slots=2)
    taken_while_active = limits.acquire("db", occupy=2)
    limits.disable("db")
    admitted = [limits.acquire("db", occupy=2, timeout=0) for _ in range(3)]
    limits.enable("db")
    status = limits.inspect("db")
    assert status.in_use == 2
    assert [h.lease_id for h in status.holders] == [taken_while_active.id]
    for lease in admitted:  # they took nothing, so releasing them gives nothing back
        lease.release()
    assert limits.inspect("db").in_use == 2
    with pytest.raises(AcquireTimeout):
        limits.acquire("db", timeout=0)
    taken_while_active.release()
    assert limits.inspect("db").in_use == 0
    limits.acquire("db", occupy=2, timeout=0).release()


def test_enable_disable_of_a_missing_limit_raise_limit_not_found(limits: Limits) -> None:
    for call in (limits.enable, limits.disable, limits.reset, limits.delete, limits.inspect):
        with pytest.raises(LimitNotFound) as info:
            call("ghost")
        assert info.value.names == ("ghost",)
    with pytest.raises(LimitNotFound):
        limits.update("ghost", slots=1)
    assert limits.list() == []


# --------------------------------------------------------------------------- reset


def test_reset_revokes_every_holder_and_returns_the_count(limits: Limits) -> None:
    limits.create("db", slots=5)
    limits.create("other", slots=5)
    leases = [limits.acquire("db", occupy=n) for n in (1, 2)]
    both = limits.acquire(["db", "other"], occupy=1)
    assert limits.inspect("db").in_use == 4
    assert limits.reset("db") == 3
    status = limits.inspect("db")
    assert (status.in_use, status.holders) == (0, [])
    # a lease over several limits is revoked as a whole: no partial holds remain
    assert limits.inspect("other").in_use == 0
    for lease in [*leases, both]:
        with pytest.raises(LeaseLost):
            lease.release()
        assert lease.lost
    assert limits.reset("db") == 0
    limits.acquire("db", occupy=5, timeout=0).release()


def test_reset_refills_the_rate_bucket(limits: Limits) -> None:
    limits.create("api", rate=0.5, burst=2)
    limits.rate_limit("api", occupy=2, timeout=0)
    wait = limits.inspect("api").next_token_in
    assert wait is not None
    assert wait > 1.0
    assert limits.reset("api") == 0
    assert limits.inspect("api").next_token_in == 0.0
    limits.rate_limit("api", occupy=2, timeout=0)


def test_update_of_the_rate_restarts_a_full_bucket(limits: Limits) -> None:
    limits.create("api", rate=0.5, burst=2)
    limits.rate_limit("api", occupy=2, timeout=0)
    limits.update("api", rate=0.25)
    assert limits.inspect("api").next_token_in == 0.0
    limits.rate_limit("api", occupy=2, timeout=0)


# --------------------------------------------------------------------------- delete


def test_delete_refuses_while_held_unless_forced(limits: Limits) -> None:
    limits.create("db", slots=3)
    lease = limits.acquire("db", occupy=2)
    before = snapshot(limits, "db")
    with pytest.raises(LimitBusy) as info:
        limits.delete("db")
    assert info.value.name == "db"
    assert info.value.holders == 1
    assert snapshot(limits, "db") == before
    limits.delete("db", force=True)
    with pytest.raises(LimitNotFound):
        limits.get("db")
    with pytest.raises(LeaseLost) as lost:
        lease.release()
    assert lost.value.lease_id == lease.id
    assert lease.lost
    lease.release()  # idempotent once the loss has been reported


def test_delete_of_an_idle_limit(limits: Limits) -> None:
    limits.create("db", slots=1)
    limits.acquire("db").release()
    limits.delete("db")
    assert limits.list() == []
    with pytest.raises(LimitNotFound):
        limits.acquire("db", timeout=0)


def test_recreate_while_an_old_lease_is_out_keeps_counts_exact(limits: Limits) -> None:
    limits.create("db", slots=2)
    old = limits.acquire("db", occupy=2)
    limits.delete("db", force=True)
    limits.create("db", slots=2)
    new = limits.acquire("db", occupy=1, timeout=0)
    with pytest.raises(LeaseLost):
        old.release()
    status = limits.inspect("db")
    assert status.in_use == 1
    assert [h.lease_id for h in status.holders] == [new.id]
    new.release()
    assert limits.inspect("db").in_use == 0


# --------------------------------------------------------------------------- inspect


def test_inspect_describes_holders(limits: Limits) -> None:
    limits.create("db", slots=5, lease_ttl=20)
    lease = limits.acquire("db", occupy=3, holder="job-7")
    status = limits.inspect("db")
    assert isinstance(status, LimitStatus)
    assert status.limit == limits.get("db")
    assert status.in_use == 3
    assert status.next_token_in is None
    assert status.waiters == []
    [holder] = status.holders
    assert holder.lease_id == lease.id
    assert holder.occupy == 3
    assert holder.holder == "job-7" == lease.holder
    assert holder.pid == os.getpid()
    assert holder.host in {socket.gethostname(), socket.getfqdn()}
    assert holder.since.tzinfo is not None
    assert holder.since.utcoffset() == timedelta(0)
    assert abs((holder.since - lease.acquired_at).total_seconds()) < 0.01
    assert timedelta(seconds=15) < holder.expires_at - holder.since <= timedelta(seconds=21)
    with pytest.raises(AttributeError):
        status.in_use = 0  # type: ignore[misc]
    lease.release()


def test_inspect_shows_next_token_for_rates(limits: Limits) -> None:
    limits.create("api", rate=2.0, burst=1)
    assert limits.inspect("api").next_token_in == 0.0
    before = time.monotonic()
    limits.rate_limit("api", timeout=0)
    wait = limits.inspect("api").next_token_in
    elapsed = time.monotonic() - before
    assert wait is not None
    # due 0.5 s after the grant, which was at most `elapsed` s before the inspect
    assert 0.5 - elapsed - CLOCK_SLACK <= wait <= 0.5 + CLOCK_SLACK


def test_leases_and_holders_use_utc_times_from_the_store_clock(limits: Limits) -> None:
    """Semantics 11: lease times come from the store's clock, as aware UTC datetimes."""
    limits.create("db", slots=1, lease_ttl=7)
    lease = limits.acquire("db")
    now = datetime.now(timezone.utc)
    assert lease.acquired_at.utcoffset() == timedelta(0)
    assert lease.expires_at.utcoffset() == timedelta(0)
    assert abs((now - lease.acquired_at).total_seconds()) < 5  # same host, same clock
    assert (lease.expires_at - lease.acquired_at).total_seconds() == pytest.approx(7, abs=0.5)
    lease.release()


def test_unknown_admin_arguments_are_type_errors(limits: Limits) -> None:
    with pytest.raises(TypeError):
        limits.create("db", slotz=1)  # type: ignore[call-arg]
    assert limits.list() == []


@pytest.mark.parametrize(
    ("fields", "rule"),
    [
        ({"slots": 2**31}, "slots must be an int from 1 to 2,147,483,647"),
        ({"slots": 2**63}, "slots must be an int from 1 to 2,147,483,647"),
        ({"rate": 1e300}, "rate must be units per second from 1e-06 to 1e+09"),
        ({"rate": 5e-324}, "rate must be units per second from 1e-06 to 1e+09"),
        ({"rate": 10.0, "burst": 2**53 + 1}, "burst must be an int from 1 to 2,147,483,647"),
    ],
)
def test_numbers_no_store_can_hold_are_refused_alike_everywhere_and_change_nothing(
    limits: Limits, fields: dict[str, Any], rule: str
) -> None:
    limits.create("db", slots=1)
    before = snapshot(limits, "db")
    with pytest.raises(InvalidRequest, match=re.escape(rule)):
        limits.create("huge", **fields)
    with pytest.raises(InvalidRequest, match=re.escape(rule)):
        limits.update("db", **fields)
    assert [lim.name for lim in limits.list()] == ["db"]
    assert snapshot(limits, "db") == before
    # The largest values allowed are stored and read back exactly, on every store.
    limits.create("edge", slots=2**31 - 1, rate=1e9, burst=2**31 - 1)
    edge = limits.get("edge")
    assert (edge.slots, edge.rate, edge.burst) == (2**31 - 1, 1e9, 2**31 - 1)
    limits.update("edge", rate=1e-6)
    assert limits.get("edge").rate == 1e-6
    with pytest.raises(InvalidRequest, match="occupy must be an int from 1 to"):
        limits.acquire("db", occupy=2**31)
