"""The producer writes exactly what Go's SendTask writes (protocol notes §12.1), on every broker
and backend.  Redis-only details (MONITOR order, TTLs, outages) are in
tests/integration/test_redis_layout.py.

Run both ways (sync API and app.aio, marker ``both_apis``, the aio variant on redis,
amqp+redis, amqp and redis-sentinel, where the test's kinds include them): test_send_task_pushes_go_bytes_and_pending_first,
test_eta_goes_to_delayed_tasks_due_in_nanoseconds, test_async_result_reads_go_written_states,
test_get_timeout (they send and read through the ``producer`` fixture)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated

import pytest

from machinery_compat import (
    Arg,
    EncodeError,
    GoTime,
    GoType,
    Machinery,
    Signature,
    TaskFailed,
)
from tests.helpers import GOLDEN_BODY, UUID

from ._aio_driver import Producer
from .conftest import Probe

PENDING_RE = re.compile(
    rb'\{"TaskUUID":"task_7e0b7c39-3d0c-4b5e-9e1a-2f7d5c1b8a90","TaskName":"add","State":"PENDING",'
    rb'"Results":null,"Error":"","CreatedAt":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?Z)","TTL":0\}\Z'
)


@pytest.mark.mixed
@pytest.mark.both_apis
def test_send_task_pushes_go_bytes_and_pending_first(app: Machinery, probe: Probe,
                                                     producer: Producer) -> None:
    before = time.time()
    res = producer.send_task("add", args=[1, 1], task_id=UUID)
    assert res.id == UUID
    assert probe.messages() == [GOLDEN_BODY]
    pending = probe.state_bytes(UUID)
    assert pending is not None
    m = PENDING_RE.match(pending)
    assert m, pending
    created = GoTime.parse(m.group(1).decode())
    assert before - 1 < created.timestamp() < time.time() + 1
    assert res.state == "PENDING"
    assert not res.ready()


def test_generated_ids_and_default_headers(app: Machinery, probe: Probe) -> None:
    res = app.send_task("add", args=[2])
    assert re.fullmatch(r"task_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", res.id)
    sig = Signature.from_json(probe.messages()[0])
    assert sig.headers == {} and sig.uuid == res.id and sig.routing_key == "machinery_tasks"


def test_queue_option_and_options_on_the_wire(app: Machinery, probe: Probe) -> None:
    app.send_task("multiply", args=[Arg("int32", 5), 2.5, "x", True, b"hi", [1, 2], ["a"]],
                  queue="other", priority=3, headers={"trace": "t1"}, retry_count=2,
                  retry_timeout=4, immutable=True, ignore_when_task_not_registered=True)
    assert probe.messages() == []
    (raw,) = probe.messages("other")
    assert b'"Args":[{"Name":"","Type":"int32","Value":5},{"Name":"","Type":"float64","Value":2.5},' in raw
    assert b'{"Name":"","Type":"string","Value":"x"},{"Name":"","Type":"bool","Value":true},' in raw
    assert b'{"Name":"","Type":"[]byte","Value":"aGk="},{"Name":"","Type":"[]int64","Value":[1,2]},' in raw
    assert b'{"Name":"","Type":"[]string","Value":["a"]}]' in raw
    assert b'"Headers":{"trace":"t1"},"Priority":3,"Immutable":true,"RetryCount":2,"RetryTimeout":4,' in raw
    assert raw.endswith(b'"IgnoreWhenTaskNotRegistered":true}')
    assert b'"RoutingKey":"other"' in raw


@pytest.mark.mixed
@pytest.mark.both_apis
def test_eta_goes_to_delayed_tasks_due_in_nanoseconds(app: Machinery, probe: Probe,
                                                      producer: Producer) -> None:
    eta = GoTime.now().add_seconds(30)
    eta = GoTime(eta.unix_ns - eta.unix_ns % 1000 + 789)  # nanoseconds that datetime cannot hold
    producer.send_task("add", args=[1], task_id="task_eta", eta=eta)
    assert probe.messages() == []
    ((body, due),) = probe.delayed()
    assert abs(due - eta.unix_ns) < 1000  # a Redis score is a double: ~256 ns of precision
    assert f'"ETA":"{eta.isoformat()}"'.encode() in body
    assert eta.isoformat().endswith("789Z")
    assert [s.uuid for s in app.broker.delayed_tasks()] == ["task_eta"]


def test_countdown_and_datetime_eta(app: Machinery, probe: Probe) -> None:
    now = time.time_ns()
    app.send_task("add", args=[1], countdown=5)
    app.send_task("add", args=[1], eta=datetime.now(UTC) + timedelta(seconds=10))
    scores = sorted(due for _, due in probe.delayed())
    assert 4.5e9 < scores[0] - now < 6e9
    assert 9.5e9 < scores[1] - now < 11e9
    # an ETA in the past is published at once, as Go does
    app.send_task("add", args=[1], eta=datetime.now(UTC) - timedelta(seconds=1))
    assert len(probe.messages()) == 1


def test_out_of_range_and_uninferable_args_refused_before_anything_is_sent(
    app: Machinery, probe: Probe
) -> None:
    with pytest.raises(EncodeError, match="out of range for Go type int8"):
        app.send_task("add", args=[Arg("int8", 300)])
    with pytest.raises(EncodeError, match="out of range for Go type uint64"):
        app.send_task("add", args=[Arg("uint64", -1)])
    with pytest.raises(EncodeError, match="cannot infer a Go type"):
        app.send_task("add", args=[{"a": 1}])
    with pytest.raises(EncodeError, match="NaN"):
        app.send_task("add", args=[float("nan")])
    with pytest.raises(EncodeError, match="not one of supported types"):
        app.send_task("add", args=[Arg("map[string]int", {})])
    assert probe.messages() == [] and probe.delayed() == []


def test_type_hints_pin_arg_types(app: Machinery, probe: Probe) -> None:
    @app.task(name="scale")
    def scale(x: float, factor: Annotated[int, GoType("int32")], *rest: int) -> float:
        return x * factor

    scale.delay(2, 3, 4)
    (raw,) = probe.messages()
    assert (b'"Args":[{"Name":"","Type":"float64","Value":2},{"Name":"","Type":"int32","Value":3},'
            b'{"Name":"","Type":"int64","Value":4}]') in raw


@pytest.mark.mixed
@pytest.mark.both_apis
def test_async_result_reads_go_written_states(app: Machinery, probe: Probe,
                                              producer: Producer) -> None:
    probe.put_state_bytes("task_multi", b'{"TaskUUID":"task_multi","TaskName":"multi_return","State":"SUCCESS",'
                          b'"Results":[{"Type":"int64","Value":42},{"Type":"string","Value":"answer"},'
                          b'{"Type":"bool","Value":true}],"Error":"","CreatedAt":"0001-01-01T00:00:00Z","TTL":0}')
    probe.put_state_bytes("task_none", b'{"TaskUUID":"task_none","TaskName":"only_error","State":"SUCCESS",'
                          b'"Results":[],"Error":"","CreatedAt":"0001-01-01T00:00:00Z","TTL":0}')
    probe.put_state_bytes("task_bad", b'{"TaskUUID":"task_bad","TaskName":"fail","State":"FAILURE",'
                          b'"Results":null,"Error":"boom","CreatedAt":"0001-01-01T00:00:00Z","TTL":0}')
    probe.put_state_bytes("task_bytes", b'{"TaskUUID":"task_bytes","State":"SUCCESS","Results":[{"Type":"[]uint8",'
                          b'"Value":"aGk="},{"Type":"uint64","Value":18446744073709551615}],"CreatedAt":"0001-01-01T00:00:00Z"}')
    assert producer.AsyncResult("task_multi").get(timeout=1) == (42, "answer", True)
    assert producer.AsyncResult("task_none").get(timeout=1) is None
    assert producer.AsyncResult("task_bytes").get(timeout=1) == (b"hi", 18446744073709551615)
    with pytest.raises(TaskFailed, match="boom") as info:
        producer.AsyncResult("task_bad").get(timeout=1)
    assert info.value.task_id == "task_bad"
    bad = producer.AsyncResult("task_bad")
    assert isinstance(bad.get(timeout=1, propagate=False), TaskFailed)
    assert bad.failed() and bad.ready() and not bad.successful() and bad.error == "boom"
    multi = producer.AsyncResult("task_multi")
    assert [(r.type, r.python_value) for r in multi.results or []] == [
        ("int64", 42), ("string", "answer"), ("bool", True)]


@pytest.mark.both_apis
def test_get_timeout(app: Machinery, producer: Producer) -> None:
    from machinery_compat import ResultTimeout

    res = producer.send_task("nobody_runs_this", args=[])
    with pytest.raises(ResultTimeout, match="last state: PENDING"):
        res.get(timeout=0.2)


def test_pending_tasks_inspection(app: Machinery) -> None:
    a = app.send_task("add", args=[1])
    b = app.send_task("add", args=[2], queue="q2")
    assert [s.uuid for s in app.broker.pending_tasks()] == [a.id]
    assert [s.uuid for s in app.broker.pending_tasks("q2")] == [b.id]
