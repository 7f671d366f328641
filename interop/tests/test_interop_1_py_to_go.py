"""Direction 1: a Python producer, a Go Machinery worker (mcworker), results read by both.

One Go worker per column runs every scenario of the module at once (module-scoped ``d1``
fixture): echo tasks for all 29 types, multiple results, no results, failure, panic,
RetryCount retries, retry-later, ETAs.  Python reads each result with ``AsyncResult``; Go
reads each one with ``AsyncResult.Get`` (``mcproducer``, batched read lines and the
single-shot ``-read UUID`` mode) — except on the AMQP backend, where a read consumes the
state messages (§6.4) and Python's read is the one that matters here (Go reading what a Go
worker wrote is not interop).  Every state write is recorded: ``MONITOR`` on a Redis
backend, RabbitMQ's firehose on the AMQP one.

ETAs: on Redis the Go worker keeps Machinery's default delayed-tasks poll (500 ms): the ETA
and retry cases prove that it moves delayed tasks a Python producer scheduled.  On AMQP the
Python producer publishes to Go's per-delay dead-letter queue
(``delay.<ms>.machinery_exchange.<queue>``, declared with Go's arguments and integer
widths, checked with ``rabbitmqctl list_queues``) and RabbitMQ delivers it when due; the
Go worker's retries go the same way back.  On SQS both send ``DelaySeconds`` = the whole
seconds left (truncated, §5.3: a task may start up to a second before its ETA), seen in
moto's request recording.

On the DynamoDB backend every state write is a ``PutItem``/``UpdateItem`` (moto's recording)
and results are Go's ``%v`` text: Python's ``AsyncResult`` reads them typed, Go's only reads
``string`` results and reports its reflection error for the rest (cases.go_dynamodb_read).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
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
    AMQP_EXCHANGE,
    BROKER_CASE_KINDS,
    PY_TO_GO,
    GoWorker,
    Num,
    Observer,
    Published,
    SQSSend,
    Stack,
    delay_queue,
    dynamodb_results,
    dynamodb_write_problems,
    echo_types,
    exact,
    parse_go_time,
    results_bytes,
    state_write_problems,
    task_properties,
    wait_for,
)
from interop.tests.mongodb_tap import go_cannot_store, go_read_error, negative_zero
from interop.tests.pyapp import PyApp, stack_app
from machinery_compat import Arg, AsyncResult, Signature, TaskFailed

pytestmark = [pytest.mark.interop, pytest.mark.redis, pytest.mark.slow]

ETA_COUNTDOWN = 1.5
ETA_OFFSET_IN = 1.2  # the +02:00 ETA: this far ahead
# AMQP: twice as far ahead, so that the delay queues (x-expires = 2 x delay) still exist when
# `rabbitmqctl list_queues` (an Erlang VM start, seconds on a loaded machine) reads them.
AMQP_ETA_FACTOR = 2
GO_DELAYED_POLL = 0.5  # Machinery's default DelayedTasksPollPeriod
# Redis: a Go worker moves at most ONE due delayed task per poll period (v2-goredis even
# takes the latest-due first), and this module has up to 4 delayed tasks due within ~1 s of
# each other: a due task may wait up to 4 poll periods before it is moved.
MOVE_SLACK = 4 * GO_DELAYED_POLL + 0.5
# AMQP: RabbitMQ dead-letters a delayed message when its TTL expires; the delay is whole
# milliseconds measured when publishing (truncated), so a task may start a few ms *before*
# the ETA written in its JSON.
AMQP_SLACK = 1.5  # RabbitMQ dead-letters an expired delay message at its queue's head; ~1 s late seen under CI load
AMQP_EARLY = 0.005
# SQS: DelaySeconds is the whole seconds left when sending (truncated), so a task may start
# up to 1 s before its ETA; it is received by the next long poll (SQS_WAIT 1 s).
SQS_EARLY = 1.05
SQS_LATE = 1.5


def retry_lag(stack: Stack) -> float:
    """How long after a failed run the worker may set the retry's ETA (now + RetryTimeout):
    it writes the RETRY state first, a call to moto's DynamoDB on that backend (slow while a
    module's burst is running), a Redis/RabbitMQ round trip elsewhere."""
    return 1.0 if stack.dynamodb_backend else 0.3


def slack(stack: Stack) -> tuple[float, float]:
    """(how early, how late) a delayed task may start relative to its ETA on this stack."""
    if stack.sqs_broker:
        return SQS_EARLY, SQS_LATE
    if stack.pubsub_broker:  # Go's publisher blocks until the ETA, then delivery (streaming)
        return 0.0, SQS_LATE
    return (AMQP_EARLY, AMQP_SLACK) if stack.amqp_broker else (0.0, MOVE_SLACK)


@dataclass
class D1:
    stack: Stack
    worker: GoWorker
    py: PyApp
    sent: dict[str, AsyncResult] = field(default_factory=dict)
    echo: dict[str, list[tuple[EchoValue, AsyncResult]]] = field(default_factory=dict)
    outcome: dict[str, Any] = field(default_factory=dict)  # uuid -> value | TaskFailed
    go_read: dict[str, dict[str, Any]] = field(default_factory=dict)  # uuid -> mcproducer line
    raw: dict[str, Any] = field(default_factory=dict)  # uuid -> stored state (DynamoDB: item)
    states: dict[str, list[str]] = field(default_factory=dict)  # uuid -> states written
    writes: dict[str, list[Any]] = field(default_factory=dict)  # uuid -> TaskState writes
    sends: dict[str, list[SQSSend]] = field(default_factory=dict)  # SQS: uuid -> messages
    callbacks: dict[str, AsyncResult] = field(default_factory=dict)
    delayed: dict[str, tuple[bytes, float]] = field(default_factory=dict)  # uuid -> ZSET entry
    delay_publishes: dict[str, list[Published]] = field(default_factory=dict)  # AMQP
    delay_queue_args: dict[str, list[list[Any]]] = field(default_factory=dict)  # AMQP
    sent_at: dict[str, float] = field(default_factory=dict)
    etas: dict[str, datetime] = field(default_factory=dict)
    single_read: dict[str, Any] = field(default_factory=dict)
    countdown: float = ETA_COUNTDOWN

    @property
    def flavour(self) -> str:
        return self.stack.flavour

    def go_tasks(self, uuid: str) -> list[dict[str, Any]]:
        return self.worker.tasks(uuid)

    def one_go_task(self, uuid: str) -> dict[str, Any]:
        evs = self.go_tasks(uuid)
        assert len(evs) == 1, f"expected exactly one Go run of {uuid}, got {evs}"
        return evs[0]

    def state_problems(self, uuid: str, name: str, *, results: bytes | None = None,
                       error: bytes = b"", dynamo: list[tuple[str, str]] | None = None,
                       error_text: str = "") -> list[str]:
        """The task's state writes against Go's rules: JSON bytes (``results``, ``error``
        JSON-escaped) on Redis/AMQP, items (``dynamo`` = ``(Type, %v)`` results,
        ``error_text``) on DynamoDB."""
        if self.stack.dynamodb_backend:
            return dynamodb_write_problems(self.writes[uuid], uuid, name, results=dynamo,
                                           error=error_text)
        return state_write_problems(self.writes[uuid], uuid, name, results=results,
                                    error=error, merged=self.stack.merged_states)

    def stored_results(self, uuid: str) -> Any:
        """The stored SUCCESS state's results: ``Results`` JSON bytes, or the DynamoDB item's
        ``Results`` attribute."""
        raw = self.raw[uuid]
        if self.stack.dynamodb_backend:
            return raw.get("Results") if raw is not None and raw.get("State") == {
                "S": "SUCCESS"} else None
        return results_bytes(raw)


def _delayed_entry(client: Any, uuid: str) -> tuple[bytes, float] | None:
    for body, score in client.zrange("delayed_tasks", 0, -1, withscores=True):
        if Signature.from_json(body).uuid == uuid:
            return body, score
    return None


@pytest.fixture(scope="module")
def d1(flavour: str, go_bins: Path, new_stack: Callable[[str], Stack],
       tmp_path_factory: pytest.TempPathFactory, interop_full: bool) -> Iterator[D1]:
    st = new_stack("d1")
    obs: Observer = st.observer()
    worker = st.go_worker(concurrency=8, log_dir=tmp_path_factory.mktemp(f"d1-{st.spec.id}"))
    worker.start()
    py = stack_app(st, only=())
    run = D1(st, worker, py)
    app = py.app
    client = py.counters  # the counters Redis (also the backend on a Redis backend)
    try:
        # -- send everything ------------------------------------------------------------
        # (the echo types this column checks: a representative subset on the extra backend
        # combinations unless --interop-full, harness.SUBSET_KINDS)
        # (MongoDB: no value a Go worker cannot store there, nor a -0 FerretDB loses:
        # mongodb_tap.GO_CANNOT_STORE, FERRETDB_NEGATIVE_ZERO)
        for t in echo_types(st.spec.kind, interop_full, ECHO_VALUES):
            run.echo[t] = [(v, app.send_task(v.task, args=[Arg(v.type, v.value)]))
                           for v in ECHO_VALUES[t]
                           if st.mongodb is None or not (go_cannot_store(v.value)
                                                         or negative_zero(v.value))]
        s = run.sent

        def send(key: str, name: str, *args: Any, **options: Any) -> None:
            before = time.time()
            s[key] = app.send_task(name, args=list(args), **options)
            run.sent_at[s[key].id] = before

        send("multi_return", "multi_return")
        send("only_error", "only_error")
        send("fail", "fail", FAIL_MSG)
        send("panic", "panic_task", PANIC_MSG)
        send("retry", "fail_n_times", f"d1-{st.spec.id}", 2, retry_count=3)
        send("retry_later", "retry_later", f"d1-{st.spec.id}", 700, retry_count=2)
        factor = AMQP_ETA_FACTOR if st.amqp_broker else 1
        run.countdown = ETA_COUNTDOWN * factor
        send("countdown", "add", 40, 2, countdown=run.countdown)
        eta = datetime.now(timezone(timedelta(hours=2))) + timedelta(seconds=ETA_OFFSET_IN * factor)
        send("eta_offset", "concat", "eta", "+02:00", eta=eta)
        run.etas["eta_offset"] = eta
        # callbacks (§3.4, §3.6): built by Python, decoded and sent on by the Go worker
        for key, parent, cb, options in (
            ("on_success", ("add", [1, 2]), ("add", [100]), {}),
            ("on_success_immutable", ("add", [1, 2]), ("add", [100]), {"immutable": True}),
            ("on_error", ("fail", [FAIL_MSG]), ("concat", ["!"]), {}),
        ):
            sig = app.build_signature(parent[0], parent[1], **options)
            callback = app.build_signature(cb[0], cb[1],
                                           task_id=f"task_cb_{key}_{st.queue}")
            if key == "on_error":
                sig.on_error = [callback]
            else:
                sig.on_success = [callback]
            s[key] = app.send_signature(sig)
            run.callbacks[key] = AsyncResult(callback.uuid, app.backend)
        if st.sqs_broker:
            pass  # the SendMessage calls (DelaySeconds) are read from moto's recording below
        elif st.pubsub_broker:
            pass  # published at once with the ETA in the JSON: nothing delayed server-side
        elif st.amqp_broker:
            # the delay queues Python declared, while they exist (x-expires = 2 x delay)
            assert obs.tap is not None
            wait_for(lambda: all(any(delay_queue(r.routing_key) for r in obs.tap.task_messages(
                s[k].id)) for k in ("countdown", "eta_offset")), 5, "the delayed publishes")
            names = {r.routing_key for k in ("countdown", "eta_offset")
                     for r in obs.tap.task_messages(s[k].id)}
            run.delay_queue_args = st.queue_arguments(names)
        else:
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
        if not st.consuming_reads:
            lines = [{"read": r.id, "id": r.id, "timeout_ms": 5000} for r in every]
            for line in st.produce(lines, parallel=8):
                run.go_read[line["uuid"]] = line
            run.single_read = st.read_one(s["multi_return"].id)
        # every state write has been observed once the last results are stored
        obs.stop()
        for res in every:
            run.states[res.id] = obs.states(res.id)
            run.writes[res.id] = obs.state_writes(res.id)
            # the stored state: GET on Redis; the last state message on the AMQP backend
            # (which Python's read consumed); the item on DynamoDB
            writes = run.writes[res.id]
            run.raw[res.id] = (st.dynamodb_item(res.id) if st.dynamodb_backend
                               else st.stored_state(res.id) if st.mongodb is not None
                               else client.get(res.id) if st.merged_states
                               else writes[-1] if writes else None)
            if obs.aws is not None:
                run.sends[res.id] = obs.aws.sends(res.id)
            if obs.tap is not None:
                run.delay_publishes[res.id] = [r for r in obs.tap.task_messages(res.id)
                                               if delay_queue(r.routing_key)]
        yield run
    finally:
        obs.stop()
        try:
            worker.stop()
        finally:
            py.close()


def _go_read_ok(run: D1, uuid: str) -> list[dict[str, Any]] | None:
    """Go's read of ``uuid`` (None on the AMQP backend, where Python's read consumed it)."""
    if run.stack.consuming_reads:
        return None
    line = run.go_read[uuid]
    assert (line["read"], line["state"], line["error"]) == (True, "SUCCESS", ""), line
    return list(line["results"])


def _go_read_is(run: D1, uuid: str, expected: list[tuple[str, Any]]) -> None:
    """Go's read of ``uuid`` gave ``expected`` ``(go_type, exact value)`` (on DynamoDB: what
    Go's ``AsyncResult`` makes of their ``%v`` text); nothing on the AMQP backend."""
    if not run.stack.consuming_reads:
        go_read_check(run.go_read[uuid], expected, dynamodb=run.stack.dynamodb_backend)


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
        dyn = d1.stack.dynamodb_backend
        # MongoDB: Go's AsyncResult refuses some types (mongodb_tap.go_read_error)
        mongo_err = None if d1.stack.mongodb is None else go_read_error(v.go_type, v.value)
        go = None if dyn or mongo_err is not None else _go_read_ok(d1, res.id)
        checks: dict[str, tuple[Any, Any]] = {
            # what the Go task function received, and returned
            "go arg type": (ev["arg_types"], [v.go_type]),
            "go arg value": (ev_exact["args"], [v.expected_go_value()]),
            "go result type": (ev["result_types"], [v.go_type]),
            # stored bytes (DynamoDB: the Results attribute, %v text)
            "stored Results": (d1.stored_results(res.id),
                               dynamodb_results(v.dynamo_results()) if dyn else v.wire.encode()),
            # Python's AsyncResult
            "python type": ([r.type for r in (res.results or [])], [v.result_type]),
            "python value": (same(got, v.expected_py()), True),
            "states": (d1.states[res.id], SUCCESS_STATES),
            "state writes": (d1.state_problems(res.id, v.task, results=v.wire.encode(),
                                               dynamo=v.dynamo_results()), []),
        }
        if dyn:  # Go's AsyncResult on DynamoDB: strings only, else its reflection error
            line = d1.go_read[res.id]
            err = v.go_dynamodb_error()
            checks["go read (DynamoDB)"] = ((line["state"], line["error"]), ("SUCCESS", err or ""))
            if err is None:
                checks["go read value"] = ([r["value"] for r in line["results"]],
                                           [v.dynamo_text()])
        if mongo_err is not None:
            line = d1.go_read[res.id]
            checks["go read (MongoDB)"] = ((line["state"], line["error"], "results" in line),
                                           ("SUCCESS", mongo_err, False))
        if go is not None:  # Go's AsyncResult
            checks["go read type"] = ([r["go_type"] for r in go], [v.go_type])
            checks["go read value"] = ([r["exact"] for r in go], [v.expected_go_value()])
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
MULTI_DYNAMO = [("int64", "42"), ("string", "answer"), ("bool", "true")]


@pytest.mark.matrix(PY_TO_GO, "multi_return: 3 results")
def test_multi_return(d1: D1) -> None:
    res = d1.sent["multi_return"]
    assert d1.outcome[res.id] == (42, "answer", True)
    assert d1.one_go_task(res.id)["result_types"] == ["int64", "string", "bool"]
    if d1.stack.dynamodb_backend:
        assert d1.stored_results(res.id) == dynamodb_results(MULTI_DYNAMO)
        for line in (d1.go_read[res.id], d1.single_read):  # Go stops at the first result
            assert (line["state"], line["error"], "results" in line) == (
                "SUCCESS", "42 is not int64", False), line
        assert d1.state_problems(res.id, "multi_return", dynamo=MULTI_DYNAMO) == []
        return
    assert d1.stored_results(res.id) == MULTI_WIRE
    if not d1.stack.consuming_reads:
        for line in (d1.go_read[res.id], d1.single_read):
            assert (line["state"], line["error"]) == ("SUCCESS", ""), line
            assert [(r["go_type"], r["exact"], r["repr"]) for r in line["results"]] == MULTI_GO
        assert d1.single_read["line"] == 0 and d1.single_read["uuid"] == res.id
    assert d1.one_go_task(res.id)["result_types"] == ["int64", "string", "bool"]
    assert d1.state_problems(res.id, "multi_return", results=MULTI_WIRE) == []


@pytest.mark.matrix(PY_TO_GO, "only_error: no results")
def test_only_error(d1: D1) -> None:
    res = d1.sent["only_error"]
    assert d1.outcome[res.id] is None
    assert res.results == []
    # DynamoDB: no Results attribute is written, the PENDING's NULL stays
    assert d1.stored_results(res.id) == (
        {"NULL": True} if d1.stack.dynamodb_backend else b"[]")
    assert _go_read_ok(d1, res.id) in ([], None)
    assert d1.states[res.id] == SUCCESS_STATES
    assert d1.state_problems(res.id, "only_error", results=b"[]", dynamo=[]) == []


def _check_failure(run: D1, key: str, name: str, msg: str, error: str) -> dict[str, Any]:
    res = run.sent[key]
    failed = run.outcome[res.id]
    assert isinstance(failed, TaskFailed), failed
    assert failed.error == msg
    raw = run.raw[res.id]
    if run.stack.dynamodb_backend:
        assert raw is not None and (raw["State"], raw["Error"]) == ({"S": "FAILURE"}, {"S": msg})
    else:
        assert raw is not None and raw == run.writes[res.id][-1]
    assert run.state_problems(res.id, name, error=error.encode(), error_text=msg) == []
    if not run.stack.consuming_reads:
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
    early, late = slack(d1.stack)
    # Go's worker sets ETA = now + RetryTimeout seconds, and runs it once due (and moved)
    lag = retry_lag(d1.stack)
    assert 1.0 <= etas[0] - ts[0] < 1.0 + lag, (ts, etas)
    assert 2.0 <= etas[1] - ts[1] < 2.0 + lag, (ts, etas)
    assert -early <= ts[1] - etas[0] < late, (ts, etas)
    assert -early <= ts[2] - etas[1] < late, (ts, etas)
    assert d1.states[res.id] == RETRY_STATES
    assert d1.state_problems(res.id, "fail_n_times", results=b'[{"Type":"int64","Value":3}]',
                             dynamo=[("int64", "3")]) == []
    _go_read_is(d1, res.id, [("int64", Num("3"))])
    if d1.stack.amqp_broker:  # Go's retries went through its delay queues: 1 s, then 2 s
        _check_delays(d1, res.id, [1000, 2000])
    if d1.stack.sqs_broker:  # DelaySeconds truncated: the 1 s retry is sent with 0
        _check_sqs_delays(d1, res.id, [None, 0, 1], ["python", "go", "go"])


@pytest.mark.matrix(PY_TO_GO, "retry-later: ErrRetryTaskLater / Retry(countdown), RetryCount kept")
def test_retry_later(d1: D1) -> None:
    res = d1.sent["retry_later"]
    assert d1.outcome[res.id] == "done"
    evs = d1.go_tasks(res.id)
    assert [(e["retry_count"], e["retry_timeout"]) for e in evs] == [(2, 0), (2, 0)]
    assert [e["error"] for e in evs] == ["Task error: later Will retry in: 700ms", ""]
    ts = [parse_go_time(e["ts"]) for e in evs]
    eta = parse_go_time(evs[1]["eta"])
    early, late = slack(d1.stack)
    assert 0.7 <= eta - ts[0] < 0.7 + retry_lag(d1.stack), (ts, eta)
    assert -early <= ts[1] - eta < late, (ts, eta)
    assert d1.states[res.id] == ["PENDING", "RECEIVED", "STARTED", "RETRY", "PENDING",
                                 "RECEIVED", "STARTED", "SUCCESS"]
    _go_read_is(d1, res.id, [("string", "done")])
    if d1.stack.sqs_broker:  # 700 ms: sent with DelaySeconds 0, run at once
        _check_sqs_delays(d1, res.id, [None, 0], ["python", "go"])


def _check_sqs_delays(run: D1, uuid: str, delays: list[int | None], senders: list[str]) -> None:
    """The task's SendMessage calls (§5.3): to the worker queue's URL (broker URL + "/" +
    queue), by these sides, with these ``DelaySeconds`` (None: absent; Go v2 leaves out a
    0, v1 sends it)."""
    sends = run.sends[uuid]
    assert [s.client.split("-")[0] for s in sends] == senders, sends
    assert {s.queue_url for s in sends} == {run.stack.queue_url()}, sends
    got = [0 if s.delay is None and want == 0 else s.delay
           for s, want in zip(sends, delays, strict=True)]
    assert got == delays, (sends, delays)


def _check_delays(run: D1, uuid: str, expected_ms: list[int]) -> list[Published]:
    """The task went through Go's per-delay queues (§5.1): published to the exchange with
    routing key ``delay.<ms>.machinery_exchange.<queue>``, routed to that queue, with the
    task's properties but no priority; ``ms`` is the delay measured when publishing."""
    pubs = run.delay_publishes[uuid]
    got = [delay_queue(p.routing_key) for p in pubs]
    assert len(got) == len(expected_ms) and all(g is not None for g in got), \
        [p.routing_key for p in pubs]
    # (MongoDB: the PENDING/RETRY writes before the publish queue on FerretDB behind the
    # module's burst: 222 ms once, under load)
    lag = 500 if run.stack.mongodb is not None else 100
    for p, (ms, rk), want in zip(pubs, got, expected_ms, strict=True):  # type: ignore[misc]
        assert rk == run.stack.queue, p.routing_key
        assert want - lag <= ms <= want, (p.routing_key, want)
        assert p.routed_queues == (p.routing_key,), p
        assert p.properties == task_properties(p.body, delayed=True), p
    return pubs


#: Go's delay queue arguments (§5.1, §12.2) with RabbitMQ's type names: TTL and expiry
#: 64-bit (``long`` = AMQP ``l``), the dead-letter targets strings.
def _go_delay_queue_args(ms: int, queue: str) -> list[Any]:
    return sorted([["x-dead-letter-exchange", "longstr", AMQP_EXCHANGE],
                   ["x-dead-letter-routing-key", "longstr", queue],
                   ["x-expires", "long", 2 * ms], ["x-message-ttl", "long", ms]])


def _check_python_delay(run: D1, uuid: str, countdown_ms: int) -> float:
    """Python published the delayed task exactly as Go would; returns the JSON's ETA."""
    (pub,) = _check_delays(run, uuid, [countdown_ms])
    ms, rk = delay_queue(pub.routing_key)  # type: ignore[misc]
    # Python declared the delay queue with Go's arguments and integer widths
    assert run.delay_queue_args.get(pub.routing_key) == _go_delay_queue_args(ms, rk), \
        run.delay_queue_args
    sig = Signature.from_json(pub.body)
    assert sig.uuid == uuid and sig.eta is not None
    return sig.eta.timestamp()


def _check_python_sqs_delay(run: D1, uuid: str, countdown: float) -> float:
    """Python sent the delayed task as Go would: one SendMessage with ``DelaySeconds`` = the
    whole seconds left (truncated); returns the JSON's ETA."""
    (send,) = run.sends[uuid]
    assert send.client == "python" and send.queue_url == run.stack.queue_url(), send
    assert send.delay in (int(countdown) - 1, int(countdown)), send
    sig = Signature.from_json(send.body)
    assert sig.uuid == uuid and sig.eta is not None
    return sig.eta.timestamp()


@pytest.mark.matrix(PY_TO_GO, "ETA: countdown, scheduled by Python, run when due by Go "
                              "(Redis: delayed_tasks moved by Go; AMQP: delay queue; SQS: "
                              "DelaySeconds)")
def test_eta_countdown(d1: D1) -> None:
    res = d1.sent["countdown"]
    if d1.stack.pubsub_broker:
        _check_pubsub_eta_ignored_by_go(d1, res.id, d1.sent_at[res.id] + d1.countdown)
        assert d1.outcome[res.id] == 42
        return
    if d1.stack.sqs_broker:
        eta = _check_python_sqs_delay(d1, res.id, d1.countdown)
    elif d1.stack.amqp_broker:
        eta = _check_python_delay(d1, res.id, int(d1.countdown * 1000))
    else:
        body, score = d1.delayed[res.id]
        sig = Signature.from_json(body)
        assert sig.eta is not None
        eta = sig.eta.timestamp()
        # Python scheduled it exactly as Go would: score = ETA in Unix ns
        assert abs(score - sig.eta.unix_ns) < 1024, (score, sig.eta.unix_ns)
        assert body.decode().count('"ETA":"') == 1 and sig.eta.isoformat().endswith("Z")
    # ETA = now + countdown
    assert 0 <= eta - d1.sent_at[res.id] - d1.countdown < 0.5
    ev = d1.one_go_task(res.id)
    assert ev["eta"] is not None and abs(parse_go_time(ev["eta"]) - eta) < 1e-6, ev["eta"]
    ran = parse_go_time(ev["ts"])
    early, late = slack(d1.stack)
    assert -early <= ran - eta < late, (ran, eta)
    assert d1.outcome[res.id] == 42
    _go_read_is(d1, res.id, [("int64", Num("42"))])
    assert d1.states[res.id] == SUCCESS_STATES


@pytest.mark.matrix(PY_TO_GO, "ETA with a +02:00 offset (kept as given)")
def test_eta_offset(d1: D1) -> None:
    res = d1.sent["eta_offset"]
    eta = d1.etas["eta_offset"]
    if d1.stack.pubsub_broker:
        ev = _check_pubsub_eta_ignored_by_go(d1, res.id, eta.timestamp())
        assert ev["eta"].endswith("+02:00"), ev["eta"]  # Go decoded and kept the offset
        assert d1.outcome[res.id] == "eta+02:00"
        return
    if d1.stack.sqs_broker:
        (send,) = d1.sends[res.id]
        body = send.body
        assert send.delay in (0, 1), send
    elif d1.stack.amqp_broker:
        (pub,) = d1.delay_publishes[res.id]
        body = pub.body
        ms, _ = delay_queue(pub.routing_key)  # type: ignore[misc]
        _check_python_delay(d1, res.id, ms)  # name, arguments, properties
        assert 0 <= eta.timestamp() - d1.sent_at[res.id] - ms / 1000 < 0.5
    else:
        body, score = d1.delayed[res.id]
        assert abs(score / 1e9 - eta.timestamp()) < 1e-6
    text = Signature.from_json(body).eta
    assert text is not None and text.isoformat().endswith("+02:00"), text
    ev = d1.one_go_task(res.id)
    assert ev["eta"].endswith("+02:00"), ev["eta"]  # Go decoded and kept the offset
    assert abs(parse_go_time(ev["eta"]) - eta.timestamp()) < 1e-6
    assert parse_go_time(ev["ts"]) >= eta.timestamp() - slack(d1.stack)[0]
    assert d1.outcome[res.id] == "eta+02:00"
    _go_read_is(d1, res.id, [("string", "eta+02:00")])


def _check_pubsub_eta_ignored_by_go(run: D1, uuid: str, eta: float) -> dict[str, Any]:
    """Pub/Sub (§5.4): Python publishes a task with an ETA at once (Go's publisher would block
    until the ETA) and a Go worker, which never looks at ETAs, runs it on delivery: before
    its ETA (a Python worker holds it until due: tests/integration/test_pubsub_broker.py)."""
    ev = run.one_go_task(uuid)
    assert ev["eta"] is not None and abs(parse_go_time(ev["eta"]) - eta) < 0.5, ev["eta"]
    assert parse_go_time(ev["ts"]) < parse_go_time(ev["eta"]), ev
    assert run.states[uuid] == SUCCESS_STATES
    return ev


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
    _go_read_is(d1, cb.id, [("int64", Num("103"))])
    # the Go worker wrote the callback's PENDING (TaskName "add") before publishing it
    assert d1.states[cb.id] == SUCCESS_STATES
    assert d1.state_problems(cb.id, "add", results=b'[{"Type":"int64","Value":103}]',
                             dynamo=[("int64", "103")]) == []


@pytest.mark.matrix(PY_TO_GO, "OnSuccess callback of an Immutable parent: args unchanged")
def test_on_success_immutable(d1: D1) -> None:
    cb = d1.callbacks["on_success_immutable"]
    _ev, raw_args = _callback_run(d1, "on_success_immutable")
    assert raw_args == [_i64(100)]
    assert d1.outcome[cb.id] == 100
    _go_read_is(d1, cb.id, [("int64", Num("100"))])


@pytest.mark.matrix(PY_TO_GO, "OnError callback: error text prepended (§3.6)")
def test_on_error_callback(d1: D1) -> None:
    parent = d1.outcome[d1.sent["on_error"].id]
    assert isinstance(parent, TaskFailed) and parent.error == FAIL_MSG
    cb = d1.callbacks["on_error"]
    _ev, raw_args = _callback_run(d1, "on_error")
    assert raw_args == [{"Name": "", "Type": "string", "Value": FAIL_MSG},
                        {"Name": "", "Type": "string", "Value": "!"}]
    assert d1.outcome[cb.id] == FAIL_MSG + "!"
    _go_read_is(d1, cb.id, [("string", FAIL_MSG + "!")])


# --------------------------------------------------------------------------------------
# unregistered task: a Python worker hands a Go-only task to a Go worker
# --------------------------------------------------------------------------------------


@pytest.mark.kinds(*BROKER_CASE_KINDS)
@pytest.mark.matrix(PY_TO_GO, "unregistered task handed over to a worker that has it")
def test_unregistered_handoff(flavour: str, go_bins: Path, new_stack: Callable[[str], Stack],
                              caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """Go-only tasks reach a Python worker first (it registers only ``py_only``); it hands
    them back (Redis: pushed back to the queue; AMQP: rejected with requeue), and once a Go
    worker consumes the same queue too, Go runs each exactly once."""
    caplog.set_level(logging.INFO, logger="machinery_compat")
    st = new_stack("h1")
    py = stack_app(st, only={"py_only"})
    pyworker = py.app.worker(concurrency=2, poll_timeout=st.poll_timeout,
                             delayed_poll_interval=0.05).start()
    go: GoWorker | None = None

    def handed_back(name: str) -> bool:
        return any(name in r.getMessage()
                   and re.search(r"not registered", r.getMessage(), re.I) is not None
                   for r in caplog.records)

    try:
        r1 = py.app.send_task("multiply", args=[6, 7])
        r2 = py.app.send_task("echo_int16", args=[Arg("int16", -32768)])
        wait_for(lambda: handed_back("multiply") and handed_back("echo_int16"),
                 what="the Python worker to hand both Go-only tasks back")
        go = st.go_worker(log_dir=tmp_path).start()
        # on SQS each hand-back makes the message visible again after a 1-2 s visibility
        # change, and a poll (moto's long polls see only messages visible when they start) by
        # either worker may take it: Go wins one such race in a few on a loaded machine, and
        # once in CI lost every race for 60 s (v1, DynamoDB backend): 120 s
        wait = 120 if st.sqs_broker else 20
        assert [e["results"] for e in go.wait_tasks(r1.id, timeout=wait)] == [[42]]
        assert [e["results"] for e in go.wait_tasks(r2.id, timeout=wait)] == [[-32768]]
        assert py.executions.snapshot() == []
        assert r1.get(timeout=20) == 42
        assert r2.get(timeout=20) == -32768
        if st.dynamodb_backend:  # Go reads only strings from DynamoDB
            lines = st.produce([{"read": r1.id}, {"read": r2.id}])
            assert [o["error"] for o in lines] == ["42 is not int64", "-32768 is not int16"]
        elif not st.consuming_reads:  # (on the AMQP backend Python's read consumed them)
            lines = st.produce([{"read": r1.id}, {"read": r2.id}])
            assert [(r["go_type"], r["exact"]) for r in lines[0]["results"]] == [
                ("int64", Num("42"))]
            assert [(r["go_type"], r["exact"]) for r in lines[1]["results"]] == [
                ("int16", Num("-32768"))]
    finally:
        pyworker.stop(timeout=10)
        py.close()
        if go is not None:
            go.stop()


# --------------------------------------------------------------------------------------
# priority (AMQP): an x-max-priority queue, highest Priority first
# --------------------------------------------------------------------------------------

#: One task per priority, sent in this order while no worker consumes the queue.
PRIORITIES = [3, 0, 9, 1, 7, 5, 2, 8, 4, 6]


@pytest.mark.kinds(*BROKER_CASE_KINDS)
@pytest.mark.matrix(PY_TO_GO, "priority: x-max-priority queue (queue_declare_args), highest "
                              "Priority run first")
@pytest.mark.skip_on("redis", reason="Machinery's Redis broker has no priorities: Priority is "
                                     "carried in the JSON and ignored (one FIFO list)")
@pytest.mark.skip_on("sqs+dynamodb", reason="SQS has no message priorities: Machinery's SQS "
                                            "broker sends Priority in the JSON only, and "
                                            "queues deliver in their own order")
@pytest.mark.skip_on("pubsub+redis", reason="Pub/Sub has no message priorities: Machinery's "
                                            "Pub/Sub broker sends Priority in the JSON only")
def test_priority(flavour: str, go_bins: Path, new_stack: Callable[[str], Stack],
                  tmp_path: Path) -> None:
    """Python sends one task per priority 0-9 in a shuffled order to an ``x-max-priority``
    queue nobody consumes yet; a Go worker (concurrency 1, prefetch 1) then runs them
    highest first.  Python declared the queue with Go's argument type (``I``, as
    ``queue_declare_args: {x-max-priority: 10}`` from YAML gives Go) and published the
    Priority as the message's priority property, absent when 0, as Go does."""
    st = new_stack("prio").with_options(queue_declare_args={"x-max-priority": 10},
                                        prefetch_count=1)
    obs = st.observer()
    py = stack_app(st, only=())
    go: GoWorker | None = None
    try:
        sent = [py.app.send_task("add", args=[p, 1000], priority=p) for p in PRIORITIES]
        assert st.queue_arguments([st.queue]) == {st.queue: [["x-max-priority", "signedint", 10]]}
        assert st.queue_depth() == len(PRIORITIES)
        go = st.go_worker(concurrency=1, log_dir=tmp_path).start()
        assert [r.get(timeout=20) for r in sent] == [p + 1000 for p in PRIORITIES]
        priority = {r.id: p for r, p in zip(sent, PRIORITIES, strict=True)}
        ran = [priority[e["uuid"]] for e in go.tasks()]
        assert ran == sorted(PRIORITIES, reverse=True), ran
        obs.stop()
        assert obs.tap is not None
        for r, p in zip(sent, PRIORITIES, strict=True):
            (pub,) = obs.tap.task_messages(r.id)
            assert (pub.routing_key, pub.routed_queues) == (st.queue, (st.queue,)), pub
            assert Signature.from_json(pub.body).priority == p
            # Priority as the message property, absent when 0, as Go publishes it
            assert pub.properties == task_properties(pub.body), pub
            assert pub.properties.get("priority") == (p or None), pub
    finally:
        obs.stop()
        py.close()
        if go is not None:
            go.stop()


# --------------------------------------------------------------------------------------
# SQS only: delays beyond 15 minutes, FIFO queues, the visibility heartbeat
# --------------------------------------------------------------------------------------

#: The longest delay the Python producer sends in this test (SQS's is 900 s).
SHORT_MAX_DELAY = 2


@pytest.mark.kinds("sqs+dynamodb")
@pytest.mark.matrix(PY_TO_GO, "SQS delay beyond 15 minutes: Python sends SQS's longest delay "
                              "(shortened to 2 s here), a Go worker runs it when it arrives, "
                              "before its ETA (Go ignores ETAs)")
def test_delay_beyond_15_minutes(flavour: str, go_bins: Path,
                                 new_stack: Callable[[str], Stack], tmp_path: Path) -> None:
    """Go refuses an ETA more than 15 minutes ahead (Go→Py cell); the Python producer sends
    it with the longest delay SQS allows (900 s; here the broker's ``max_delay`` is set to
    2 s so the test does not wait 15 minutes: the Python side has no config key for it) and
    a Python worker would hand it back until due.  A Go worker ignores ETAs: it runs the
    task as soon as it receives it, 16 minutes early."""
    st = new_stack("long")
    obs = st.observer()
    py = stack_app(st, only=())
    py.app.broker.max_delay = SHORT_MAX_DELAY  # type: ignore[attr-defined]
    go = st.go_worker(log_dir=tmp_path).start()
    try:
        eta = datetime.now(UTC) + timedelta(minutes=16)
        before = time.time()
        res = py.app.send_task("add", args=[20, 22], eta=eta)
        (ev,) = go.wait_tasks(res.id, timeout=20)
        assert res.get(timeout=10) == 42
    finally:
        obs.stop()
        go.stop()
        py.close()
    assert obs.aws is not None
    (send,) = obs.aws.sends(res.id)
    assert (send.client, send.delay, send.queue_url) == (
        "python", SHORT_MAX_DELAY, st.queue_url()), send
    ran = parse_go_time(ev["ts"])
    assert ran - before >= SHORT_MAX_DELAY - 0.05, (ran, before)  # not before the delay
    assert ev["eta"] is not None
    assert parse_go_time(ev["eta"]) - ran > 15 * 60, ev  # ... but a quarter of an hour early


@pytest.mark.kinds("sqs+dynamodb")
@pytest.mark.matrix(PY_TO_GO, "SQS FIFO queue: Python sends MessageGroupId = "
                              "BrokerMessageGroupId, the Go worker keeps the group's order; "
                              "Go's second retry is dropped by SQS (deduplication id = UUID)")
def test_fifo(flavour: str, go_bins: Path, new_stack: Callable[[str], Stack],
              tmp_path: Path) -> None:
    """Python sends five tasks of one group to a ``.fifo`` queue (its deduplication id: the
    body's SHA-256; the ETA of one is ignored, as Go does) and refuses one without a group
    (Go's error text).  The Go worker runs the group in order.  A ``fail_n_times`` task
    (fails twice, RetryCount 3): Go re-sends each retry with the task UUID as deduplication
    id — SQS takes the first, and drops the second as a duplicate sent within 5 minutes, so
    the task stays PENDING after its second attempt (Machinery's FIFO design, §5.3)."""
    base = new_stack("fifo")
    st = base.with_options(queue=base.queue + ".fifo")
    obs = st.observer()
    py = stack_app(st, only=())
    go = st.go_worker(log_dir=tmp_path).start()
    try:
        sent = [py.app.send_task("concat", args=[f"m{i}"], broker_message_group_id="g1",
                                 **({"countdown": 3} if i == 1 else {})) for i in range(5)]
        with pytest.raises(Exception, match="please specify BrokerMessageGroupId attribute"):
            py.app.send_task("concat", args=["x"])
        retry = py.app.send_task("fail_n_times", args=[f"fifo-{st.queue}", 2], retry_count=3,
                                 broker_message_group_id="g2")
        assert [r.get(timeout=20) for r in sent] == [f"m{i}" for i in range(5)]
        go.wait_tasks(retry.id, count=2, timeout=20)
        time.sleep(3)  # the dropped retry does not come
        assert [e["retry_count"] for e in go.tasks(retry.id)] == [3, 2]
        assert retry.state == "PENDING"
    finally:
        obs.stop()
        go.stop()
        py.close()
    ran = [e["uuid"] for e in go.tasks(name="concat")]
    assert ran == [r.id for r in sent]
    assert obs.aws is not None
    for r in sent:
        (send,) = obs.aws.sends(r.id)
        assert (send.client, send.group_id, send.delay) == ("python", "g1", None), send
        assert send.dedup_id is not None and len(send.dedup_id) == 64, send
    sends = obs.aws.sends(retry.id)
    assert [s.client.split("-")[0] for s in sends] == ["python", "go", "go"], sends
    assert [s.dedup_id for s in sends[1:]] == [retry.id, retry.id], sends
    assert obs.states(retry.id)[-1] == "PENDING"


HEARTBEAT_VISIBILITY = 2  # s; the task runs 3x as long


@pytest.mark.kinds("sqs+dynamodb")
@pytest.mark.matrix(PY_TO_GO, "SQS visibility heartbeat: a task running 3x the visibility "
                              "timeout runs once on Go v2 (VisibilityHeartBeat: two "
                              "ChangeMessageVisibility loops); v1 has none: a second worker "
                              "runs it again")
def test_visibility_heartbeat(flavour: str, go_bins: Path, new_stack: Callable[[str], Stack],
                              tmp_path: Path) -> None:
    """Two Go workers (concurrency 1) receive with ``VisibilityTimeout`` 2 s; a 6 s task.  v2
    with ``VisibilityHeartBeat``: every second (half the timeout) it extends the message's
    visibility — twice, the loop being duplicated in Machinery — and the task runs once.  v1
    has no heartbeat: the message comes back after 2 s and the other worker runs it too."""
    heartbeat = flavour != "v1"
    st = new_stack("hb").with_options(sqs_visibility_timeout=HEARTBEAT_VISIBILITY,
                                      sqs_heartbeat=heartbeat)
    obs = st.observer()
    py = stack_app(st, only=())
    gos = [st.go_worker(concurrency=1, log_dir=tmp_path, tag=f"hb{i}-{st.queue}").start()
           for i in range(2)]
    try:
        res = py.app.send_task("sleep", args=[3000 * HEARTBEAT_VISIBILITY])
        assert res.get(timeout=30) == 3000 * HEARTBEAT_VISIBILITY
        if not heartbeat:
            wait_for(lambda: sum(len(g.tasks(res.id)) for g in gos) >= 2, 20,
                     "the second run")
        time.sleep(HEARTBEAT_VISIBILITY + 1.5)  # a redelivery would show up by now
    finally:
        obs.stop()
        for g in gos:
            g.stop()
        py.close()
    runs = [e for g in gos for e in g.tasks(res.id)]
    assert obs.aws is not None
    beats = [c for c in obs.aws.calls("ChangeMessageVisibility", "sqs") if c.client == "go-v2"]
    if heartbeat:
        assert len(runs) == 1, runs
        # every second for ~6 s, two loops: 2 calls per tick
        assert 8 <= len(beats) <= 14, len(beats)
        assert {int(c.params["VisibilityTimeout"]) for c in beats} == {HEARTBEAT_VISIBILITY}
    else:
        assert len(runs) == 2 and len({e["tag"] for e in runs}) == 2, runs
        assert beats == []
