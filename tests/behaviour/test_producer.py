"""The producer writes exactly what Go's SendTask writes on Redis (protocol notes §12.1)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated

import pytest
import redis

from machinery_compat import (
    Arg,
    EncodeError,
    GoTime,
    GoType,
    Machinery,
    PublishError,
    Signature,
    TaskFailed,
)

UUID = "task_7e0b7c39-3d0c-4b5e-9e1a-2f7d5c1b8a90"
GOLDEN_BODY = (
    b'{"UUID":"task_7e0b7c39-3d0c-4b5e-9e1a-2f7d5c1b8a90","Name":"add","RoutingKey":"machinery_tasks",'
    b'"ETA":null,"GroupUUID":"","GroupTaskCount":0,"Args":[{"Name":"","Type":"int64","Value":1},'
    b'{"Name":"","Type":"int64","Value":1}],"Headers":{},"Priority":0,"Immutable":false,'
    b'"RetryCount":0,"RetryTimeout":0,"OnSuccess":null,"OnError":null,"ChordCallback":null,'
    b'"BrokerMessageGroupId":"","SQSReceiptHandle":"","StopTaskDeletionOnError":false,'
    b'"IgnoreWhenTaskNotRegistered":false}'
)
PENDING_RE = re.compile(
    rb'\{"TaskUUID":"task_7e0b7c39-3d0c-4b5e-9e1a-2f7d5c1b8a90","TaskName":"add","State":"PENDING",'
    rb'"Results":null,"Error":"","CreatedAt":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?Z)","TTL":0\}\Z'
)


def test_send_task_pushes_go_bytes_and_pending_first(app: Machinery, redis_client: redis.Redis) -> None:
    before = time.time()
    res = app.send_task("add", args=[1, 1], task_id=UUID)
    assert res.id == UUID
    assert redis_client.lrange("machinery_tasks", 0, -1) == [GOLDEN_BODY]
    pending = redis_client.get(UUID)
    assert pending is not None
    m = PENDING_RE.match(pending)
    assert m, pending
    created = GoTime.parse(m.group(1).decode())
    assert before - 1 < created.timestamp() < time.time() + 1
    assert 3590 < redis_client.ttl(UUID) <= 3600
    assert res.state == "PENDING"
    assert not res.ready()


def test_generated_ids_and_default_headers(app: Machinery, redis_client: redis.Redis) -> None:
    res = app.send_task("add", args=[2])
    assert re.fullmatch(r"task_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", res.id)
    sig = Signature.from_json(redis_client.lpop("machinery_tasks"))
    assert sig.headers == {} and sig.uuid == res.id and sig.routing_key == "machinery_tasks"


def test_pending_written_before_publish(app: Machinery, redis_client: redis.Redis) -> None:
    with redis_client.monitor() as mon:
        app.send_task("add", args=[1], task_id="task_order")
        cmds = []
        for event in mon.listen():
            cmds.append(event["command"].split()[0].upper())
            if cmds[-1] == "RPUSH":
                break
    assert cmds.index("SET") < cmds.index("RPUSH")


def test_queue_option_and_options_on_the_wire(app: Machinery, redis_client: redis.Redis) -> None:
    app.send_task("multiply", args=[Arg("int32", 5), 2.5, "x", True, b"hi", [1, 2], ["a"]],
                  queue="other", priority=3, headers={"trace": "t1"}, retry_count=2,
                  retry_timeout=4, immutable=True, ignore_when_task_not_registered=True)
    assert redis_client.llen("machinery_tasks") == 0
    raw = redis_client.lpop("other")
    assert raw is not None
    assert b'"Args":[{"Name":"","Type":"int32","Value":5},{"Name":"","Type":"float64","Value":2.5},' in raw
    assert b'{"Name":"","Type":"string","Value":"x"},{"Name":"","Type":"bool","Value":true},' in raw
    assert b'{"Name":"","Type":"[]byte","Value":"aGk="},{"Name":"","Type":"[]int64","Value":[1,2]},' in raw
    assert b'{"Name":"","Type":"[]string","Value":["a"]}]' in raw
    assert b'"Headers":{"trace":"t1"},"Priority":3,"Immutable":true,"RetryCount":2,"RetryTimeout":4,' in raw
    assert raw.endswith(b'"IgnoreWhenTaskNotRegistered":true}')
    assert b'"RoutingKey":"other"' in raw


def test_eta_goes_to_delayed_tasks_scored_in_nanoseconds(app: Machinery, redis_client: redis.Redis) -> None:
    eta = GoTime.now().add_seconds(30)
    eta = GoTime(eta.unix_ns - eta.unix_ns % 1000 + 789)  # nanoseconds that datetime cannot hold
    app.send_task("add", args=[1], task_id="task_eta", eta=eta)
    assert redis_client.llen("machinery_tasks") == 0
    members = redis_client.zrange("delayed_tasks", 0, -1, withscores=True)
    assert len(members) == 1
    body, score = members[0]
    assert score == float(eta.unix_ns)
    assert f'"ETA":"{eta.isoformat()}"'.encode() in body
    assert eta.isoformat().endswith("789Z")
    assert [s.uuid for s in app.broker.delayed_tasks()] == ["task_eta"]


def test_countdown_and_datetime_eta(app: Machinery, redis_client: redis.Redis) -> None:
    now = time.time_ns()
    app.send_task("add", args=[1], countdown=5)
    app.send_task("add", args=[1], eta=datetime.now(UTC) + timedelta(seconds=10))
    scores = sorted(s for _, s in redis_client.zrange("delayed_tasks", 0, -1, withscores=True))
    assert 4.5e9 < scores[0] - now < 6e9
    assert 9.5e9 < scores[1] - now < 11e9
    # an ETA in the past is published at once, as Go does
    app.send_task("add", args=[1], eta=datetime.now(UTC) - timedelta(seconds=1))
    assert redis_client.llen("machinery_tasks") == 1


def test_out_of_range_and_uninferable_args_refused_before_anything_is_sent(
    app: Machinery, redis_client: redis.Redis
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
    assert redis_client.keys("*") == []


def test_type_hints_pin_arg_types(app: Machinery, redis_client: redis.Redis) -> None:
    @app.task(name="scale")
    def scale(x: float, factor: Annotated[int, GoType("int32")], *rest: int) -> float:
        return x * factor

    scale.delay(2, 3, 4)
    raw = redis_client.lpop("machinery_tasks")
    assert raw is not None
    assert (b'"Args":[{"Name":"","Type":"float64","Value":2},{"Name":"","Type":"int32","Value":3},'
            b'{"Name":"","Type":"int64","Value":4}]') in raw


def test_publish_error_when_redis_is_down(redis_server_factory) -> None:  # type: ignore[no-untyped-def]
    server = redis_server_factory()
    app = Machinery(broker=server.url)
    app.send_task("add", args=[1])
    server.stop()
    with pytest.raises(PublishError, match="not have been stored"):
        app.send_task("add", args=[1])
    server.start()
    res = app.send_task("add", args=[1])
    assert res.state == "PENDING"


def test_async_result_reads_go_written_states(app: Machinery, redis_client: redis.Redis) -> None:
    redis_client.set("task_multi", b'{"TaskUUID":"task_multi","TaskName":"multi_return","State":"SUCCESS",'
                     b'"Results":[{"Type":"int64","Value":42},{"Type":"string","Value":"answer"},'
                     b'{"Type":"bool","Value":true}],"Error":"","CreatedAt":"0001-01-01T00:00:00Z","TTL":0}')
    redis_client.set("task_none", b'{"TaskUUID":"task_none","TaskName":"only_error","State":"SUCCESS",'
                     b'"Results":[],"Error":"","CreatedAt":"0001-01-01T00:00:00Z","TTL":0}')
    redis_client.set("task_bad", b'{"TaskUUID":"task_bad","TaskName":"fail","State":"FAILURE",'
                     b'"Results":null,"Error":"boom","CreatedAt":"0001-01-01T00:00:00Z","TTL":0}')
    redis_client.set("task_bytes", b'{"TaskUUID":"task_bytes","State":"SUCCESS","Results":[{"Type":"[]uint8",'
                     b'"Value":"aGk="},{"Type":"uint64","Value":18446744073709551615}],"CreatedAt":"0001-01-01T00:00:00Z"}')
    assert app.AsyncResult("task_multi").get(timeout=1) == (42, "answer", True)
    assert app.AsyncResult("task_none").get(timeout=1) is None
    assert app.AsyncResult("task_bytes").get(timeout=1) == (b"hi", 18446744073709551615)
    with pytest.raises(TaskFailed, match="boom") as info:
        app.AsyncResult("task_bad").get(timeout=1)
    assert info.value.task_id == "task_bad"
    bad = app.AsyncResult("task_bad")
    assert isinstance(bad.get(timeout=1, propagate=False), TaskFailed)
    assert bad.failed() and bad.ready() and not bad.successful() and bad.error == "boom"
    multi = app.AsyncResult("task_multi")
    assert [(r.type, r.python_value) for r in multi.results or []] == [
        ("int64", 42), ("string", "answer"), ("bool", True)]


def test_get_timeout(app: Machinery) -> None:
    from machinery_compat import ResultTimeout

    res = app.send_task("nobody_runs_this", args=[])
    with pytest.raises(ResultTimeout, match="last state: PENDING"):
        res.get(timeout=0.2)


def test_pending_tasks_inspection(app: Machinery) -> None:
    a = app.send_task("add", args=[1])
    b = app.send_task("add", args=[2], queue="q2")
    assert [s.uuid for s in app.broker.pending_tasks()] == [a.id]
    assert [s.uuid for s in app.broker.pending_tasks("q2")] == [b.id]
