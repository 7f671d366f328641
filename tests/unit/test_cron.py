"""Periodic tasks without a network: the cron API, Go's helpers, lock keys, the registry.

What robfig/cron computes is compared case by case in ``test_cron_go.py``.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from machinery_compat import Machinery, Signature, chain, chord, group
from machinery_compat.periodic import (
    EverySchedule,
    LocalLock,
    PeriodicTask,
    Scheduler,
    SpecError,
    SpecSchedule,
    _go,
    lock_key,
    parse_spec,
)
from machinery_compat.periodic.commands import format_table, periodic_rows
from machinery_compat.periodic.lock import go_base, parse_lock_value

S = 10**9


def _ns(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp()) * S


# -- cron API ---------------------------------------------------------------------------------
def test_parse_gives_spec_or_every_schedules() -> None:
    s = parse_spec("*/15 9-17 * * MON-FRI")
    assert isinstance(s, SpecSchedule) and s.location is None and s.spec == "*/15 9-17 * * MON-FRI"
    e = parse_spec("@every 1h30m")
    assert isinstance(e, EverySchedule) and e.delay_ns == 5400 * S
    assert parse_spec("@every 300ms") == EverySchedule("@every 300ms", S)  # at least 1 s
    assert parse_spec("@every 2.7s") == EverySchedule("@every 2.7s", 2 * S)  # whole seconds
    tz = parse_spec("CRON_TZ=Asia/Tokyo 0 9 * * *")
    assert isinstance(tz, SpecSchedule) and tz.location is not None
    assert tz.location.name == "Asia/Tokyo"
    local = parse_spec("TZ=Local 0 9 * * *")
    assert isinstance(local, SpecSchedule) and local.location is None


def test_spec_error_carries_the_spec_and_gos_text() -> None:
    with pytest.raises(SpecError) as e:
        parse_spec("* * * * 7")
    assert e.value.spec == "* * * * 7"
    assert str(e.value) == "end of range (7) above maximum (6): 7"
    assert isinstance(e.value, ValueError)  # a ConfigError


def test_next_uses_the_given_local_zone() -> None:
    s = parse_spec("0 9 * * *")
    tokyo = _go.Zone("Local", ZoneInfo("Asia/Tokyo"), is_local=True)
    start = _ns("2024-05-15T00:30:00+00:00")  # 09:30 in Tokyo
    assert s.next(start, tokyo) == _ns("2024-05-16T00:00:00+00:00")
    assert s.next(start, _go.UTC_ZONE) == _ns("2024-05-15T09:00:00+00:00")


def test_next_datetime() -> None:
    s = parse_spec("CRON_TZ=Europe/Paris 30 8 * * *")
    got = s.next_datetime(datetime(2024, 5, 15, 12, tzinfo=UTC))
    assert got == datetime(2024, 5, 16, 8, 30, tzinfo=ZoneInfo("Europe/Paris"))
    assert parse_spec("0 0 30 2 *").next_datetime(datetime(2024, 1, 1, tzinfo=UTC)) is None


def test_every_counts_from_the_start_dropping_fractions() -> None:
    s = parse_spec("@every 5s")
    assert s.next(1_000 * S + 999_999_999) == 1_005 * S
    assert s.next(1_000 * S) == 1_005 * S


def test_a_skipped_calendar_day_does_not_hang() -> None:
    """robfig loops forever looking for 2011-12-30 in Samoa (skipped); we move on."""
    apia = _go.Zone("Local", ZoneInfo("Pacific/Apia"), is_local=True)
    s = parse_spec("0 0 30 12 *")
    t0 = time.monotonic()
    got = s.next(_ns("2011-06-01T00:00:00-10:00"), apia)
    assert time.monotonic() - t0 < 5
    assert got == _ns("2012-12-30T00:00:00+14:00")


def test_go_duration_parser() -> None:
    assert _go.parse_duration("1h30m") == 5400 * S
    assert _go.parse_duration("1.5h") == 5400 * S
    assert _go.parse_duration("-1.5s") == -1_500_000_000
    assert _go.parse_duration("1µs") == _go.parse_duration("1us") == 1000
    assert _go.parse_duration("0") == 0
    for bad, msg in [("", 'time: invalid duration ""'), ("1", 'time: missing unit in duration "1"'),
                     ("1d", 'time: unknown unit "d" in duration "1d"'),
                     ("1é", 'time: unknown unit "\\xc3\\xa9" in duration "1\\xc3\\xa9"')]:
        with pytest.raises(_go.GoError) as e:
            _go.parse_duration(bad)
        assert str(e.value) == msg


def test_go_atoi() -> None:
    assert _go.atoi("+07") == 7
    assert _go.atoi("-0") == 0
    with pytest.raises(_go.GoError, match=r'parsing "1_0": invalid syntax'):
        _go.atoi("1_0")
    with pytest.raises(_go.GoError, match="value out of range"):
        _go.atoi("9223372036854775808")
    assert _go.atoi("-9223372036854775808") == -(2**63)


def test_go_fields_and_trim_space() -> None:
    assert _go.fields(" a\u00a0b\tc\u3000 ") == ["a", "b", "c"]
    assert _go.fields("a\x1cb") == ["a\x1cb"]  # not white space to Go (it is to Python)
    assert _go.trim_space("\u2003 x \n") == "x"


@pytest.mark.parametrize(("tz", "want"), [
    (None, None), ("", "UTC"), ("UTC", "UTC"), ("Asia/Tokyo", "Asia/Tokyo"),
    (":Asia/Tokyo", "Asia/Tokyo"), ("Nowhere/Zone", "UTC"), ("/usr/share/zoneinfo/Asia/Tokyo",
                                                              "Asia/Tokyo"),
])
def test_local_zone_follows_gos_rules(monkeypatch: pytest.MonkeyPatch, tz: str | None,
                                      want: str | None) -> None:
    if tz is None:
        monkeypatch.delenv("TZ", raising=False)
    else:
        monkeypatch.setenv("TZ", tz)
    _go.set_local(None)
    try:
        z = _go.local()
        assert z.is_local
        july = _ns("2024-07-01T00:00:00+00:00") // S
        if want == "UTC":
            assert z.offset(july) == 0
        elif want is not None:
            assert z.offset(july) == 9 * 3600
    finally:
        monkeypatch.undo()
        _go.set_local(None)


# -- lock keys ----------------------------------------------------------------------------------
def test_lock_key_is_gos_plain_concatenation() -> None:
    assert lock_key("myworker", "report", "*/5 * * * *") == "machinery_lock_myworkerreport*/5 * * * *"
    assert lock_key("/usr/local/bin/myworker", "a", "@hourly") == "machinery_lock_myworkera@hourly"
    assert go_base("") == "." and go_base("///") == "/" and go_base("a/b/") == "b"


def test_lock_values_read_as_gos_atoi() -> None:
    assert parse_lock_value(b"1700000000999999999") == 1_700_000_000_999_999_999
    assert parse_lock_value("+5") == 5 and parse_lock_value("-5") == -5
    for bad in (None, b"", b"1.5", b"1e9", b" 1", b"9223372036854775808", "١٢"):
        assert parse_lock_value(bad) is None


def test_local_lock_has_gos_value_rule() -> None:
    lk = LocalLock()
    future = time.time_ns() + 10 * S
    assert lk.acquire("k", future)
    assert not lk.acquire("k", future)
    assert lk.acquire("other", future)
    assert lk.acquire("old", time.time_ns() - 1)
    assert lk.acquire("old", future)  # the stored value is past: taken again
    assert lk.state("k").value == future


# -- registry -----------------------------------------------------------------------------------
@pytest.fixture
def app() -> Machinery:
    return Machinery(broker="memory://", result_backend="memory://")


def test_register_every_kind_of_target(app: Machinery) -> None:
    @app.task(name="add")
    def add(*n: int) -> int:
        return sum(n)

    p = app.periodic("*/5 * * * *", "one", add.s(1, 2))
    assert isinstance(p, PeriodicTask) and p.kind == "task" and p.describe() == "add(1, 2)"
    assert app.periodic("@hourly", "ch", chain(add.s(1), add.s(2))).kind == "chain"
    assert app.periodic("@hourly", "gr", group(add.s(1), add.s(2)), send_concurrency=1).kind == "group"
    assert app.periodic("@hourly", "cd", chord([add.s(1)], add.s())).kind == "chord"
    assert app.periodic("@hourly", "task", add).describe() == "add()"
    raw = Signature(uuid="", name="go_only")
    assert app.periodic("@daily", "raw", raw).describe() == "go_only()"
    assert sorted(t.name for t in app.periodic_tasks) == ["cd", "ch", "gr", "one", "raw", "task"]
    assert p.key() == "machinery_lock_machinery-compatone*/5 * * * *"
    assert p.key("mygo") == "machinery_lock_mygoone*/5 * * * *"
    q = app.periodic("@daily", "mine", add.s(), lock_program="gobin")
    assert q.key("ignored") == "machinery_lock_gobinmine@daily"


def test_register_checks_at_once(app: Machinery) -> None:
    with pytest.raises(SpecError):
        app.periodic("61 * * * *", "bad", app.signature("x"))
    with pytest.raises(TypeError, match="name is required"):
        app.periodic("@hourly", None, app.signature("x"))
    with pytest.raises(ValueError, match="non-empty name"):
        app.periodic("@hourly", "", app.signature("x"))
    with pytest.raises(TypeError, match="cannot send"):
        app.periodic("@hourly", "what", "add")
    assert len(app.periodic_tasks) == 0


def test_decorator_registers_task_and_schedule(app: Machinery) -> None:
    @app.periodic("@every 10s")
    @app.task(name="ping")
    def ping() -> str:
        return "pong"

    assert ping.name == "ping" and ping() == "pong"
    assert app.periodic_tasks.get("ping") is not None

    @app.periodic("@daily", name="nightly")
    def nightly() -> None:
        return None

    assert "nightly" in app.tasks
    assert app.periodic_tasks.get("nightly") is not None


def test_unregister_and_replace(app: Machinery, caplog: pytest.LogCaptureFixture) -> None:
    app.periodic("@hourly", "x", app.signature("a"))
    with caplog.at_level(logging.WARNING):
        app.periodic("@daily", "x", app.signature("b"))
    assert "registered again" in caplog.text
    x = app.periodic_tasks.get("x")
    assert x is not None and x.spec == "@daily"
    assert app.unregister_periodic("x") is True
    assert app.unregister_periodic("x") is False
    assert "x" not in app.periodic_tasks


def test_registry_wakes_waiters(app: Machinery) -> None:
    reg = app.periodic_tasks
    version = reg.version
    woke = threading.Event()

    def wait() -> None:
        reg.wait(version, 30)
        woke.set()

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.05)
    app.periodic("@hourly", "new", app.signature("a"))
    assert woke.wait(10)
    t.join()


# -- scheduler with the in-process lock and memory broker -------------------------------------
def test_scheduler_sends_fresh_messages_and_stops(app: Machinery) -> None:
    app.periodic("@every 1s", "tick", app.signature("add", args=[1, 2]))
    with Scheduler(app, lock="local") as s:
        deadline = time.monotonic() + 30
        while s.sent["tick"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert s.sent["tick"] >= 2
    values = [f.value for f in s.history if f.sent]
    assert len(values) == len(set(values))
    assert all(v % S == S - 1 for v in values)  # next fire time (whole second) - 1 ns


def test_a_failed_send_is_logged_as_go_logs_it(app: Machinery,
                                              caplog: pytest.LogCaptureFixture) -> None:
    app.periodic("@hourly", "doomed", app.signature("x"))
    task = app.periodic_tasks.get("doomed")
    assert task is not None

    def boom() -> None:
        raise ConnectionError("broker down")

    task.send = boom  # type: ignore[method-assign]
    s = Scheduler(app, lock="local")
    with caplog.at_level(logging.ERROR):
        assert s.fire(task) is False
    s.stop()
    assert "periodic task failed. task name is: doomed. error is broker down" in caplog.text
    assert s.history[-1].error == "broker down" and not s.sent and not s.skipped


def test_list_rows_and_table(app: Machinery) -> None:
    app.periodic("0 12 * * *", "noon", app.signature("a"))
    app.periodic("@every 5m", "often", app.signature("b"))
    now = _ns("2024-05-15T10:00:00+00:00")
    _go.set_local("UTC")
    try:
        rows = periodic_rows(app, lock=LocalLock(), now_ns=now)
    finally:
        _go.set_local(None)
    assert [r["name"] for r in rows] == ["noon", "often"]
    assert rows[0]["next_fire"] == "2024-05-15T12:00:00+00:00"
    assert rows[0]["lock"]["state"] == "free"
    assert rows[1]["next_fire_approximate"] is True
    table = format_table(rows, now_ns=now)
    assert table.splitlines()[0].split() == ["NAME", "SPEC", "TARGET", "NEXT", "FIRE", "IN",
                                             "LOCK", "HOLDER"]
    assert "2h0m0s" in table and "~" in table
