"""What a Celery user reaches for first: options, keyword arguments, ETAs, argument types,
retries counted Celery's way, and the worker's warnings — run over every broker/backend kind."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from machinery_compat import (
    EncodeError,
    Machinery,
    Signature,
    TaskFailed,
    TaskResult,
    TaskState,
    UnsupportedOption,
)
from machinery_compat.options import REFUSED

from .conftest import Probe, StartWorker, wait_for


def _register(app: Machinery) -> None:
    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    @app.task(name="power")
    def power(base: int, exp: int = 2) -> int:
        return int(base ** exp)

    @app.task(name="record")
    def record(*values: str) -> str:
        return "|".join(values)

    @app.task(name="boom")
    def boom(x: int) -> int:
        raise ValueError(f"boom {x}")


def _sent(probe: Probe, queue: str = "machinery_tasks") -> Signature:
    return Signature.from_json(probe.messages(queue)[-1])


# -- options Machinery cannot carry ----------------------------------------------------------

@pytest.mark.kinds("memory")
@pytest.mark.parametrize("option", sorted(REFUSED))
def test_refused_options_name_the_option_and_the_reason(app: Machinery, option: str) -> None:
    _register(app)
    add = app.tasks["add"]
    calls = {
        "apply_async": lambda: add.apply_async(args=[1], **{option: 1}),
        "send_task": lambda: app.send_task("add", args=[1], **{option: 1}),
        "set": lambda: add.s(1).set(**{option: 1}),
        "@app.task": lambda: app.task(name="other", **{option: 1})(lambda: None),
    }
    for where, call in calls.items():
        if option == "kwargs" and where in ("apply_async", "send_task"):
            continue  # task arguments there, tested below
        with pytest.raises(UnsupportedOption) as info:
            call()
        assert info.value.option == option, where
        assert f"option {option!r} is not supported: {REFUSED[option]}" in str(info.value)
        assert "build_signature" not in str(info.value)
        assert isinstance(info.value, TypeError)  # what Python raises for a bad keyword
    assert app.broker.pending_tasks() == []  # nothing was sent


@pytest.mark.kinds("memory")
def test_unknown_option_lists_the_known_ones(app: Machinery) -> None:
    _register(app)
    with pytest.raises(UnsupportedOption, match=r"'colour' is not supported: it is not an option "
                                                r"here \(known: .*countdown.*routing_key"):
        app.send_task("add", args=[1], colour="blue")


def test_routing_key_is_the_queue(app: Machinery, probe: Probe) -> None:
    _register(app)
    app.send_task("add", args=[1], routing_key="elsewhere")
    assert _sent(probe, "elsewhere").routing_key == "elsewhere"
    app.tasks["add"].apply_async(args=[1], routing_key="q2", queue="q2")
    assert _sent(probe, "q2").routing_key == "q2"
    with pytest.raises(UnsupportedOption, match="both set Machinery's RoutingKey"):
        app.send_task("add", args=[1], routing_key="a", queue="b")


def test_link_and_link_error_become_callbacks(
    app: Machinery, probe: Probe, start_worker: StartWorker
) -> None:
    _register(app)
    add, record = app.tasks["add"], app.tasks["record"]
    ok = add.apply_async(args=[1, 2], link=record.si("linked"))
    sent = _sent(probe)
    assert [cb.name for cb in sent.on_success or []] == ["record"]
    assert sent.immutable  # si(): Machinery reads the flag from the finishing task
    with pytest.raises(UnsupportedOption, match=r"only \.s\(\) or only \.si\(\) signatures"):
        add.apply_async(args=[1], link=[record.si("a"), record.s("b")])
    failed = app.tasks["boom"].apply_async(args=[7], link_error=[record.s("errback")])
    sent = _sent(probe)
    assert [cb.name for cb in sent.on_error or []] == ["record"]
    on_success_id = Signature.from_json(probe.messages()[0]).on_success[0].uuid  # type: ignore[index]
    on_error_id = sent.on_error[0].uuid  # type: ignore[index]
    start_worker()
    assert ok.get(timeout=10) == 3
    with pytest.raises(TaskFailed):
        failed.get(timeout=10)
    assert app.AsyncResult(on_success_id).get(timeout=10) == "linked"
    # Machinery's OnError: the error text first, then the callback's own args
    assert app.AsyncResult(on_error_id).get(timeout=10) == "boom 7|errback"


def test_link_on_a_chain_step_runs_beside_the_next_step(
    app: Machinery, start_worker: StartWorker
) -> None:
    _register(app)
    add, record = app.tasks["add"], app.tasks["record"]
    side = record.si("side")
    steps = add.s(1, 1).set(link=side) | add.s(5)
    sigs = steps.to_signatures()
    assert [cb.name for cb in sigs[0].on_success or []] == ["add", "record"]
    start_worker()
    assert steps.apply_async().get(timeout=10) == 7


def test_expires_in_the_past_is_not_run(
    app: Machinery, probe: Probe, start_worker: StartWorker
) -> None:
    runs: list[int] = []

    @app.task(name="note")
    def note(x: int) -> int:
        runs.append(x)
        return x

    late = note.apply_async(args=[1], expires=datetime.now(UTC) - timedelta(seconds=1))
    header = _sent(probe).headers["expires"]  # type: ignore[index]
    assert datetime.fromisoformat(header) < datetime.now(UTC)
    fine = note.apply_async(args=[2], expires=60)
    assert datetime.fromisoformat(_sent(probe).headers["expires"]) > datetime.now(UTC)  # type: ignore[index]
    start_worker()
    assert fine.get(timeout=10) == 2
    with pytest.raises(TaskFailed, match=r"^task expired at .*, not run$"):
        late.get(timeout=10)
    assert runs == [2]


@pytest.mark.kinds("memory")
def test_expires_set_on_the_task_is_counted_from_each_send(app: Machinery, probe: Probe) -> None:
    @app.task(name="short_lived", expires=30)
    def short_lived() -> None: ...

    short_lived.delay()
    first = datetime.fromisoformat(_sent(probe).headers["expires"])  # type: ignore[index]
    time.sleep(0.05)
    short_lived.delay()
    second = datetime.fromisoformat(_sent(probe).headers["expires"])  # type: ignore[index]
    assert second > first
    assert timedelta(seconds=29) < first - datetime.now(UTC) <= timedelta(seconds=30)


# -- keyword arguments -------------------------------------------------------------------------

@pytest.mark.kinds("memory")
def test_kwargs_are_mapped_to_positions(app: Machinery, probe: Probe) -> None:
    _register(app)
    power = app.tasks["power"]
    power.delay(exp=3, base=2)
    assert [a.python_value for a in _sent(probe).args or []] == [2, 3]
    power.apply_async(args=[5], kwargs={"exp": 4})
    assert [a.python_value for a in _sent(probe).args or []] == [5, 4]
    power.delay(base=7)  # a trailing default is left to the function
    assert [a.python_value for a in _sent(probe).args or []] == [7]
    app.send_task("power", kwargs={"base": 3, "exp": 3})  # registered here: order known
    assert [a.python_value for a in _sent(probe).args or []] == [3, 3]
    assert [a.value for a in power.s(2, exp=5).args] == [2, 5]


@pytest.mark.kinds("memory")
def test_kwargs_that_cannot_be_placed_are_refused(app: Machinery) -> None:
    _register(app)
    power = app.tasks["power"]
    with pytest.raises(EncodeError, match=r"'go_only' is not registered in this app, so the "
                                          r"order of its parameters is unknown; pass args="):
        app.send_task("go_only", kwargs={"x": 1})
    with pytest.raises(EncodeError, match="unexpected keyword argument 'colour'"):
        power.delay(2, colour=1)  # type: ignore[call-arg]
    with pytest.raises(EncodeError, match=r"parameter 'base' before them is not given \(in a "
                                          r"canvas signature, results of the previous task"):
        power.s(exp=3)  # the previous result would land in `base`'s place... after `exp`
    with pytest.raises(EncodeError, match=r"task_id: sending option\(s\), not task arguments: "
                                          r"use \.s\(\.\.\.\)\.set\(task_id=\.\.\.\)"):
        power.s(2, task_id="task_x")

    @app.task(name="kw")
    def kw(a: int, **extra: int) -> int:
        return a

    with pytest.raises(EncodeError, match=r"\*\*extra cannot be sent"):
        kw.delay(1, b=2)

    @app.task(name="kwonly")
    def kwonly(a: int, *, b: int = 0) -> int:
        return a + b

    with pytest.raises(EncodeError, match="keyword-only parameter 'b' cannot be sent"):
        kwonly.delay(1, b=2)


def test_kwargs_run_on_a_worker(app: Machinery, start_worker: StartWorker) -> None:
    _register(app)
    start_worker()
    assert app.tasks["power"].delay(exp=3, base=2).get(timeout=10) == 8


# -- ETA -----------------------------------------------------------------------------------------

@pytest.fixture
def tokyo_time() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.mark.kinds("memory")
def test_a_naive_eta_is_local_time(app: Machinery, probe: Probe, tokyo_time: None) -> None:
    _register(app)
    naive = datetime.now() + timedelta(seconds=30)  # Tokyo wall-clock time, no tzinfo
    app.send_task("add", args=[1], eta=naive)
    body, due_ns = probe.delayed()[0]
    eta = Signature.from_json(body).eta
    assert eta is not None
    due = datetime.fromtimestamp(due_ns / 1e9, UTC)
    # 30 s from now, not 9 hours later (which reading it as UTC would give)
    assert timedelta(seconds=25) < due - datetime.now(UTC) <= timedelta(seconds=30)
    assert b'"ETA":"' in body and eta.to_datetime().utcoffset() == timedelta(0)  # sent as UTC


# -- argument types ----------------------------------------------------------------------------

@pytest.mark.kinds("memory")
@pytest.mark.parametrize(("value", "advice"), [
    ({"a": 1}, "json.dumps"),
    (None, "no null argument"),
    (datetime(2026, 1, 1), "isoformat()"),
    (__import__("decimal").Decimal("1.5"), "str(value)"),
    (__import__("uuid").UUID(int=1), "send str(value)"),
    ({1, 2}, "sorted(value)"),
    (object(), "Arg('<go type>', value)"),
])
def test_unsupported_argument_types_say_what_to_do(app: Machinery, value: Any, advice: str) -> None:
    _register(app)
    with pytest.raises(EncodeError) as info:
        app.send_task("add", args=[value])
    text = str(info.value)
    assert advice in text
    assert "int16" not in text and "uint32" not in text  # not a list of all 29 type names
    assert app.broker.pending_tasks() == []


# -- retries, Celery's way ---------------------------------------------------------------------

def test_request_retries_counts_retries_done_also_those_of_go_workers(
    app: Machinery, probe: Probe, start_worker: StartWorker
) -> None:
    seen: list[tuple[int, int]] = []

    @app.task(name="counted", bind=True, max_retries=5)
    def counted(self: Any) -> int:
        seen.append((self.request.retries, self.request.retries_left))
        return int(self.request.retries)

    # a message a Go worker retried twice: RetryCount 3 of the task's 5 left, no header
    sig = counted.signature(retry_count=3)
    sig.uuid = "task_go-retried"
    app.backend.set_state_pending(sig)
    probe.push("machinery_tasks", sig.to_json())
    start_worker()
    assert app.AsyncResult(sig.uuid).get(timeout=10) == 2
    assert seen == [(2, 3)]


# -- results -------------------------------------------------------------------------------------

def test_task_result_values_are_plain_python(app: Machinery, probe: Probe) -> None:
    body = (b'{"TaskUUID":"task_r","TaskName":"x","State":"SUCCESS","Results":['
            b'{"Type":"int64","Value":18446744073709551},{"Type":"[]byte","Value":"aGk="},'
            b'{"Type":"float32","Value":0.1}],"Error":"","CreatedAt":"0001-01-01T00:00:00Z","TTL":0}')
    probe.put_state_bytes("task_r", body)
    results = app.AsyncResult("task_r").results or []
    assert [(r.type, r.value) for r in results] == [
        ("int64", 18446744073709551), ("[]byte", b"hi"), ("float32", pytest.approx(0.1))]
    assert all(type(r.value) in (int, bytes, float) for r in results)
    # what is forwarded (callbacks, chords) is still the value exactly as received
    state = TaskState(task_uuid="task_r", state="SUCCESS",
                      results=[TaskResult.from_obj(json.loads('{"Type":"float32","Value":0.1}'))])
    assert '"Value":0.1}' in state.to_go_json()


# -- warnings ------------------------------------------------------------------------------------

def test_worker_warnings_a_new_user_needs(
    app: Machinery, probe: Probe, start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    worker_app = Machinery(broker=app.config.broker, result_backend=app.config.result_backend,
                           default_queue="machinery_tasks")
    start_worker(worker_app).stop(timeout=5)
    assert any("has no tasks registered" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)

    def first() -> int:
        return 1

    def second() -> int:
        return 2

    app.task(name="twice")(first)
    app.task(name="twice")(first)  # the same function again (a re-import): no warning
    assert not any("registered twice" in r.getMessage() for r in caplog.records)
    app.task(name="twice")(second)
    assert any("task 'twice' registered twice" in r.getMessage() and "second replaces" in r.getMessage()
               and r.levelno == logging.WARNING for r in caplog.records)

    _register(app)
    app.send_task("ad", args=[1])  # a typo
    start_worker()
    line = wait_for(lambda: next((r.getMessage() for r in caplog.records
                                  if "Task ad is not registered here" in r.getMessage()), None),
                    what="the unregistered-task warning")
    assert "this worker has: did you mean add?" in line
    assert "power" in line
