"""Direction 1: a Python producer, a Go Machinery worker (mcworker), results read by both.

One Go worker per flavour runs every scenario of the module at once (module-scoped
``d1`` fixture): echo tasks for all 29 types, multiple results, no results, failure,
panic, RetryCount retries, retry-later, ETAs.  Python reads each result with
``AsyncResult``; Go reads each one with ``AsyncResult.Get`` (``mcproducer``, batched read
lines and the single-shot ``-read UUID`` mode); a ``MONITOR`` records every state write.
The Go worker keeps Machinery's default delayed-tasks poll (500 ms): the ETA and retry
cases prove that it moves delayed tasks a Python producer scheduled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from interop.tests.cases import (
    ECHO_VALUES,
    FAIL_ERROR,
    FAIL_MSG,
    FAILURE_STATES,
    PANIC_ERROR,
    PANIC_MSG,
    SUCCESS_STATES,
    EchoValue,
    same,
)
from interop.tests.harness import (
    PY_TO_GO,
    GoWorker,
    Num,
    RedisMonitor,
    exact,
    parse_go_time,
    read_one,
    results_bytes,
    run_producer,
    state_write_problems,
    wait_for,
)
from interop.tests.pyapp import PyApp, make_app
from machinery_compat import Arg, AsyncResult, Signature, TaskFailed
from tests.services import RedisServer

pytestmark = [pytest.mark.interop, pytest.mark.redis, pytest.mark.slow]

ETA_COUNTDOWN = 1.5
GO_DELAYED_POLL = 0.5  # Machinery's default DelayedTasksPollPeriod
# A Go worker moves at most ONE due delayed task per poll period (v2-goredis even takes the
# latest-due first), and this module has up to 4 delayed tasks due within ~1 s of each
# other: a due task may wait up to 4 poll periods before it is moved.
MOVE_SLACK = 4 * GO_DELAYED_POLL + 0.5


@dataclass
class D1:
    flavour: str
    url: str
    queue: str
    worker: GoWorker
    py: PyApp
    sent: dict[str, AsyncResult] = field(default_factory=dict)
    echo: dict[str, list[tuple[EchoValue, AsyncResult]]] = field(default_factory=dict)
    outcome: dict[str, Any] = field(default_factory=dict)  # uuid -> value | TaskFailed
    go_read: dict[str, dict[str, Any]] = field(default_factory=dict)  # uuid -> mcproducer line
    raw: dict[str, bytes | None] = field(default_factory=dict)  # uuid -> stored state
    states: dict[str, list[str]] = field(default_factory=dict)  # uuid -> states written
    writes: dict[str, list[bytes]] = field(default_factory=dict)  # uuid -> TaskState writes
    callbacks: dict[str, AsyncResult] = field(default_factory=dict)
    delayed: dict[str, tuple[bytes, float]] = field(default_factory=dict)  # uuid -> ZSET entry
    sent_at: dict[str, float] = field(default_factory=dict)
    etas: dict[str, datetime] = field(default_factory=dict)
    single_read: dict[str, Any] = field(default_factory=dict)

    def go_tasks(self, uuid: str) -> list[dict[str, Any]]:
        return self.worker.tasks(uuid)

    def one_go_task(self, uuid: str) -> dict[str, Any]:
        evs = self.go_tasks(uuid)
        assert len(evs) == 1, f"expected exactly one Go run of {uuid}, got {evs}"
        return evs[0]


def _delayed_entry(client: Any, uuid: str) -> tuple[bytes, float] | None:
    for body, score in client.zrange("delayed_tasks", 0, -1, withscores=True):
        if Signature.from_json(body).uuid == uuid:
            return body, score
    return None


@pytest.fixture(scope="module")
def d1(flavour: str, go_bins: Path, interop_redis: RedisServer, new_db: Callable[[], str],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[D1]:
    url = new_db()
    db = int(url.rsplit("/", 1)[1])
    queue = f"q_d1_{flavour}"
    mon = RedisMonitor(interop_redis.host, interop_redis.port, db).start()
    worker = GoWorker(flavour, url, queue, concurrency=8,
                      log_dir=tmp_path_factory.mktemp(f"d1-{flavour}")).start()
    py = make_app(url, queue, only=())
    run = D1(flavour, url, queue, worker, py)
    app = py.app
    client = py.counters
    try:
        # -- send everything ------------------------------------------------------------
        for t, values in ECHO_VALUES.items():
            run.echo[t] = [(v, app.send_task(v.task, args=[Arg(v.type, v.value)]))
                           for v in values]
        s = run.sent

        def send(key: str, name: str, *args: Any, **options: Any) -> None:
            before = time.time()
            s[key] = app.send_task(name, args=list(args), **options)
            run.sent_at[s[key].id] = before

        send("multi_return", "multi_return")
        send("only_error", "only_error")
        send("fail", "fail", FAIL_MSG)
        send("panic", "panic_task", PANIC_MSG)
        send("retry", "fail_n_times", f"d1-{flavour}", 2, retry_count=3)
        send("retry_later", "retry_later", f"d1-{flavour}", 700, retry_count=2)
        send("countdown", "add", 40, 2, countdown=ETA_COUNTDOWN)
        eta = datetime.now(timezone(timedelta(hours=2))) + timedelta(seconds=1.2)
        send("eta_offset", "concat", "eta", "+02:00", eta=eta)
        run.etas["eta_offset"] = eta
        # callbacks (§3.4, §3.6): built by Python, decoded and sent on by the Go worker
        for key, parent, cb, options in (
            ("on_success", ("add", [1, 2]), ("add", [100]), {}),
            ("on_success_immutable", ("add", [1, 2]), ("add", [100]), {"immutable": True}),
            ("on_error", ("fail", [FAIL_MSG]), ("concat", ["!"]), {}),
        ):
            sig = app.build_signature(parent[0], parent[1], **options)
            callback = app.build_signature(cb[0], cb[1], task_id=f"task_cb_{key}_{flavour}")
            if key == "on_error":
                sig.on_error = [callback]
            else:
                sig.on_success = [callback]
            s[key] = app.send_signature(sig)
            run.callbacks[key] = AsyncResult(callback.uuid, app.backend)
        for key in ("countdown", "eta_offset"):
            entry = _delayed_entry(client, s[key].id)
            assert entry is not None, f"{key}: not in delayed_tasks right after sending"
            run.delayed[s[key].id] = entry

        # -- read everything: Python, then Go ---------------------------------------------
        every = ([r for pairs in run.echo.values() for _, r in pairs] + list(s.values())
                 + list(run.callbacks.values()))
        deadline = time.monotonic() + 40  # one budget for all: a dead worker fails fast
        for res in every:
            left = max(0.5, deadline - time.monotonic())
            run.outcome[res.id] = res.get(timeout=left, propagate=False)
        lines = [{"read": r.id, "id": r.id, "timeout_ms": 5000} for r in every]
        for line in run_producer(flavour, url, lines, queue=queue, parallel=8):
            run.go_read[line["uuid"]] = line
        run.single_read = read_one(flavour, url, s["multi_return"].id)
        for res in every:
            run.raw[res.id] = client.get(res.id)
        # every state write has reached MONITOR once the last results are stored
        mon.stop()
        for res in every:
            run.states[res.id] = mon.states(res.id)
            run.writes[res.id] = mon.state_writes(res.id)
        yield run
    finally:
        mon.stop()
        try:
            worker.stop()
        finally:
            py.close()


def _go_read_ok(run: D1, uuid: str) -> list[dict[str, Any]]:
    line = run.go_read[uuid]
    assert (line["read"], line["state"], line["error"]) == (True, "SUCCESS", ""), line
    return list(line["results"])


# --------------------------------------------------------------------------------------
# every type, edge values
# --------------------------------------------------------------------------------------


@pytest.mark.matrix(PY_TO_GO, "echo {echo_type}")
@pytest.mark.parametrize("echo_type", list(ECHO_VALUES))
def test_echo(d1: D1, echo_type: str) -> None:
    problems = []
    for v, res in d1.echo[echo_type]:
        got = d1.outcome[res.id]
        ev = d1.one_go_task(res.id)
        ev_exact = exact(ev["_exact"])
        go = _go_read_ok(d1, res.id)
        checks = {
            # what the Go task function received, and returned
            "go arg type": (ev["arg_types"], [v.go_type]),
            "go arg value": (ev_exact["args"], [v.expected_go_value()]),
            "go result type": (ev["result_types"], [v.go_type]),
            # stored bytes
            "stored Results": (results_bytes(d1.raw[res.id]), v.wire.encode()),
            # Python's AsyncResult
            "python type": ([r.type for r in (res.results or [])], [v.result_type]),
            "python value": (same(got, v.expected_py()), True),
            # Go's AsyncResult
            "go read type": ([r["go_type"] for r in go], [v.go_type]),
            "go read value": ([r["exact"] for r in go], [v.expected_go_value()]),
            "states": (d1.states[res.id], SUCCESS_STATES),
            "state writes": (state_write_problems(d1.writes[res.id], res.id, v.task,
                                                  results=v.wire.encode()), []),
        }
        if v.go_repr is not None:
            checks["go read repr"] = ([r["repr"] for r in go], [v.go_repr])
        for what, (actual, expected) in checks.items():
            if actual != expected:
                problems.append(f"{v.label()}: {what}: {actual!r} != {expected!r}"
                                + (f" (python got {got!r})" if what == "python value" else ""))
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------
# results shape, failures
# --------------------------------------------------------------------------------------

MULTI_WIRE = (b'[{"Type":"int64","Value":42},{"Type":"string","Value":"answer"},'
              b'{"Type":"bool","Value":true}]')
MULTI_GO = [("int64", Num("42"), "42"), ("string", "answer", "answer"), ("bool", True, "true")]


@pytest.mark.matrix(PY_TO_GO, "multi_return: 3 results")
def test_multi_return(d1: D1) -> None:
    res = d1.sent["multi_return"]
    assert d1.outcome[res.id] == (42, "answer", True)
    assert results_bytes(d1.raw[res.id]) == MULTI_WIRE
    for line in (d1.go_read[res.id], d1.single_read):
        assert (line["state"], line["error"]) == ("SUCCESS", ""), line
        assert [(r["go_type"], r["exact"], r["repr"]) for r in line["results"]] == MULTI_GO
    assert d1.single_read["line"] == 0 and d1.single_read["uuid"] == res.id
    assert d1.one_go_task(res.id)["result_types"] == ["int64", "string", "bool"]
    assert state_write_problems(d1.writes[res.id], res.id, "multi_return",
                                results=MULTI_WIRE) == []


@pytest.mark.matrix(PY_TO_GO, "only_error: no results")
def test_only_error(d1: D1) -> None:
    res = d1.sent["only_error"]
    assert d1.outcome[res.id] is None
    assert res.results == []
    assert results_bytes(d1.raw[res.id]) == b"[]"
    assert _go_read_ok(d1, res.id) == []
    assert d1.states[res.id] == SUCCESS_STATES
    assert state_write_problems(d1.writes[res.id], res.id, "only_error", results=b"[]") == []


def _check_failure(run: D1, key: str, name: str, msg: str, error: str) -> dict[str, Any]:
    res = run.sent[key]
    failed = run.outcome[res.id]
    assert isinstance(failed, TaskFailed), failed
    assert failed.error == msg
    raw = run.raw[res.id]
    assert raw is not None and raw == run.writes[res.id][-1]
    assert state_write_problems(run.writes[res.id], res.id, name, error=error.encode()) == []
    line = run.go_read[res.id]
    assert (line["state"], line["error"]) == ("FAILURE", msg), line
    assert "results" not in line
    assert run.states[res.id] == FAILURE_STATES
    ev = run.one_go_task(res.id)
    assert (ev["error"], ev["results"]) == (msg, None)
    handled = [e["error"] for e in run.worker.snapshot() if e.get("event") == "error_handler"]
    assert msg in handled, handled
    return ev


@pytest.mark.matrix(PY_TO_GO, "failure: FAILURE + error text on both sides")
def test_failure(d1: D1) -> None:
    ev = _check_failure(d1, "fail", "fail", FAIL_MSG, FAIL_ERROR)
    assert ev["panicked"] is False


@pytest.mark.matrix(PY_TO_GO, "panic (Go panic / Python exception) → FAILURE")
def test_panic(d1: D1) -> None:
    ev = _check_failure(d1, "panic", "panic_task", PANIC_MSG, PANIC_ERROR)
    assert ev["panicked"] is True


# --------------------------------------------------------------------------------------
# retries and ETAs
# --------------------------------------------------------------------------------------

RETRY_STATES = ["PENDING", "RECEIVED", "STARTED", "RETRY", "PENDING", "RECEIVED", "STARTED",
                "RETRY", "PENDING", "RECEIVED", "STARTED", "SUCCESS"]


@pytest.mark.matrix(PY_TO_GO, "retry: RetryCount=3, fails twice → 3 (delays 1 s, 2 s)")
def test_retry_count(d1: D1) -> None:
    res = d1.sent["retry"]
    assert d1.outcome[res.id] == 3
    evs = d1.go_tasks(res.id)
    assert [(e["retry_count"], e["retry_timeout"]) for e in evs] == [(3, 0), (2, 1), (1, 2)]
    assert [e["error"] for e in evs] == ["attempt 1 failed", "attempt 2 failed", ""]
    assert evs[0]["eta"] is None and evs[1]["eta"] and evs[2]["eta"]
    ts = [parse_go_time(e["ts"]) for e in evs]
    etas = [parse_go_time(e["eta"]) for e in evs[1:]]
    # Go's worker sets ETA = now + RetryTimeout seconds, and runs it once due and moved
    assert 1.0 <= etas[0] - ts[0] < 1.3, (ts, etas)
    assert 2.0 <= etas[1] - ts[1] < 2.3, (ts, etas)
    assert 0 <= ts[1] - etas[0] < MOVE_SLACK, (ts, etas)
    assert 0 <= ts[2] - etas[1] < MOVE_SLACK, (ts, etas)
    assert d1.states[res.id] == RETRY_STATES
    assert state_write_problems(d1.writes[res.id], res.id, "fail_n_times",
                                results=b'[{"Type":"int64","Value":3}]') == []
    assert [(r["go_type"], r["exact"]) for r in _go_read_ok(d1, res.id)] == [("int64", Num("3"))]


@pytest.mark.matrix(PY_TO_GO, "retry-later: ErrRetryTaskLater / Retry(countdown), RetryCount kept")
def test_retry_later(d1: D1) -> None:
    res = d1.sent["retry_later"]
    assert d1.outcome[res.id] == "done"
    evs = d1.go_tasks(res.id)
    assert [(e["retry_count"], e["retry_timeout"]) for e in evs] == [(2, 0), (2, 0)]
    assert [e["error"] for e in evs] == ["Task error: later Will retry in: 700ms", ""]
    ts = [parse_go_time(e["ts"]) for e in evs]
    eta = parse_go_time(evs[1]["eta"])
    assert 0.7 <= eta - ts[0] < 1.0, (ts, eta)
    assert 0 <= ts[1] - eta < MOVE_SLACK, (ts, eta)
    assert d1.states[res.id] == ["PENDING", "RECEIVED", "STARTED", "RETRY", "PENDING",
                                 "RECEIVED", "STARTED", "SUCCESS"]
    assert [(r["go_type"], r["exact"]) for r in _go_read_ok(d1, res.id)] == [("string", "done")]


@pytest.mark.matrix(PY_TO_GO, "ETA: countdown via delayed_tasks, moved by the other side")
def test_eta_countdown(d1: D1) -> None:
    res = d1.sent["countdown"]
    body, score = d1.delayed[res.id]
    sig = Signature.from_json(body)
    assert sig.eta is not None
    eta = sig.eta.timestamp()
    # Python scheduled it exactly as Go would: score = ETA in Unix ns, ETA = now + countdown
    assert abs(score - sig.eta.unix_ns) < 1024, (score, sig.eta.unix_ns)
    assert 0 <= eta - d1.sent_at[res.id] - ETA_COUNTDOWN < 0.5
    assert body.decode().count('"ETA":"') == 1 and sig.eta.isoformat().endswith("Z")
    ev = d1.one_go_task(res.id)
    assert ev["eta"] is not None and abs(parse_go_time(ev["eta"]) - eta) < 1e-6, ev["eta"]
    ran = parse_go_time(ev["ts"])
    assert 0 <= ran - eta < MOVE_SLACK, (ran, eta)
    assert d1.outcome[res.id] == 42
    assert [(r["go_type"], r["exact"]) for r in _go_read_ok(d1, res.id)] == [("int64", Num("42"))]
    assert d1.states[res.id] == SUCCESS_STATES


@pytest.mark.matrix(PY_TO_GO, "ETA with a +02:00 offset (kept as given)")
def test_eta_offset(d1: D1) -> None:
    res = d1.sent["eta_offset"]
    body, score = d1.delayed[res.id]
    eta = d1.etas["eta_offset"]
    text = Signature.from_json(body).eta
    assert text is not None and text.isoformat().endswith("+02:00"), text
    assert abs(score / 1e9 - eta.timestamp()) < 1e-6
    ev = d1.one_go_task(res.id)
    assert ev["eta"].endswith("+02:00"), ev["eta"]  # Go decoded and kept the offset
    assert abs(parse_go_time(ev["eta"]) - eta.timestamp()) < 1e-6
    assert parse_go_time(ev["ts"]) >= eta.timestamp()
    assert d1.outcome[res.id] == "eta+02:00"
    assert [(r["go_type"], r["exact"]) for r in _go_read_ok(d1, res.id)] == [
        ("string", "eta+02:00")]


# --------------------------------------------------------------------------------------
# callbacks
# --------------------------------------------------------------------------------------


def _callback_run(run: D1, key: str) -> tuple[dict[str, Any], list[Any]]:
    cb = run.callbacks[key]
    ev = run.one_go_task(cb.id)
    raw_args = exact(ev["_exact"])["raw_args"]
    return ev, raw_args


def _i64(n: int) -> dict[str, Any]:
    return {"Name": "", "Type": "int64", "Value": Num(str(n))}


@pytest.mark.matrix(PY_TO_GO, "OnSuccess callback: parent's results appended (§3.4)")
def test_on_success_callback(d1: D1) -> None:
    assert d1.outcome[d1.sent["on_success"].id] == 3
    cb = d1.callbacks["on_success"]
    _ev, raw_args = _callback_run(d1, "on_success")
    assert raw_args == [_i64(100), _i64(3)]
    assert d1.outcome[cb.id] == 103
    assert [(r["go_type"], r["exact"]) for r in _go_read_ok(d1, cb.id)] == [("int64", Num("103"))]
    # the Go worker wrote the callback's PENDING (TaskName "add") before publishing it
    assert d1.states[cb.id] == SUCCESS_STATES
    assert state_write_problems(d1.writes[cb.id], cb.id, "add",
                                results=b'[{"Type":"int64","Value":103}]') == []


@pytest.mark.matrix(PY_TO_GO, "OnSuccess callback of an Immutable parent: args unchanged")
def test_on_success_immutable(d1: D1) -> None:
    cb = d1.callbacks["on_success_immutable"]
    _ev, raw_args = _callback_run(d1, "on_success_immutable")
    assert raw_args == [_i64(100)]
    assert d1.outcome[cb.id] == 100
    assert [(r["go_type"], r["exact"]) for r in _go_read_ok(d1, cb.id)] == [("int64", Num("100"))]


@pytest.mark.matrix(PY_TO_GO, "OnError callback: error text prepended (§3.6)")
def test_on_error_callback(d1: D1) -> None:
    parent = d1.outcome[d1.sent["on_error"].id]
    assert isinstance(parent, TaskFailed) and parent.error == FAIL_MSG
    cb = d1.callbacks["on_error"]
    _ev, raw_args = _callback_run(d1, "on_error")
    assert raw_args == [{"Name": "", "Type": "string", "Value": FAIL_MSG},
                        {"Name": "", "Type": "string", "Value": "!"}]
    assert d1.outcome[cb.id] == FAIL_MSG + "!"
    assert [(r["go_type"], r["exact"]) for r in _go_read_ok(d1, cb.id)] == [
        ("string", FAIL_MSG + "!")]


# --------------------------------------------------------------------------------------
# unregistered task: a Python worker hands a Go-only task to a Go worker
# --------------------------------------------------------------------------------------


@pytest.mark.matrix(PY_TO_GO, "unregistered task handed over to a worker that has it")
def test_unregistered_handoff(flavour: str, go_bins: Path, new_db: Callable[[], str],
                              caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """Go-only tasks reach a Python worker first (it registers only ``py_only``); it pushes
    them back, and once a Go worker consumes the same queue too, Go runs each exactly once."""
    caplog.set_level(logging.WARNING, logger="machinery_compat")
    url = new_db()
    queue = f"q_h1_{flavour}"
    py = make_app(url, queue, only={"py_only"})
    pyworker = py.app.worker(concurrency=2, poll_timeout=0.1, delayed_poll_interval=0.05).start()
    go: GoWorker | None = None
    try:
        r1 = py.app.send_task("multiply", args=[6, 7])
        r2 = py.app.send_task("echo_int16", args=[Arg("int16", -32768)])
        wait_for(lambda: all(any(f"Task {n} is not registered here" in r.getMessage()
                                 for r in caplog.records) for n in ("multiply", "echo_int16")),
                 what="the Python worker to push both Go-only tasks back")
        go = GoWorker(flavour, url, queue, log_dir=tmp_path).start()
        assert r1.get(timeout=20) == 42
        assert r2.get(timeout=20) == -32768
        assert [e["results"] for e in go.wait_tasks(r1.id)] == [[42]]
        assert [e["results"] for e in go.wait_tasks(r2.id)] == [[-32768]]
        assert py.executions.snapshot() == []
        lines = run_producer(flavour, url, [{"read": r1.id}, {"read": r2.id}])
        assert [(r["go_type"], r["exact"]) for r in lines[0]["results"]] == [("int64", Num("42"))]
        assert [(r["go_type"], r["exact"]) for r in lines[1]["results"]] == [
            ("int16", Num("-32768"))]
    finally:
        pyworker.stop(timeout=10)
        py.close()
        if go is not None:
            go.stop()
