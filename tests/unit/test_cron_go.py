"""machinery_compat's cron against robfig/cron v3 (what Go Machinery schedules with).

``tests/data/cron_next.json`` holds, for every case of :data:`CASES`, what robfig/cron computes:
the next fire times (Unix seconds) or ``ParseStandard``'s error text, captured from
``interop/cmd/cronnext``.  Regenerate it after changing :data:`CASES`::

    interop/build.sh && python -m tests.unit.test_cron_go

The live test runs the Go program again (when ``interop/bin/cronnext`` is built, or Go can
build it) on the same cases.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from machinery_compat.periodic import SpecError, parse_spec
from machinery_compat.periodic._go import Zone, load_location

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "data" / "cron_next.json"
CRONNEXT = ROOT / "interop" / "bin" / "cronnext"


def _c(spec: str, start: str = "2024-05-15T10:20:30.25Z", local: str = "UTC",
       n: int = 5) -> dict[str, Any]:
    return {"spec": spec, "local": local, "start": start, "n": n}


NY, LON, SYD = "America/New_York", "Europe/London", "Australia/Sydney"

#: (spec, local zone, start, n) for robfig/cron to answer
CASES: list[dict[str, Any]] = [
    # -- field forms ----------------------------------------------------------------------
    _c("* * * * *"),
    _c("? ? ? ? ?"),
    _c("5 * * * *"),
    _c("0 0 * * *"),
    _c("15,45 */6 * * *"),
    _c("0-10/3 * * * *"),
    _c("1-59/20 * * * *"),
    _c("7/15 * * * *"),
    _c("*/7 * * * *", n=12),
    _c("*/1 */1 */1 */1 */1"),
    _c("*-5 * * * *"),
    _c("*/5-9 * * * *"),
    _c("*-a-b * * * *"),
    _c("0 9-17 * * MON-FRI", n=10),
    _c("0 9 * * mon,wed,Fri", n=6),
    _c("0 9 * * sun", n=3),
    _c("0 9 * * 0", n=3),
    _c("0 9 * * 6", n=3),
    _c("0 0 1 jan,JUL *", n=4),
    _c("0 0 1 Jan-Mar *", n=4),
    _c("0 0 1 JAN/5 *", n=4),
    _c("0 0 1 */4 *", n=4),
    _c("0 0 1 2-12/3 *", n=4),
    _c("0 12 * * MON/2", n=6),
    _c("0 12 * * 1-5/2", n=6),
    _c("30 4 1,15 * *", n=6),
    _c("59 23 31 12 *", n=3),
    _c("0 0 29 2 *", start="2023-01-01T00:00:00Z", n=3),
    _c("0 0 31 * *", n=8),
    _c("0 0 30 2 *", n=2),                  # never: robfig's zero time
    _c("0 0 31 4,6,9,11 *", n=2),           # never
    _c("0 0 , * *", n=2),                   # an empty list: no day at all
    _c(",5,,10, * * * *"),
    _c("0 0 1,,2 * *"),
    _c("+5 +1 * * *"),
    _c("05 007 * * *"),
    _c("*/+2 * * * *"),
    _c(" 0  12\t*\n* *"),                   # Go's strings.Fields: any white space
    _c("0\u00a012 * * * *", n=2),           # NBSP is white space to Go
    _c("0\u300012 * * *", n=2),             # ideographic space too
    # -- day-of-month / day-of-week: OR when neither has a star, AND otherwise -------------
    _c("0 0 13 * FRI", n=8),
    _c("0 0 13 * *", n=4),
    _c("0 0 * * FRI", n=4),
    _c("0 0 ? * FRI", n=4),
    _c("0 0 13 ? *", n=4),
    _c("0 0 */2 * MON", n=10),              # */2 is no star: OR
    _c("0 0 */1 * MON", n=4),               # */1 is a star: AND
    _c("0 0 1-31 * MON", n=4),              # no star: OR, so every day
    _c("0 0 1 * 1-5", n=8),
    _c("0 0 *-3 * MON", n=4),
    # -- descriptors ------------------------------------------------------------------------
    _c("@yearly", n=3),
    _c("@annually", n=2),
    _c("@monthly", n=3),
    _c("@weekly", n=3),
    _c("@daily", n=3),
    _c("@midnight", n=3),
    _c("@hourly", n=3),
    _c("@every 1s"),
    _c("@every 1h30m", n=3),
    _c("@every 90m", n=3),
    _c("@every 2h45m10.5s", n=3),
    _c("@every 1.5h", n=3),
    _c("@every .5m", n=3),
    _c("@every 1.m", n=2),
    _c("@every 300ms", n=3),
    _c("@every 1500ms", n=3),
    _c("@every 0", n=3),
    _c("@every -5s", n=3),
    _c("@every +5s", n=3),
    _c("@every 1us", n=2),
    _c("@every 1µs", n=2),
    _c("@every 1μs", n=2),
    _c("@every 1000000000ns", n=2),
    _c("@every 1h0m0s", n=2),
    _c("@every 24h", start="2024-03-09T12:00:00-05:00", local=NY, n=3),
    _c("@every 5s", start="2024-05-15T10:20:30Z", n=3),
    _c("@every 5s", start="2024-05-15T10:20:30.999999999Z", n=3),
    _c("@every 2562047h", n=1),
    # -- time zones -------------------------------------------------------------------------
    _c("CRON_TZ=Asia/Tokyo 0 9 * * *", n=3),
    _c("TZ=Asia/Tokyo 0 9 * * *", n=3),
    _c("CRON_TZ=Asia/Kolkata 30 */4 * * *", n=4),
    _c("CRON_TZ=Asia/Kathmandu 0 0 * * *", n=3),
    _c("CRON_TZ=Pacific/Chatham 0 3 * * *", n=3),
    _c("CRON_TZ=UTC 0 9 * * *", local=NY, n=3),
    _c("CRON_TZ= 0 9 * * *", local=NY, n=2),       # an empty name is UTC
    _c("CRON_TZ=Local 0 9 * * *", local=NY, n=2),  # Local: the scheduler's zone
    _c("CRON_TZ=America/New_York   @daily ", n=2),
    _c("TZ=Europe/Paris @every 1h", n=2),
    _c("0 9 * * *", local="Asia/Tokyo", n=3),
    _c("0 9 * * *", local=NY, n=3),
    _c("CRON_TZ=Etc/GMT+5 0 0 * * *", n=2),
    # -- daylight saving: New York (spring forward 2024-03-10 02:00, back 2024-11-03 02:00) ---
    _c("30 2 * * *", start="2024-03-08T12:00:00-05:00", local=NY, n=4),
    _c("0 2 * * *", start="2024-03-08T12:00:00-05:00", local=NY, n=4),
    _c("0 * * * *", start="2024-03-10T00:30:00-05:00", local=NY, n=4),
    _c("*/20 1-3 * * *", start="2024-03-10T00:30:00-05:00", local=NY, n=8),
    _c("30 1 * * *", start="2024-11-02T12:00:00-04:00", local=NY, n=4),
    _c("0 * * * *", start="2024-11-03T00:30:00-04:00", local=NY, n=5),
    _c("*/20 * * * *", start="2024-11-03T00:50:00-04:00", local=NY, n=8),
    _c("0 1 * * *", start="2024-11-03T01:30:00-05:00", local=NY, n=3),
    _c("CRON_TZ=America/New_York 30 2 10 3 *", start="2023-06-01T00:00:00Z", n=3),
    _c("CRON_TZ=America/New_York 15 1 3 11 *", start="2024-01-01T00:00:00Z", n=3),
    _c("@daily", start="2024-03-09T12:00:00-05:00", local=NY, n=3),
    _c("@hourly", start="2024-11-03T00:10:00-04:00", local=NY, n=4),
    # London (+0 in winter: Go's time.Date skips its second lookup at offset 0)
    _c("30 1 * * *", start="2024-03-30T12:00:00Z", local=LON, n=3),
    _c("30 1 * * *", start="2024-10-26T12:00:00+01:00", local=LON, n=3),
    _c("0 * * * *", start="2024-10-27T00:10:00+01:00", local=LON, n=4),
    # Sydney (southern hemisphere)
    _c("30 2 * * *", start="2024-10-05T12:00:00+10:00", local=SYD, n=3),
    _c("30 2 * * *", start="2024-04-06T12:00:00+11:00", local=SYD, n=3),
    # Lord Howe Island: a 30-minute shift
    _c("*/15 1-2 * * *", start="2024-10-06T01:00:00+10:30", local="Australia/Lord_Howe", n=8),
    _c("*/15 1-2 * * *", start="2024-04-07T01:00:00+11:00", local="Australia/Lord_Howe", n=8),
    # midnight itself skipped or repeated: Sao Paulo 2018-11-04, Havana, Beirut
    _c("0 0 * * *", start="2018-11-02T12:00:00-03:00", local="America/Sao_Paulo", n=4),
    _c("30 0 * * *", start="2018-11-02T12:00:00-03:00", local="America/Sao_Paulo", n=4),
    _c("0 0 * * *", start="2019-02-15T12:00:00-02:00", local="America/Sao_Paulo", n=4),
    _c("0 0 4 11 *", start="2018-01-01T00:00:00-02:00", local="America/Sao_Paulo", n=2),
    _c("0 0 * * SUN", start="2018-10-30T12:00:00-03:00", local="America/Sao_Paulo", n=3),
    _c("0 0 1 * *", start="2018-10-15T12:00:00-03:00", local="America/Sao_Paulo", n=3),
    _c("0 0 * * *", start="2024-03-09T12:00:00-05:00", local="America/Havana", n=4),
    _c("0 0 * * *", start="2024-11-02T12:00:00-04:00", local="America/Havana", n=4),
    _c("0 0 * * *", start="2024-03-30T12:00:00+02:00", local="Asia/Beirut", n=3),
    # Samoa skipped 2011-12-30 entirely
    _c("0 12 * * *", start="2011-12-28T12:00:00-10:00", local="Pacific/Apia", n=4),
    # ("0 0 30 12 *" from before it: robfig loops forever; see test_cron.py)
    # local mean time with an offset in seconds (Amsterdam before 1937)
    _c("0 12 * * *", start="1930-06-01T00:00:00Z", local="Europe/Amsterdam", n=3),
    _c("*/30 * * * *", start="1930-06-01T00:00:00Z", local="Europe/Amsterdam", n=3),
    # -- starts on a fire time, fractions, far dates ----------------------------------------
    _c("0 12 * * *", start="2024-05-15T12:00:00Z", n=2),
    _c("0 12 * * *", start="2024-05-15T11:59:59.999999999Z", n=2),
    _c("* * * * *", start="2024-05-15T10:20:00Z", n=3),
    _c("0 0 1 1 *", start="2099-06-01T00:00:00Z", n=2),
    _c("0 0 29 2 1", start="2024-03-01T00:00:00Z", n=3),
    _c("0 0 29 2 *", start="2097-03-01T00:00:00Z", n=1),   # 2100 is no leap year: never
    _c("0 0 1 1 *", start="1969-12-31T23:59:59Z", n=2),
    # -- errors: Go's exact text ------------------------------------------------------------
    _c(""),
    _c("   "),
    _c("* * * *"),
    _c("* * * * * *"),
    _c("0 0 0 * * *"),
    _c(" @hourly"),
    _c("@hourly "),
    _c("@HOURLY"),
    _c("@foo"),
    _c("@every"),
    _c("@every "),
    _c("@every  1h"),
    _c("@every 1h "),
    _c("@every 1h 30m"),
    _c("@every1h"),
    _c("@every 1x"),
    _c("@every 1"),
    _c("@every h"),
    _c("@every ."),
    _c("@every -"),
    _c("@every 1.5.5h"),
    _c("@every 9223372036854775807ns"),
    _c("@every 9223372036854775808ns"),
    _c("@every 10000000000000000000ns"),
    _c("@every 2562048h"),
    _c("@every 1é"),
    _c("60 * * * *"),
    _c("* 24 * * *"),
    _c("* * 0 * *"),
    _c("* * 32 * *"),
    _c("* * * 0 *"),
    _c("* * * 13 *"),
    _c("* * * * 7"),
    _c("* * * * SUNDAY"),
    _c("* * * JANUARY *"),
    _c("5-1 * * * *"),
    _c("*/0 * * * *"),
    _c("5/0 * * * *"),
    _c("1-2-3 * * * *"),
    _c("1/2/3 * * * *"),
    _c("a * * * *"),
    _c("-1 * * * *"),
    _c("1- * * * *"),
    _c("*/ * * * *"),
    _c("*/-1 * * * *"),
    _c("1_0 * * * *"),
    _c("99999999999999999999 * * * *"),
    _c("99999999999999999999x * * * *"),
    _c("9223372036854775807 * * * *"),
    _c("0 0 * * MON-FRIDAY"),
    _c("0x10 * * * *"),
    _c("\uff11 * * * *"),                  # a full-width digit
    _c("CRON_TZ=Nowhere/Zone * * * * *"),
    _c("CRON_TZ=../etc/passwd * * * * *"),
    _c("CRON_TZ=/etc/localtime * * * * *"),
    _c("CRON_TZ=UTC"),                      # Go panics (no space after the zone)
    _c("TZ=UTC\t* * * * *"),                # a tab is not the space it looks for: panics
    _c("CRON_TZ=UTC "),
    _c("CRON_TZ=UTC @every 1h 30m"),
    _c("CRON_TZ=UTC * * * *"),
    _c("cron_tz=UTC * * * * *"),
]


def _load() -> list[dict[str, Any]]:
    if not FIXTURE.exists():
        return []
    return json.loads(FIXTURE.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _rfc3339_ns(text: str) -> int:
    """Unix ns of an RFC 3339 time with up to nine fraction digits (Go's RFC3339Nano)."""
    m = re.fullmatch(r"(.+?)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", text)
    assert m is not None, text
    whole = datetime.fromisoformat(m[1] + ("+00:00" if m[3] == "Z" else m[3]))
    return int(whole.timestamp()) * 10**9 + int((m[2] or "").ljust(9, "0"))


def _python(case: dict[str, Any]) -> dict[str, Any]:
    """What machinery_compat computes for a case, in cronnext's output shape."""
    out: dict[str, Any] = {}
    try:
        sched = parse_spec(case["spec"])
    except SpecError as e:
        out["error"] = str(e)
        return out
    z = load_location(case["local"])
    local = Zone("Local", z._zi, is_local=True)
    t = _rfc3339_ns(case["start"])
    nexts: list[int] = []
    for _ in range(case["n"]):
        nxt = sched.next(t, local)
        if nxt is None:
            nexts.append(0)
            break
        assert nxt % 10**9 == 0, nxt
        nexts.append(nxt // 10**9)
        t = nxt
    out["next"] = nexts
    return out


def _ids(cases: list[dict[str, Any]]) -> list[str]:
    return [f"{i}:{c['spec']!r}@{c['local']}" for i, c in enumerate(cases)]


def _check(go: dict[str, Any]) -> None:
    py = _python(go)
    if "panic" in go:
        assert "error" in py, f"Go panics ({go['panic']}); Python accepted {go['spec']!r}"
        assert "panic" in py["error"]
        return
    if "error" in go:
        assert py.get("error") == go["error"]
        return
    assert "error" not in py, py
    assert py["next"] == go["next"], go.get("next_text")


def test_fixture_covers_every_case() -> None:
    """The fixture was captured for exactly :data:`CASES` (regenerate it after a change)."""
    got = [(c["spec"], c["local"], c["start"], c["n"]) for c in _load()]
    want = [(c["spec"], c["local"], c["start"], c["n"]) for c in CASES]
    assert got == want


@pytest.mark.parametrize("go", _load(), ids=_ids(_load()))
def test_matches_robfig_cron(go: dict[str, Any]) -> None:
    _check(go)


def _cronnext() -> Path | None:
    if CRONNEXT.exists():
        return CRONNEXT
    if shutil.which("go") is None:
        return None
    build = subprocess.run([str(ROOT / "interop" / "build.sh")], capture_output=True,
                           text=True, timeout=600, check=False)
    return CRONNEXT if build.returncode == 0 and CRONNEXT.exists() else None


def _run_cronnext(binary: Path, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    proc = subprocess.run([str(binary)], input=json.dumps(cases), capture_output=True,
                          text=True, timeout=120, check=True)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.mark.interop
def test_live_go_agrees_with_fixture_and_python() -> None:
    """Run robfig/cron again (interop/cmd/cronnext): same answers as the fixture and Python."""
    binary = _cronnext()
    if binary is None:
        pytest.skip("interop/bin/cronnext is not built and Go is not available")
    live = _run_cronnext(binary, CASES)
    assert live == _load()
    for go in live:
        _check(go)


_ZONES = ["UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata",
          "America/Sao_Paulo", "America/Havana", "Pacific/Chatham", "Europe/Moscow",
          "America/St_Johns", "Asia/Tehran", "Africa/Casablanca"]


def _random_field(rng: random.Random, low: int, high: int, names: list[str] | None) -> str:
    def atom() -> str:
        if names and rng.random() < 0.3:
            return rng.choice(names)
        return str(rng.randint(low, high))

    def one() -> str:
        kind = rng.random()
        if kind < 0.25:
            base = rng.choice(["*", "?"])
        elif kind < 0.5:
            base = atom()
        else:
            a, b = sorted((rng.randint(low, high), rng.randint(low, high)))
            base = f"{a}-{b}"
        if rng.random() < 0.3:
            base += f"/{rng.randint(1, max(1, high - low))}"
        return base

    return ",".join(one() for _ in range(rng.choice([1, 1, 1, 2, 3])))


def random_cases(seed: int, n: int) -> list[dict[str, Any]]:
    """Valid specs, zones and start times (DST seasons included) drawn from ``seed``."""
    rng = random.Random(seed)
    months = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    days = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
    out = []
    for _ in range(n):
        spec = " ".join([_random_field(rng, 0, 59, None), _random_field(rng, 0, 23, None),
                         _random_field(rng, 1, 31, None), _random_field(rng, 1, 12, months),
                         _random_field(rng, 0, 6, days)])
        if rng.random() < 0.25:
            spec = f"CRON_TZ={rng.choice(_ZONES)} {spec}"
        start = 1_500_000_000 + rng.randrange(400_000_000)
        frac = rng.choice([0, 0, rng.randrange(10**9)])
        iso = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        out.append(_c(spec, start=f"{iso}.{frac:09d}Z", local=rng.choice(_ZONES), n=6))
    return out


@pytest.mark.interop
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_live_random_specs_agree_with_go(seed: int) -> None:
    """Random valid specs in DST-changing zones: the same fire times as robfig/cron."""
    binary = _cronnext()
    if binary is None:
        pytest.skip("interop/bin/cronnext is not built and Go is not available")
    mismatches = []
    for go in _run_cronnext(binary, random_cases(seed, 300)):
        py = _python(go)
        if py.get("next") != go.get("next") or py.get("error") != go.get("error"):
            mismatches.append((go["spec"], go["local"], go["start"], go.get("next_text"), py))
    assert not mismatches, mismatches[:5]


if __name__ == "__main__":  # regenerate the fixture
    binary = _cronnext()
    if binary is None:
        sys.exit("interop/bin/cronnext is missing: run interop/build.sh")
    FIXTURE.write_text(json.dumps(_run_cronnext(binary, CASES), indent=1, ensure_ascii=False)
                       + "\n", encoding="utf-8")
    print(f"wrote {FIXTURE} ({len(CASES)} cases)")
