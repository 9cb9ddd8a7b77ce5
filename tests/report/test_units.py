"""Rates and durations as people write them, parsed and shown back."""

from __future__ import annotations

import math

import pytest

from sluice.report.units import (
    format_age,
    format_duration,
    format_rate,
    parse_duration,
    parse_rate,
)


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("10/s", 10.0),
        ("600/min", 10.0),
        ("2/h", 2 / 3600),
        ("1/5s", 0.2),
        ("0.5/s", 0.5),
        ("3 / 2m", 3 / 120),
        ("100/d", 100 / 86400),
        ("5/sec", 5.0),
        ("7", 7.0),
        (" 1.5/S ", 1.5),
    ],
)
def test_rates_parse_to_units_per_second(text: str, per_second: float) -> None:
    assert math.isclose(parse_rate(text), per_second, rel_tol=1e-12)


@pytest.mark.parametrize("text", ["", "ten/s", "10/x", "10/", "/s", "0/s", "1/0s", "-1/s", "1e3/s"])
def test_a_bad_rate_names_the_value_and_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_rate(text)
    assert repr(text) in str(caught.value)
    assert "10/s, 600/min, 2/h, 1/5s or 0.5/s" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("1m30s", 90.0), ("45", 45.0)],
)
def test_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "5x", "1m30", "m5", "-3s", "5 minutes ago"])
def test_a_bad_duration_names_the_value_and_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(text)
    assert repr(text) in str(caught.value)
    assert "500ms, 30s, 5m" in str(caught.value)


@pytest.mark.parametrize(
    ("per_second", "shown"),
    [
        (10.0, "10/s"),
        (2.5, "2.5/s"),
        (0.2, "12/min"),
        (0.5, "30/min"),
        (2 / 3600, "2/h"),
        (1 / 7, "1/7s"),
        (100 / 86400, "1/864s"),
        (7 / 86400, "7/d"),
        (0.123456e-5, "1.235e-06/s"),
    ],
)
def test_rates_are_shown_in_a_readable_unit(per_second: float, shown: str) -> None:
    assert format_rate(per_second) == shown


@pytest.mark.parametrize("text", ["10/s", "600/min", "2/h", "1/5s", "0.5/s", "1/7s", "7/d"])
def test_a_shown_rate_parses_back_to_the_same_rate(text: str) -> None:
    rate = parse_rate(text)
    assert math.isclose(parse_rate(format_rate(rate)), rate, rel_tol=1e-9)


def test_durations_and_ages_are_shown_compactly() -> None:
    assert [format_duration(s) for s in (0.5, 30, 90, 300, 7200)] == [
        "500ms",
        "30s",
        "90s",
        "5m",
        "2h",
    ]
    assert [format_age(s) for s in (-1, 0.42, 12.4, 185, 7800)] == [
        "0.0s",
        "0.4s",
        "12s",
        "3m05s",
        "2h10m",
    ]
