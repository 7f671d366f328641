"""GoTime: RFC 3339 with nanoseconds exactly as Go's time.Time marshals it (§1.2, §1.4)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from machinery_compat.exceptions import DecodeError
from machinery_compat.protocol.gotime import ZERO_TIME_TEXT, GoTime

# 2024-05-01T12:34:56Z in Unix seconds, computed independently of GoTime
BASE_S = int(datetime(2024, 5, 1, 12, 34, 56, tzinfo=UTC).timestamp())
NS = 1_000_000_000


def test_base_constant() -> None:
    assert BASE_S == 1714566896


@pytest.mark.parametrize("digits", range(10))
def test_round_trip_fraction_digits(digits: int) -> None:
    frac = "123456789"[:digits]
    text = "2024-05-01T12:34:56" + ("." + frac if frac else "") + "Z"
    t = GoTime.parse(text)
    assert t.isoformat() == text
    assert t.offset == 0
    assert t.unix_ns == BASE_S * NS + (int(frac.ljust(9, "0")) if frac else 0)


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("2024-05-01T12:00:00.500Z", "2024-05-01T12:00:00.5Z"),
        ("2024-05-01T12:00:00.000000000Z", "2024-05-01T12:00:00Z"),
        ("2024-05-01T12:00:00.0Z", "2024-05-01T12:00:00Z"),
        ("2024-05-01T12:00:00.000000001Z", "2024-05-01T12:00:00.000000001Z"),
        # Go keeps only 9 digits (verified: .1234567891 -> .123456789)
        ("2024-05-01T12:00:00.1234567891Z", "2024-05-01T12:00:00.123456789Z"),
        ("2024-05-01T12:00:00+00:00", "2024-05-01T12:00:00Z"),
        ("2024-05-01T12:00:00-00:00", "2024-05-01T12:00:00Z"),
        ("2024-05-01T12:00:00.00012+02:00", "2024-05-01T12:00:00.00012+02:00"),
        ("2024-05-01T12:00:00-05:30", "2024-05-01T12:00:00-05:30"),
        ("2024-12-31T23:59:59.999999999+14:00", "2024-12-31T23:59:59.999999999+14:00"),
    ],
)
def test_parse_then_format(text: str, written: str) -> None:
    assert GoTime.parse(text).isoformat() == written
    assert str(GoTime.parse(text)) == written


def test_offset_is_kept_and_instant_is_utc() -> None:
    t = GoTime.parse("2024-05-01T14:34:56.5+02:00")
    assert t.offset == 7200
    assert t.unix_ns == BASE_S * NS + 500_000_000
    west = GoTime.parse("2024-05-01T07:04:56-05:30")
    assert west.offset == -(5 * 3600 + 30 * 60)
    assert west.unix_ns == BASE_S * NS


def test_eta_score_of_golden_example() -> None:
    # §12.1: ZADD delayed_tasks 1714566901500000000 for ETA 2024-05-01T12:35:01.5Z
    assert GoTime.parse("2024-05-01T12:35:01.5Z").unix_ns == 1714566901500000000


def test_zero_time() -> None:
    zero = GoTime.zero()
    assert ZERO_TIME_TEXT == "0001-01-01T00:00:00Z"
    assert zero.isoformat() == "0001-01-01T00:00:00Z"
    assert zero.is_zero()
    assert GoTime.parse("0001-01-01T00:00:00Z") == zero
    assert GoTime.parse("0001-01-01T00:00:00Z").is_zero()
    assert zero.unix_ns == -62135596800 * NS
    assert not GoTime(0).is_zero()


def test_before_epoch() -> None:
    t = GoTime.parse("1969-12-31T23:59:59.999999999Z")
    assert t.unix_ns == -1
    assert t.isoformat() == "1969-12-31T23:59:59.999999999Z"
    assert GoTime(-1).isoformat() == "1969-12-31T23:59:59.999999999Z"


@pytest.mark.parametrize(
    "text",
    [
        "2024-05-01T12:00:00",  # naive: Go needs an offset (§1.4)
        "2024-05-01T12:00:00.5",
        "2024-05-01t12:00:00Z",  # Go: cannot parse "t12:00:00Z" as "T"
        "2024-05-01T12:00:00z",
        "2024-05-01 12:00:00Z",
        "2024-05-01T12:00Z",
        "2024-05-01T12:00:00.Z",
        "2024-05-01T12:00:00+0200",
        "2024-05-01T12:00:00+02",
        "2024-02-30T00:00:00Z",
        "2024-13-01T00:00:00Z",
        "2024-05-01T24:00:00Z",
        "\uff12\uff10\uff12\uff14-05-01T12:00:00Z",  # full-width digits
        "",
        "null",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(DecodeError) as info:
        GoTime.parse(text)
    assert info.value.raw == text.encode()


def test_from_datetime_aware_and_naive() -> None:
    aware = datetime(2024, 5, 1, 12, 34, 56, 123456, tzinfo=UTC)
    t = GoTime.from_datetime(aware)
    assert t.unix_ns == BASE_S * NS + 123_456_000
    assert t.offset == 0
    assert t.isoformat() == "2024-05-01T12:34:56.123456Z"

    plus2 = datetime(2024, 5, 1, 14, 34, 56, tzinfo=timezone(timedelta(hours=2)))
    t2 = GoTime.from_datetime(plus2)
    assert (t2.unix_ns, t2.offset) == (BASE_S * NS, 7200)
    assert t2.isoformat() == "2024-05-01T14:34:56+02:00"

    naive = datetime(2024, 5, 1, 12, 34, 56)
    assert GoTime.from_datetime(naive) == GoTime(BASE_S * NS)


def test_to_datetime_truncates_nanoseconds() -> None:
    dt = GoTime.parse("2024-05-01T14:34:56.123456789+02:00").to_datetime()
    assert dt == datetime(2024, 5, 1, 12, 34, 56, 123456, tzinfo=UTC)
    assert dt.utcoffset() == timedelta(hours=2)
    assert (dt.hour, dt.microsecond) == (14, 123456)
    assert GoTime.zero().to_datetime() == datetime(1, 1, 1, tzinfo=UTC)


def test_datetime_round_trip() -> None:
    dt = datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-3)))
    back = GoTime.from_datetime(dt).to_datetime()
    assert back == dt
    assert back.utcoffset() == dt.utcoffset()


def test_timestamp_and_add_seconds() -> None:
    t = GoTime.parse("2024-05-01T12:34:56+02:00")
    assert t.timestamp() == BASE_S - 7200
    later = t.add_seconds(1.5)
    assert later.isoformat() == "2024-05-01T12:34:57.5+02:00"
    assert later.offset == t.offset
    assert t.add_seconds(13).unix_ns - t.unix_ns == 13 * NS


def test_equality_ordering_and_hash() -> None:
    a = GoTime.parse("2024-05-01T12:00:00Z")
    b = GoTime.parse("2024-05-01T14:00:00+02:00")
    assert a.unix_ns == b.unix_ns
    assert a != b  # same instant, different zone: Go's == differs as well
    assert a == GoTime.parse("2024-05-01T12:00:00.000Z")
    assert hash(a) == hash(GoTime.parse("2024-05-01T12:00:00Z"))
    assert a < GoTime.parse("2024-05-01T12:00:00.000000001Z")
    assert repr(a) == "GoTime('2024-05-01T12:00:00Z')"
    assert a != "2024-05-01T12:00:00Z"


def test_now_is_utc_with_nanoseconds() -> None:
    now = GoTime.now()
    assert now.offset == 0
    assert now.isoformat().endswith("Z")
    assert abs(now.timestamp() - datetime.now(UTC).timestamp()) < 5


# Go can write years 0001..9999; keep local wall times inside that range
_MIN_NS = (-62135596800 + 14 * 3600) * NS
_MAX_NS = (253402300799 - 14 * 3600) * NS


@given(
    st.integers(min_value=_MIN_NS, max_value=_MAX_NS),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_property_format_parse_identity(unix_ns: int, offset_minutes: int) -> None:
    t = GoTime(unix_ns, offset_minutes * 60)
    text = t.isoformat()
    back = GoTime.parse(text)
    assert back == t
    assert back.isoformat() == text
    # the written wall clock is the instant shifted by the offset
    wall = datetime(1970, 1, 1) + timedelta(
        seconds=unix_ns // NS + offset_minutes * 60, microseconds=(unix_ns % NS) // 1000
    )
    assert text.startswith(
        f"{wall.year:04d}-{wall.month:02d}-{wall.day:02d}T"
        f"{wall.hour:02d}:{wall.minute:02d}:{wall.second:02d}"
    )


def test_isoformat_of_times_in_the_same_second_and_across_offsets() -> None:
    """The seconds part is reused for the next time of the same (local) second: check it
    against a plain datetime formatting for random instants, neighbours and offsets."""
    import random

    def reference(ns: int, off: int) -> str:
        sec, frac = divmod(ns, 10**9)
        text = (datetime(1970, 1, 1) + timedelta(seconds=sec + off)).strftime("%Y-%m-%dT%H:%M:%S")
        if frac:
            text += "." + f"{frac:09d}".rstrip("0")
        if off == 0:
            return text + "Z"
        h, m = divmod(abs(off) // 60, 60)
        return text + f"{'+' if off > 0 else '-'}{h:02d}:{m:02d}"

    rng = random.Random(1204)
    for _ in range(2000):
        ns = rng.randrange(-(10**18), 4 * 10**18)
        off = rng.choice([0, 3600, -18000, 19800])
        for step in (0, 1, 999_999_999, 10**9):
            assert GoTime(ns + step, off).isoformat() == reference(ns + step, off)
