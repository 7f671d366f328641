"""Direction 2: a Go Machinery producer (mcproducer, ``wait: true``), a Python worker.

One in-process Python worker per flavour (``interop/tests/pyapp.py``: the Go worker's task
names, echo tasks with Go types pinned by ``Annotated[..., GoType(...)]``) runs every
scenario at once; Go's ``AsyncResult.Get`` must return the right Go values (``go_type``,
exact ``value``), the right error texts, and the stored bytes must be exactly what a Go
worker stores (the same expectations as direction 1).  Every state write is recorded
(``MONITOR`` on a Redis backend, RabbitMQ's firehose on the AMQP one); the Python side
records every run (args, retry fields, ETA, wall time).  Python's ``AsyncResult`` reads the
results too, except on the AMQP backend, where Go's read consumed them (§6.4).

ETAs: on Redis the Go producer ZADDs ``delayed_tasks`` and the Python worker moves them; on
AMQP the Go producer publishes to its per-delay dead-letter queues and RabbitMQ delivers to
the Python worker's queue when due (Python's retries go the same way); on SQS both send
``DelaySeconds`` (whole seconds, truncated), seen in moto's request recording.

DynamoDB backend: Go's ``AsyncResult`` reads only ``string`` results (Python stores Go's
``%v`` text, as Go does): for every other type the Go producer line carries Go's
reflection error, and the value is checked through Python's ``AsyncResult`` instead.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
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
    go_read_check,
    same,
)
from interop.tests.harness import (
    BROKER_CASE_KINDS,
    GO_TO_PY,
    REPO,
    Num,
    Observer,
    Published,
    SQSSend,
    Stack,
    delay_queue,
    dynamodb_results,
    dynamodb_write_problems,
    echo_types,
    results_bytes,
    state_write_problems,
    task_properties,
    wait_for,
)
from interop.tests.mongodb_tap import go_read_error_of_python, negative_zero
from interop.tests.pyapp import PyApp, Run, stack_app, stack_env
from machinery_compat import Signature, TaskFailed

pytestmark = [pytest.mark.interop, pytest.mark.redis, pytest.mark.slow]

PY_DELAYED_POLL = 0.05
MOVE_SLACK = 0.6  # the Python worker moves every due task each 50 ms poll (Lua, batched)
# AMQP: RabbitMQ dead-letters a delayed message when its TTL expires; the delay is whole
# milliseconds measured when publishing (truncated), so a task may start a few ms *before*
# the ETA written in its JSON.  It then joins the queue at its tail: behind whatever this
# module's burst of ~90 tasks still has queued (prefetch 3, every state a message), so it
# may also start later than on Redis.
AMQP_EARLY = 0.005
AMQP_LATE = 2.0
ETA_COUNTDOWN_MS = 1500
ETA_OFFSET_MS = 1200  # the +02:00 ETA: this far ahead
# MongoDB: 3 x further ahead.  Go's SendTask writes PENDING before it schedules, and this
# module's burst of ~90 concurrent PENDING writes queues on the test server (FerretDB on
# SQLite serializes them: the delayed ZADD came 0.25-0.7 s after mcproducer started on an idle
# machine, more under load), so with 1.2 s the ETA was sometimes past by then and Go published
# at once (no ZADD); the burst's FerretDB state writes also delayed the run (AMQP: 2.5 s late)
MONGODB_ETA_FACTOR = 3
# MongoDB: the Python worker writes RECEIVED and STARTED before a task runs; behind the burst's
# writes FerretDB answers them seconds late under CI load (a due task started 1.0-2.5 s past its
# ETA on redis+mongodb, 3.5 s on amqp+mongodb), so a run may start this much after its ETA.
MONGODB_LATE = 5.0
EXIT_MSG = "fatal: sys.exit() inside a task"


NOT_READ = object()  # d2.outcome has no entry: Go's read consumed the AMQP state messages
PY_DYNAMO_SUCCESS_STATES = ["PENDING", "STARTED", "SUCCESS"]
PY_DYNAMO_FAILURE_STATES = ["PENDING", "STARTED", "FAILURE"]


# SQS: DelaySeconds is truncated to whole seconds when sending, so a task may start up to
# 1 s before its ETA (a Python worker hands back only what it receives >= 1 s early).  Late:
# behind this module's burst of ~90 tasks, which on the DynamoDB backend (every state write
# and every poll of Go's AsyncResult a call to the one moto server) takes many seconds.
SQS_EARLY = 1.05
SQS_LATE = 2.0
SQS_DYNAMODB_LATE = 10.0


def retry_lag(stack: Stack) -> float:
    """How long after a failed run the worker may set the retry's ETA (now + RetryTimeout):
    it writes the RETRY state first, a call to moto's DynamoDB or FerretDB on those backends
    (slow while a module's burst is running), a Redis/RabbitMQ round trip elsewhere."""
    return 1.0 if stack.dynamodb_backend or stack.mongodb is not None else 0.3


def early(stack: Stack) -> float:
    if stack.sqs_broker:
        return SQS_EARLY
    return AMQP_EARLY if stack.amqp_broker else 0.0


def late(stack: Stack) -> float:
    if stack.mongodb is not None:
        return MONGODB_LATE
    if stack.sqs_broker:
        return SQS_DYNAMODB_LATE if stack.dynamodb_backend else SQS_LATE
    return AMQP_LATE if stack.amqp_broker else MOVE_SLACK


@dataclass
class D2:
    stack: Stack
    py: PyApp
    out: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> mcproducer line
    echo: dict[str, list[tuple[EchoValue, str]]] = field(default_factory=dict)  # type -> (v, id)
    outcome: dict[str, Any] = field(default_factory=dict)  # uuid -> Python AsyncResult.get
    raw: dict[str, Any] = field(default_factory=dict)  # stored state (DynamoDB: the item)
    states: dict[str, list[str]] = field(default_factory=dict)
    writes: dict[str, list[Any]] = field(default_factory=dict)
    sends: dict[str, list[SQSSend]] = field(default_factory=dict)  # SQS: uuid -> messages
    zadds: dict[str, tuple[bytes, float]] = field(default_factory=dict)  # uuid -> (member, score)
    delay_publishes: dict[str, list[Published]] = field(default_factory=dict)  # AMQP
    etas: dict[str, str] = field(default_factory=dict)
    countdown_ms: int = ETA_COUNTDOWN_MS
    eta_offset_ms: int = ETA_OFFSET_MS

    @property
    def flavour(self) -> str:
        return self.stack.flavour

    def state_problems(self, uuid: str, name: str, *, results: bytes | None = None,
                       error: bytes = b"", dynamo: list[tuple[str, str]] | None = None,
                       error_text: str = "") -> list[str]:
        """The task's state writes against Go's rules (JSON bytes; DynamoDB items)."""
        if self.stack.dynamodb_backend:
            return dynamodb_write_problems(self.writes[uuid], uuid, name, results=dynamo,
                                           error=error_text)
        return state_write_problems(self.writes[uuid], uuid, name, results=results,
                                    error=error, merged=self.stack.merged_states)

    def stored_results(self, uuid: str) -> Any:
        """The stored SUCCESS state's results (DynamoDB: the item's ``Results``)."""
        raw = self.raw[uuid]
        if self.stack.dynamodb_backend:
            return raw.get("Results") if raw is not None and raw.get("State") == {
                "S": "SUCCESS"} else None
        return results_bytes(raw)

    def go_is(self, line: dict[str, Any], expected: list[tuple[str, Any]]) -> None:
        """Go's ``AsyncResult`` gave ``expected`` (DynamoDB: strings only, else its error)."""
        go_read_check(line, expected, dynamodb=self.stack.dynamodb_backend)

    @property
    def dynamodb(self) -> bool:
        return self.stack.dynamodb_backend

    @property
    def states_ok(self) -> list[str]:
        """A Python worker's state sequence for a task that succeeded: Go's four, except on
        DynamoDB, where it writes RECEIVED and STARTED as one ``SET State = STARTED``."""
        return PY_DYNAMO_SUCCESS_STATES if self.dynamodb else SUCCESS_STATES

    @property
    def states_failed(self) -> list[str]:
        return PY_DYNAMO_FAILURE_STATES if self.dynamodb else FAILURE_STATES

    def line(self, key: str) -> dict[str, Any]:
        line = self.out[key]
        assert line["sent"] is True and line["uuid"].startswith("task_"), line
        return line

    def runs(self, uuid: str) -> list[Run]:
        return self.py.executions.for_uuid(uuid)

    def one_run(self, uuid: str) -> Run:
        runs = self.runs(uuid)
        assert len(runs) == 1, f"expected exactly one Python run of {uuid}, got {runs}"
        return runs[0]


def _ok(line: dict[str, Any]) -> list[dict[str, Any]]:
    assert (line["state"], line["error"]) == ("SUCCESS", ""), line
    return list(line["results"])


@pytest.fixture(scope="module")
def d2(flavour: str, go_bins: Path, new_stack: Callable[[str], Stack],
       interop_full: bool) -> Iterator[D2]:
    st = new_stack("d2")
    obs: Observer = st.observer()
    py = stack_app(st)
    worker = py.app.worker(concurrency=8, poll_timeout=st.poll_timeout,
                           delayed_poll_interval=PY_DELAYED_POLL).start()
    run = D2(st, py)
    try:
        lines: list[dict[str, Any]] = []
        # (the echo types this column checks: a representative subset on the extra backend
        # combinations unless --interop-full, harness.SUBSET_KINDS)
        for t in echo_types(st.spec.kind, interop_full, ECHO_VALUES):
            run.echo[t] = []
            for i, v in enumerate(ECHO_VALUES[t]):
                if st.mongodb is not None and negative_zero(v.value):
                    continue  # (mongodb_tap.FERRETDB_NEGATIVE_ZERO)
                key = f"echo {t} {i}"
                run.echo[t].append((v, key))
                lines.append({"id": key, "name": v.task, "args": [v.producer_arg()]})

        def s(key: str, name: str, *args: dict[str, Any], **extra: Any) -> None:
            lines.append({"id": key, "name": name, "args": list(args), **extra})

        def i64(n: int) -> dict[str, Any]:
            return {"type": "int64", "value": n}

        def text(value: str) -> dict[str, Any]:
            return {"type": "string", "value": value}

        s("multi_return", "multi_return")
        s("only_error", "only_error")
        s("fail", "fail", text(FAIL_MSG))
        s("panic", "panic_task", text(PANIC_MSG))
        # (DynamoDB: moto answers the burst's state writes and Go's polls seconds late under CI
        # load; 8 s was outlasted there on v1 and v2 in one run)
        s("panic_exit", "panic_exit", text(EXIT_MSG),
          timeout_ms=20000 if st.dynamodb_backend else 8000)
        s("retry", "fail_n_times", text(f"d2-{st.spec.id}"), i64(2), retry_count=3)
        s("retry_later", "retry_later", text(f"d2-{st.spec.id}"), i64(700), retry_count=2)
        factor = MONGODB_ETA_FACTOR if st.mongodb is not None else 1
        run.countdown_ms, run.eta_offset_ms = ETA_COUNTDOWN_MS * factor, ETA_OFFSET_MS * factor
        s("countdown", "add", i64(40), i64(2), countdown_ms=run.countdown_ms)
        eta = (datetime.now(timezone(timedelta(hours=2)))
               + timedelta(milliseconds=run.eta_offset_ms)).isoformat()
        run.etas["eta_offset"] = eta
        s("eta_offset", "concat", text("eta"), text("+02:00"), eta=eta)
        s("py_dict", "py_dict")
        # callbacks (§3.4, §3.6): built by Go's producer, sent on by the Python worker
        for key, parent, cb, extra in (
            ("on_success", ("add", [i64(1), i64(2)]), ("add", [i64(100)]), {}),
            ("on_success_immutable", ("add", [i64(1), i64(2)]), ("add", [i64(100)]),
             {"immutable": True}),
            ("on_error", ("fail", [text(FAIL_MSG)]), ("concat", [text("!")]), {}),
        ):
            cb_uuid = f"task_cb_{key}_{st.queue}"
            field_name = "on_error" if key == "on_error" else "on_success"
            s(key, parent[0], *parent[1], **extra,
              **{field_name: [{"name": cb[0], "uuid": cb_uuid, "args": cb[1]}]})
            lines.append({"id": f"cb {key}", "read": cb_uuid})

        for line in st.produce(lines, parallel=len(lines)):
            run.out[line["id"]] = line
        for line in run.out.values():
            uuid = line["uuid"]
            if not st.consuming_reads:  # (on the AMQP backend Go's read consumed them)
                res = py.app.AsyncResult(uuid)
                run.outcome[uuid] = res.get(timeout=1, propagate=False) if res.ready() else None
                run.raw[uuid] = (st.dynamodb_item(uuid) if st.dynamodb_backend
                                 else st.memcache.get(uuid) if st.memcache is not None
                                 else st.stored_state(uuid) if st.mongodb is not None
                                 else py.counters.get(uuid))
        obs.stop()
        for line in run.out.values():
            uuid = line["uuid"]
            run.states[uuid] = obs.states(uuid)
            run.writes[uuid] = obs.state_writes(uuid)
            if st.consuming_reads:
                run.raw[uuid] = run.writes[uuid][-1] if run.writes[uuid] else None
            if obs.tap is not None:
                run.delay_publishes[uuid] = [r for r in obs.tap.task_messages(uuid)
                                             if delay_queue(r.routing_key)]
            if obs.aws is not None:
                run.sends[uuid] = obs.aws.sends(uuid)
        if obs.monitor is not None and st.spec.broker_kind == "redis":
            for c in obs.monitor.calls("ZADD"):
                if len(c.args) == 4 and c.args[1] == b"delayed_tasks":
                    sig = Signature.from_json(c.args[3])
                    run.zadds[sig.uuid] = (c.args[3], float(c.args[2]))
        yield run
    finally:
        obs.stop()
        worker.stop(timeout=10)
        py.close()


# --------------------------------------------------------------------------------------
# every type, edge values
# --------------------------------------------------------------------------------------


@pytest.mark.matrix(GO_TO_PY, "echo {echo_type}")
@pytest.mark.parametrize("echo_type", list(ECHO_VALUES))
def test_echo(d2: D2, echo_type: str) -> None:
    problems = []
    for v, key in d2.echo[echo_type]:
        line = d2.line(key)
        uuid = line["uuid"]
        # Go's AsyncResult: the value; on DynamoDB strings only, else its reflection error;
        # on MongoDB no unsigned Type (mongodb_tap.go_read_error_of_python)
        want_error = ((v.go_dynamodb_error() or "") if d2.dynamodb
                      else (go_read_error_of_python(v.go_type, v.value) or "")
                      if d2.stack.mongodb is not None else "")
        if (line["state"], line["error"]) != ("SUCCESS", want_error):
            problems.append(f"{v.label()}: Go read {line['state']!r} error {line['error']!r}"
                            f" (want error {want_error!r})")
            continue
        run = d2.one_run(uuid)
        got = d2.outcome.get(uuid, NOT_READ)
        go = line.get("results")
        checks: dict[str, tuple[Any, Any]] = {
            # what the Python task received
            "python arg": (same(run.args[0], v.expected_py()), True),
            # stored bytes: identical to what a Go worker stores (DynamoDB: %v text)
            "stored Results": (d2.stored_results(uuid), dynamodb_results(v.dynamo_results())
                               if d2.dynamodb else v.wire.encode()),
            "states": (d2.states[uuid], d2.states_ok),
            "state writes": (d2.state_problems(uuid, v.task, results=v.wire.encode(),
                                               dynamo=v.dynamo_results()), []),
        }
        if d2.dynamodb:
            if want_error:
                checks["go values"] = (go, None)
            else:
                checks["go value"] = ([(r["go_type"], r["value"]) for r in go],
                                      v.dynamo_results())
        elif want_error:  # (MongoDB)
            checks["go values"] = (go, None)
        else:
            checks["go type"] = ([r["go_type"] for r in go], [v.go_type])
            checks["go value"] = ([r["exact"] for r in go], [v.expected_go_value()])
            if v.go_repr is not None:
                checks["go repr"] = ([r["repr"] for r in go], [v.go_repr])
        if got is not NOT_READ:  # Python's AsyncResult
            checks["python value"] = (same(got, v.expected_py()), True)
        for what, (actual, expected) in checks.items():
            if actual != expected:
                problems.append(f"{v.label()}: {what}: {actual!r} != {expected!r}"
                                f" (python arg {run.args[0]!r}, python got {got!r})")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------
# results shape, failures
# --------------------------------------------------------------------------------------

MULTI_WIRE = (b'[{"Type":"int64","Value":42},{"Type":"string","Value":"answer"},'
              b'{"Type":"bool","Value":true}]')
MULTI_DYNAMO = [("int64", "42"), ("string", "answer"), ("bool", "true")]


@pytest.mark.matrix(GO_TO_PY, "multi_return: 3 results")
def test_multi_return(d2: D2) -> None:
    line = d2.line("multi_return")
    assert d2.outcome.get(line["uuid"], (42, "answer", True)) == (42, "answer", True)
    d2.one_run(line["uuid"])
    if d2.dynamodb:  # Go stops at the first result it cannot reflect
        assert (line["state"], line["error"], "results" in line) == (
            "SUCCESS", "42 is not int64", False), line
        assert d2.stored_results(line["uuid"]) == dynamodb_results(MULTI_DYNAMO)
        assert d2.state_problems(line["uuid"], "multi_return", dynamo=MULTI_DYNAMO) == []
        return
    assert [(r["go_type"], r["exact"], r["repr"]) for r in _ok(line)] == [
        ("int64", Num("42"), "42"), ("string", "answer", "answer"), ("bool", True, "true")]
    assert results_bytes(d2.raw[line["uuid"]]) == MULTI_WIRE
    assert d2.state_problems(line["uuid"], "multi_return", results=MULTI_WIRE) == []


@pytest.mark.matrix(GO_TO_PY, "only_error: no results")
def test_only_error(d2: D2) -> None:
    line = d2.line("only_error")
    assert _ok(line) == []
    # DynamoDB: no Results attribute is written, the PENDING's NULL stays (as Go does)
    assert d2.stored_results(line["uuid"]) == ({"NULL": True} if d2.dynamodb else b"[]")
    assert d2.outcome.get(line["uuid"]) is None
    assert d2.states[line["uuid"]] == d2.states_ok
    assert d2.state_problems(line["uuid"], "only_error", results=b"[]", dynamo=[]) == []


def _check_failure(run: D2, key: str, msg: str, error: str) -> None:
    line = run.line(key)
    assert (line["state"], line["error"]) == ("FAILURE", msg), line
    assert "results" not in line
    uuid = line["uuid"]
    raw = run.raw[uuid]
    if run.dynamodb:
        assert raw is not None and (raw["State"], raw["Error"]) == ({"S": "FAILURE"}, {"S": msg})
    else:
        assert raw is not None and raw == run.writes[uuid][-1]
    assert run.state_problems(uuid, line["name"], error=error.encode(), error_text=msg) == []
    if not run.stack.consuming_reads:
        failed = run.outcome[uuid]
        assert isinstance(failed, TaskFailed) and failed.error == msg, failed
    assert run.states[uuid] == run.states_failed
    run.one_run(uuid)


@pytest.mark.matrix(GO_TO_PY, "failure: FAILURE + error text on both sides")
def test_failure(d2: D2) -> None:
    _check_failure(d2, "fail", FAIL_MSG, FAIL_ERROR)


@pytest.mark.matrix(GO_TO_PY, "panic (Go panic / Python exception) → FAILURE")
def test_panic(d2: D2) -> None:
    _check_failure(d2, "panic", PANIC_MSG, PANIC_ERROR)


@pytest.mark.matrix(GO_TO_PY, "panic as BaseException (sys.exit in a Python task) → FAILURE")
def test_panic_base_exception(d2: D2) -> None:
    """Go recovers every panic into a FAILURE; a Python task calling ``sys.exit(msg)`` must
    not leave the task STARTED forever (the Go producer would wait until its timeout)."""
    _check_failure(d2, "panic_exit", EXIT_MSG, EXIT_MSG)


# --------------------------------------------------------------------------------------
# retries and ETAs
# --------------------------------------------------------------------------------------

RETRY_STATES = ["PENDING", "RECEIVED", "STARTED", "RETRY", "PENDING", "RECEIVED", "STARTED",
                "RETRY", "PENDING", "RECEIVED", "STARTED", "SUCCESS"]
PY_DYNAMO_RETRY_STATES = [s for s in RETRY_STATES if s != "RECEIVED"]


def _check_sqs_sends(run: D2, uuid: str, senders: list[str], at_most: list[int | None]) -> None:
    """The task's SendMessage calls: by these sides, to the queue's URL (broker URL + "/" +
    queue), each ``DelaySeconds`` absent (None) or at most the given whole seconds (the time
    left when sending, truncated; a Python worker may also hand an early task back)."""
    sends = [s for s in run.sends[uuid]]
    assert [s.client.split("-")[0] for s in sends][:len(senders)] == senders, sends
    assert {s.queue_url for s in sends} == {run.stack.queue_url()}, sends
    for s, limit in zip(sends, at_most, strict=False):
        if limit is None:
            assert s.delay is None, s
        else:
            assert s.delay is None or 0 <= s.delay <= limit, s


@pytest.mark.matrix(GO_TO_PY, "retry: RetryCount=3, fails twice → 3 (delays 1 s, 2 s)")
def test_retry_count(d2: D2) -> None:
    line = d2.line("retry")
    d2.go_is(line, [("int64", Num("3"))])
    runs = d2.runs(line["uuid"])
    assert [(r.retry_count, r.retry_timeout) for r in runs] == [(3, 0), (2, 1), (1, 2)]
    assert runs[0].eta is None and runs[1].eta is not None and runs[2].eta is not None
    # ETA = failure time + 1 s, then + 2 s; each run starts once due (Python moves every
    # 50 ms on Redis; RabbitMQ dead-letters it on AMQP)
    e = early(d2.stack)
    lag = retry_lag(d2.stack)
    assert 1.0 <= runs[1].eta - runs[0].at < 1.0 + lag, runs
    assert 2.0 <= runs[2].eta - runs[1].at < 2.0 + lag, runs
    assert -e <= runs[1].at - runs[1].eta < late(d2.stack), runs
    assert -e <= runs[2].at - runs[2].eta < late(d2.stack), runs
    gaps = [runs[1].at - runs[0].at, runs[2].at - runs[1].at]
    assert 1.0 - e <= gaps[0] < 1.0 + late(d2.stack) and 2.0 - e <= gaps[1] < 2.0 + late(d2.stack), gaps
    assert d2.states[line["uuid"]] == (PY_DYNAMO_RETRY_STATES if d2.dynamodb else RETRY_STATES)
    assert d2.state_problems(line["uuid"], "fail_n_times",
                             results=b'[{"Type":"int64","Value":3}]', dynamo=[("int64", "3")]) == []
    assert d2.outcome.get(line["uuid"], 3) == 3
    if d2.stack.amqp_broker:  # the Python worker's retries went through Go's delay queues
        _check_retry_delays(d2, line["uuid"], [1000, 2000])
    if d2.stack.sqs_broker:  # Go's send, then Python's retries (whole seconds, truncated)
        _check_sqs_sends(d2, line["uuid"], ["go", "python", "python"], [None, 1, 2])


@pytest.mark.matrix(GO_TO_PY, "retry-later: ErrRetryTaskLater / Retry(countdown), RetryCount kept")
def test_retry_later(d2: D2) -> None:
    line = d2.line("retry_later")
    d2.go_is(line, [("string", "done")])
    runs = d2.runs(line["uuid"])
    assert [(r.retry_count, r.retry_timeout) for r in runs] == [(2, 0), (2, 0)]
    assert runs[1].eta is not None
    assert 0.7 <= runs[1].eta - runs[0].at < 0.7 + retry_lag(d2.stack), runs
    assert -early(d2.stack) <= runs[1].at - runs[1].eta < late(d2.stack), runs
    if d2.stack.amqp_broker:
        _check_retry_delays(d2, line["uuid"], [700])
    if d2.stack.sqs_broker:  # 700 ms: no DelaySeconds (0 when truncated)
        _check_sqs_sends(d2, line["uuid"], ["go", "python"], [None, 0])
    want = ["PENDING", "RECEIVED", "STARTED", "RETRY", "PENDING", "RECEIVED", "STARTED",
            "SUCCESS"]
    assert d2.states[line["uuid"]] == ([s for s in want if s != "RECEIVED"] if d2.dynamodb
                                       else want)


def _delay_lag(stack: Stack) -> int:
    """How far (ms) below a retry's delay the Python worker may publish it: it writes the
    RETRY and PENDING states first; on MongoDB they queue on FerretDB behind this module's
    burst (the 700 ms retry-later was published with 428 ms left once)."""
    return 500 if stack.mongodb is not None else 100


def _check_retry_delays(run: D2, uuid: str, expected_ms: list[int]) -> None:
    """The Python worker's retries went through Go's delay queues (:func:`_check_delays`).
    On MongoDB it writes RETRY and PENDING on FerretDB first, which under CI load outlasted a
    700 ms delay once: a retry already due when published goes straight to its queue (no
    delay queue); the runs' timing (not before the ETA) is checked by the caller."""
    if run.stack.mongodb is not None and len(run.delay_publishes[uuid]) < len(expected_ms):
        return
    _check_delays(run, uuid, expected_ms, lag=_delay_lag(run.stack))


def _check_delays(run: D2, uuid: str, expected_ms: list[int],
                  lag: int = 100) -> list[Published]:
    """The task went through Go's per-delay queues (§5.1): routing key
    ``delay.<ms>.machinery_exchange.<queue>``, routed to that queue, no priority; ``ms``
    within ``lag`` ms below the expected delay (it is measured when publishing)."""
    pubs = run.delay_publishes[uuid]
    got = [delay_queue(p.routing_key) for p in pubs]
    assert len(got) == len(expected_ms) and all(g is not None for g in got), \
        [p.routing_key for p in pubs]
    for p, (ms, rk), want in zip(pubs, got, expected_ms, strict=True):  # type: ignore[misc]
        assert rk == run.stack.queue, p.routing_key
        assert want - lag <= ms <= want, (p.routing_key, want)
        assert p.routed_queues == (p.routing_key,), p
        assert p.properties == task_properties(p.body, delayed=True), p
    return pubs


def _delayed_by_go(run: D2, uuid: str, countdown_ms: int) -> bytes:
    """The message Go's producer scheduled (Redis: ZADD member; AMQP: delay-queue body; SQS:
    the SendMessage body, ``DelaySeconds`` the whole seconds left, truncated)."""
    if run.stack.sqs_broker:
        (send,) = run.sends[uuid]
        assert send.client.startswith("go-") and send.queue_url == run.stack.queue_url(), send
        assert 0 <= (send.delay or 0) <= countdown_ms // 1000, send
        return send.body
    if run.stack.amqp_broker:
        # Go's SendTask writes the PENDING state first (on the AMQP backend: a new
        # connection, slow on a busy machine), so the delay measured when publishing is
        # shorter by that much: any positive delay up to the countdown
        (pub,) = _check_delays(run, uuid, [countdown_ms], lag=countdown_ms - 1)
        return pub.body
    member, score = run.zadds[uuid]  # Go's producer ZADDed it
    sig = Signature.from_json(member)
    assert sig.eta is not None and abs(score - sig.eta.unix_ns) < 1024, (score, sig.eta)
    return member


@pytest.mark.matrix(GO_TO_PY, "ETA: countdown, scheduled by Go, run when due by Python "
                              "(Redis: delayed_tasks moved by Python; AMQP: delay queue; SQS: "
                              "DelaySeconds)")
def test_eta_countdown(d2: D2) -> None:
    line = d2.line("countdown")
    uuid = line["uuid"]
    if d2.stack.pubsub_broker:  # §5.4: Go's publisher blocked until the ETA, then published
        run = d2.one_run(uuid)
        assert run.eta is not None and 0 <= run.at - run.eta < late(d2.stack), run
        assert line["elapsed_ms"] >= d2.countdown_ms - 50, line
        d2.go_is(line, [("int64", Num("42"))])
        assert d2.states[uuid] == d2.states_ok
        return
    sig = Signature.from_json(_delayed_by_go(d2, uuid, d2.countdown_ms))
    assert sig.eta is not None
    run = d2.one_run(uuid)
    assert run.eta is not None and abs(run.eta - sig.eta.timestamp()) < 1e-6
    assert -early(d2.stack) <= run.at - run.eta < late(d2.stack), run
    if d2.stack.sqs_broker:  # delivered after the whole seconds sent
        (send,) = d2.sends[uuid]
        assert line["elapsed_ms"] >= 1000 * (send.delay or 0) - 50, (line, send)
    else:
        assert line["elapsed_ms"] >= d2.countdown_ms - 50, line
    d2.go_is(line, [("int64", Num("42"))])
    assert d2.states[uuid] == d2.states_ok


@pytest.mark.matrix(GO_TO_PY, "ETA with a +02:00 offset (kept as given)")
def test_eta_offset(d2: D2) -> None:
    line = d2.line("eta_offset")
    uuid = line["uuid"]
    if d2.stack.pubsub_broker:  # Go's producer published it at its ETA (§5.4): not observed
        member = b'"ETA":"+02:00"'
    elif d2.stack.sqs_broker:
        member = _delayed_by_go(d2, uuid, d2.eta_offset_ms)
    elif d2.stack.amqp_broker:
        (pub,) = d2.delay_publishes[uuid]
        ms, _ = delay_queue(pub.routing_key)  # type: ignore[misc]
        member = _delayed_by_go(d2, uuid, ms)
        assert 0 < ms <= d2.eta_offset_ms, pub.routing_key
    else:
        member, _score = d2.zadds[uuid]
    assert b'"ETA":"' in member and b'+02:00"' in member, member
    run = d2.one_run(uuid)
    assert run.eta_text is not None and run.eta_text.endswith("+02:00"), run
    want = datetime.fromisoformat(d2.etas["eta_offset"]).timestamp()
    assert run.eta is not None and abs(run.eta - want) < 1e-6
    assert -early(d2.stack) <= run.at - want < late(d2.stack)
    d2.go_is(line, [("string", "eta+02:00")])


@pytest.mark.matrix(GO_TO_PY, "untyped Python result (dict): Go's Get reports it, Python reads it")
def test_untyped_result(d2: D2) -> None:
    """A documented limitation, pinned: a Python task returning a dict stores the type name
    Go's reflection would print; Go readers cannot reflect it (§2.5)."""
    line = d2.line("py_dict")
    assert line["state"] == "SUCCESS"
    assert line["error"] == "map[string]interface {} is not one of supported types"
    assert "results" not in line
    if d2.dynamodb:  # Go's %v of the map: Python reads the text back, not the dict
        assert d2.stored_results(line["uuid"]) == dynamodb_results(
            [("map[string]interface {}", "map[k:[1 2]]")])
        assert d2.outcome.get(line["uuid"]) == "map[k:[1 2]]"
        return
    assert results_bytes(d2.raw[line["uuid"]]) == (
        b'[{"Type":"map[string]interface {}","Value":{"k":[1,2]}}]')
    assert d2.outcome.get(line["uuid"], {"k": [1, 2]}) == {"k": [1, 2]}


# --------------------------------------------------------------------------------------
# callbacks
# --------------------------------------------------------------------------------------


@pytest.mark.matrix(GO_TO_PY, "OnSuccess callback: parent's results appended (§3.4)")
def test_on_success_callback(d2: D2) -> None:
    d2.go_is(d2.line("on_success"), [("int64", Num("3"))])
    read = d2.out["cb on_success"]
    d2.go_is(read, [("int64", Num("103"))])
    run = d2.one_run(read["uuid"])
    assert run.args == (100, 3)
    # the Python worker wrote the callback's PENDING (TaskName "add") before publishing it
    assert d2.states[read["uuid"]] == d2.states_ok
    assert d2.state_problems(read["uuid"], "add", results=b'[{"Type":"int64","Value":103}]',
                             dynamo=[("int64", "103")]) == []


@pytest.mark.matrix(GO_TO_PY, "OnSuccess callback of an Immutable parent: args unchanged")
def test_on_success_immutable(d2: D2) -> None:
    read = d2.out["cb on_success_immutable"]
    d2.go_is(read, [("int64", Num("100"))])
    assert d2.one_run(read["uuid"]).args == (100,)


@pytest.mark.matrix(GO_TO_PY, "OnError callback: error text prepended (§3.6)")
def test_on_error_callback(d2: D2) -> None:
    parent = d2.line("on_error")
    assert (parent["state"], parent["error"]) == ("FAILURE", FAIL_MSG)
    read = d2.out["cb on_error"]
    d2.go_is(read, [("string", FAIL_MSG + "!")])
    assert d2.one_run(read["uuid"]).args == (FAIL_MSG, "!")


# --------------------------------------------------------------------------------------
# unregistered task: a Go worker hands a Python-only task to the Python worker
# --------------------------------------------------------------------------------------


@pytest.mark.kinds(*BROKER_CASE_KINDS)
@pytest.mark.matrix(GO_TO_PY, "unregistered task handed over to a worker that has it")
def test_unregistered_handoff(flavour: str, go_bins: Path, new_stack: Callable[[str], Stack],
                              tmp_path: Path) -> None:
    """A Python-only task reaches a Go worker first; Go hands it back in a busy loop (Redis:
    RPUSH; AMQP: ``basic.nack`` with requeue); once a Python worker consumes the same queue
    too, Python runs it exactly once."""
    st = new_stack("h2")
    if st.sqs_broker:
        _unregistered_handoff_sqs(st, tmp_path)
        return
    go = st.go_worker(log_dir=tmp_path).start()
    py: PyApp | None = None
    worker = None
    try:
        (sent,) = st.produce([{"name": "py_only", "wait": False,
                               "args": [{"type": "string", "value": "hello"}]}])
        assert sent["sent"] is True, sent
        # (Go's Pub/Sub broker logs its own line, then nacks: redelivered at once, §5.4)
        said = ("task py_only is not registered" if st.pubsub_broker
                else "Task not registered with this worker")
        wait_for(lambda: said in go.stderr(), timeout=10,
                 what="the Go worker to hand the Python-only task back")
        py = stack_app(st, only={"py_only", "add"})
        worker = py.app.worker(concurrency=2, poll_timeout=st.poll_timeout,
                               delayed_poll_interval=PY_DELAYED_POLL).start()
        (read,) = st.produce([{"read": sent["uuid"], "timeout_ms": 20000}])
        assert [(r["go_type"], r["exact"]) for r in _ok(read)] == [("string", "py:HELLO")]
        assert len(py.executions.for_uuid(sent["uuid"])) == 1
        assert go.tasks() == []
    finally:
        if worker is not None:
            worker.stop(timeout=10)
        if py is not None:
            py.close()
        go.stop()


def _unregistered_handoff_sqs(st: Stack, tmp_path: Path) -> None:
    """SQS: the Go worker leaves a task it lacks in the queue and returns an error (``task
    py_only is not registered``, its error handler), so SQS hands the message out again after
    the visibility timeout (2 s here); its consumer restarts — and the old receive loop keeps
    running (interop/README.md), so ``Quit`` never returns: the worker exits only through
    its quit timeout.  Once it is gone, the Python worker runs the task exactly once."""
    st = st.with_options(sqs_visibility_timeout=2)
    go = st.go_worker(log_dir=tmp_path, flags=["-quit-timeout", "3s"]).start()
    py: PyApp | None = None
    worker = None
    try:
        (sent,) = st.produce([{"name": "py_only", "wait": False,
                               "args": [{"type": "string", "value": "hello"}]}])
        assert sent["sent"] is True, sent
        go.wait_event(lambda e: e.get("event") == "error_handler"
                      and e.get("error") == "task py_only is not registered", 15,
                      "the Go worker's 'not registered' error")
        go.terminate()
        wait_for(lambda: not go.alive(), 15, "the Go worker to exit")
        stopped = [e for e in go.snapshot() if e.get("event") == "stopped"]
        assert [e["reason"] for e in stopped] == ["quit timeout"], stopped
        py = stack_app(st, only={"py_only", "add"})
        worker = py.app.worker(concurrency=2, poll_timeout=st.poll_timeout).start()
        (read,) = st.produce([{"read": sent["uuid"], "timeout_ms": 20000}])
        assert [(r["go_type"], r["exact"]) for r in _ok(read)] == [("string", "py:HELLO")]
        assert len(py.executions.for_uuid(sent["uuid"])) == 1
        assert go.tasks() == []
    finally:
        if worker is not None:
            worker.stop(timeout=10)
        if py is not None:
            py.close()
        go.kill()


# --------------------------------------------------------------------------------------
# the same app, as a worker process started from the command line
# --------------------------------------------------------------------------------------


@pytest.mark.kinds(*BROKER_CASE_KINDS)
@pytest.mark.matrix(GO_TO_PY, "Python worker process from the CLI (-A interop.tests.pyapp:app)")
def test_cli_worker(flavour: str, go_bins: Path, new_stack: Callable[[str], Stack],
                    tmp_path: Path) -> None:
    st = new_stack("cli")
    env = {**os.environ, **stack_env(st)}
    log = tmp_path / "worker.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "machinery_compat", "worker", "-A",
             "interop.tests.pyapp:app", "-c", "2"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "worker ready" in log.read_text(errors="replace") or proc.poll() is not None,
                 timeout=20, what="the CLI worker to start")
        assert proc.poll() is None, log.read_text(errors="replace")
        lines = [
            {"id": "int8", "name": "echo_int8", "args": [{"type": "int8", "value": -128}]},
            {"id": "multi", "name": "multi_return"},
            {"id": "strings", "name": "echo_[]string",
             "args": [{"type": "[]string", "value": ["<>&", "\u2028"]}]},
        ]
        out = {o["id"]: o for o in st.produce(lines, parallel=3)}
        dyn = st.dynamodb_backend
        go_read_check(out["int8"], [("int8", Num("-128"))], dynamodb=dyn)
        go_read_check(out["multi"], [("int64", Num("42")), ("string", "answer"), ("bool", True)],
                      dynamodb=dyn)
        go_read_check(out["strings"], [("[]string", ["<>&", "\u2028"])], dynamodb=dyn)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    text = log.read_text(errors="replace")
    assert rc == 0, text[-3000:]
    assert "worker stopped after 3 tasks" in text, text[-3000:]


# --------------------------------------------------------------------------------------
# priority (AMQP): an x-max-priority queue, highest Priority first
# --------------------------------------------------------------------------------------

#: One task per priority, sent in this order while no worker consumes the queue.
PRIORITIES = [3, 0, 9, 1, 7, 5, 2, 8, 4, 6]


@pytest.mark.kinds(*BROKER_CASE_KINDS)
@pytest.mark.matrix(GO_TO_PY, "priority: x-max-priority queue (queue_declare_args), highest "
                              "Priority run first")
@pytest.mark.skip_on("redis", reason="Machinery's Redis broker has no priorities: Priority is "
                                     "carried in the JSON and ignored (one FIFO list)")
@pytest.mark.skip_on("sqs+dynamodb", reason="SQS has no message priorities: Machinery's SQS "
                                            "broker sends Priority in the JSON only, and "
                                            "queues deliver in their own order")
@pytest.mark.skip_on("pubsub+redis", reason="Pub/Sub has no message priorities: Machinery's "
                                            "Pub/Sub broker sends Priority in the JSON only")
def test_priority(flavour: str, go_bins: Path, new_stack: Callable[[str], Stack]) -> None:
    """Go's producer sends one task per priority 0-9 in a shuffled order to an
    ``x-max-priority`` queue (it declares it, with the argument as Go int = ``I``); a Python
    worker (concurrency 1, prefetch 1) then declares the same queue without
    ``PRECONDITION_FAILED`` and runs them highest first."""
    st = new_stack("prio").with_options(queue_declare_args={"x-max-priority": 10},
                                        prefetch_count=1)
    lines = [{"id": p, "name": "add", "wait": False, "priority": p,
              "args": [{"type": "int64", "value": p}, {"type": "int64", "value": 1000}]}
             for p in PRIORITIES]
    out = st.produce(lines)
    assert all(o["sent"] is True for o in out), out
    assert st.queue_arguments([st.queue]) == {st.queue: [["x-max-priority", "signedint", 10]]}
    assert st.queue_depth() == len(PRIORITIES)
    py = stack_app(st, only={"add"})
    worker = py.app.worker(concurrency=1, prefetch=1, poll_timeout=st.poll_timeout).start()
    try:
        reads = st.produce([{"read": o["uuid"], "timeout_ms": 20000} for o in out], parallel=10)
        assert [_ok(r)[0]["value"] for r in reads] == [p + 1000 for p in PRIORITIES]
        priority = {o["uuid"]: o["id"] for o in out}
        ran = [priority[r.uuid] for r in sorted(py.executions.snapshot(), key=lambda r: r.at)]
        assert ran == sorted(PRIORITIES, reverse=True), ran
    finally:
        worker.stop(timeout=10)
        py.close()


# --------------------------------------------------------------------------------------
# SQS only: delays beyond 15 minutes, FIFO queues
# --------------------------------------------------------------------------------------

GO_MAX_DELAY_ERROR = "send: Publish message error: Max AWS SQS delay exceeded"
GO_FIFO_GROUP_ERROR = ("send: Publish message error: please specify BrokerMessageGroupId "
                       "attribute for task Signature when submitting a task to FIFO queue")


@pytest.mark.kinds("sqs+dynamodb")
@pytest.mark.matrix(GO_TO_PY, "SQS delay beyond 15 minutes: Go's SendTask refuses it (Max AWS "
                              "SQS delay exceeded) after writing PENDING")
def test_delay_beyond_15_minutes(flavour: str, go_bins: Path,
                                 new_stack: Callable[[str], Stack]) -> None:
    """SQS delays at most 900 s and Go's producer does not try (§5.3): the task is never
    sent, and the PENDING state it wrote first stays for good."""
    st = new_stack("long")
    obs = st.observer()
    try:
        (out,) = st.produce([{"name": "add", "wait": False, "countdown_ms": 16 * 60 * 1000,
                              "args": [{"type": "int64", "value": 1}]}])
    finally:
        obs.stop()
    assert (out["sent"], out["error"]) == (False, GO_MAX_DELAY_ERROR), out
    assert obs.aws is not None and obs.aws.sends(out["uuid"]) == []
    assert obs.states(out["uuid"]) == ["PENDING"]


@pytest.mark.kinds("sqs+dynamodb")
@pytest.mark.matrix(GO_TO_PY, "SQS FIFO queue: MessageGroupId = BrokerMessageGroupId, Go's "
                              "deduplication id = task UUID, ETA ignored; the Python worker's "
                              "retries get through")
def test_fifo(flavour: str, go_bins: Path, new_stack: Callable[[str], Stack]) -> None:
    """Go's producer sends five tasks of one message group (one with a 3 s countdown, which
    Go ignores on FIFO queues) and refuses one without ``BrokerMessageGroupId``; the Python
    worker runs them all.  A ``fail_n_times`` task (fails twice) is retried by the Python
    worker: its re-sends carry a deduplication id of their own (the body's SHA-256), so SQS
    does not drop them as it drops a Go worker's (same UUID, Py→Go FIFO cell)."""
    base = new_stack("fifo")
    st = base.with_options(queue=base.queue + ".fifo")
    obs = st.observer()
    py = stack_app(st, only={"concat", "fail_n_times"})
    worker = py.app.worker(concurrency=4, poll_timeout=st.poll_timeout).start()
    try:
        lines: list[dict[str, Any]] = [
            {"id": i, "name": "concat", "wait": False, "broker_message_group_id": "g1",
             "args": [{"type": "string", "value": f"m{i}"}],
             **({"countdown_ms": 3000} if i == 1 else {})} for i in range(5)]
        lines.append({"id": "no group", "name": "concat", "wait": False,
                      "args": [{"type": "string", "value": "x"}]})
        lines.append({"id": "retry", "name": "fail_n_times", "wait": False, "retry_count": 3,
                      "broker_message_group_id": "g2",
                      "args": [{"type": "string", "value": f"fifo-{st.queue}"},
                               {"type": "int64", "value": 2}]})
        out = {o["id"]: o for o in st.produce(lines)}
        assert (out["no group"]["sent"], out["no group"]["error"]) == (
            False, GO_FIFO_GROUP_ERROR), out["no group"]
        sent = [out[i] for i in range(5)]
        assert all(o["sent"] is True for o in [*sent, out["retry"]]), out
        reads = st.produce([{"read": o["uuid"], "timeout_ms": 20000} for o in sent], parallel=5)
        assert [_ok(r)[0]["value"] for r in reads] == [f"m{i}" for i in range(5)]
        retry = out["retry"]["uuid"]
        assert py.app.AsyncResult(retry).get(timeout=20) == 3
    finally:
        worker.stop(timeout=10)
        py.close()
        obs.stop()
    ran = {r.uuid for r in py.executions.snapshot() if r.name == "concat"}
    assert ran == {o["uuid"] for o in sent}
    assert obs.aws is not None
    for o in sent:
        (send,) = obs.aws.sends(o["uuid"])
        assert (send.client.split("-")[0], send.group_id, send.dedup_id, send.delay) == (
            "go", "g1", o["uuid"], None), send
    sends = obs.aws.sends(retry)
    assert [s.client.split("-")[0] for s in sends] == ["go", "python", "python"], sends
    assert sends[0].dedup_id == retry and all(s.group_id == "g2" for s in sends), sends
    assert len({s.dedup_id for s in sends}) == 3, sends  # every re-send its own id
    assert [r.retry_count for r in py.executions.for_uuid(retry)] == [3, 2, 1]


@pytest.mark.kinds("sqs+dynamodb")
@pytest.mark.matrix(GO_TO_PY, "SQS FIFO queue: a message group's tasks run one after the "
                              "other, in order, on a Python worker with concurrency 4")
def test_fifo_order(flavour: str, go_bins: Path, new_stack: Callable[[str], Stack]) -> None:
    """Go's producer sends ten tasks of one group to a ``.fifo`` queue; a Python worker with
    concurrency 4 must run them as a Go worker does (Py→Go FIFO cell): each after the
    previous one finished, in order."""
    base = new_stack("fifoorder")
    st = base.with_options(queue=base.queue + ".fifo")
    lines = [{"id": i, "name": "sleep", "wait": False, "broker_message_group_id": "g",
              "args": [{"type": "int64", "value": 100}]} for i in range(10)]
    out = st.produce(lines)
    assert all(o["sent"] is True for o in out), out
    py = stack_app(st, only={"sleep"})
    worker = py.app.worker(concurrency=4, poll_timeout=st.poll_timeout).start()
    try:
        reads = st.produce([{"read": o["uuid"], "timeout_ms": 20000} for o in out], parallel=10)
        assert all(r["state"] == "SUCCESS" for r in reads), reads
    finally:
        worker.stop(timeout=10)
        py.close()
    runs = sorted((r for r in py.executions.snapshot()), key=lambda r: r.at)
    assert [r.uuid for r in runs] == [o["uuid"] for o in out]
    starts = [r.at for r in runs]
    # one at a time: each started after the previous one's 100 ms
    assert all(b - a >= 0.09 for a, b in itertools.pairwise(starts)), starts
