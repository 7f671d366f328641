"""The Python worker against messages written exactly as Go writes them (§12.1)."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

import pytest
import redis

from machinery_compat import Arg, GoType, Machinery, Retry, Signature, TaskFailed
from machinery_compat.worker import Worker

from .conftest import wait_for
from .test_redis_producer import GOLDEN_BODY, UUID

GO_PENDING = (
    b'{"TaskUUID":"task_7e0b7c39-3d0c-4b5e-9e1a-2f7d5c1b8a90","TaskName":"add","State":"PENDING",'
    b'"Results":null,"Error":"","CreatedAt":"2024-05-01T12:34:56.123456789Z","TTL":0}'
)


def _state(uuid: str, name: str, state: str, created: str, results: str = "null", error: str = "") -> bytes:
    return (f'{{"TaskUUID":"{uuid}","TaskName":"{name}","State":"{state}","Results":{results},'
            f'"Error":"{error}","CreatedAt":"{created}","TTL":0}}').encode()


StartWorker = Callable[..., Worker]


def _register_basics(app: Machinery) -> None:
    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)


def test_go_produced_message_states_byte_for_byte(
    app: Machinery, redis_client: redis.Redis, redis_server: Any, start_worker: StartWorker
) -> None:
    _register_basics(app)
    created = "2024-05-01T12:34:56.123456789Z"
    # play the Go producer: SET PENDING, then RPUSH the exact body
    redis_client.set(UUID, GO_PENDING, ex=3600)
    monitor_client = redis_server.client()
    seen: list[str] = []
    ready = threading.Event()

    def watch() -> None:
        with monitor_client.monitor() as mon:
            ready.set()
            for event in mon.listen():
                cmd = event["command"]
                if cmd.startswith(f"SET {UUID}"):
                    seen.append(cmd)
                    if "SUCCESS" in cmd:
                        return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    ready.wait(5)
    redis_client.rpush("machinery_tasks", GOLDEN_BODY)
    start_worker()
    wait_for(lambda: b"SUCCESS" in (redis_client.get(UUID) or b""), what="SUCCESS")
    t.join(5)
    final = redis_client.get(UUID)
    assert final == _state(UUID, "add", "SUCCESS", created, '[{"Type":"int64","Value":2}]')
    assert 3590 < redis_client.ttl(UUID) <= 3600
    # the intermediate writes were RECEIVED then STARTED, each merged, then SUCCESS
    states = [s.split('"State":"')[1].split('"')[0] for s in seen]
    assert states == ["RECEIVED", "STARTED", "SUCCESS"]
    assert all(f'"CreatedAt":"{created}"' in s and '"TaskName":"add"' in s for s in seen)
    assert all(s.endswith('"EX" "3600"') or s.endswith("EX 3600") for s in seen), seen


def test_received_without_prior_state(app: Machinery, redis_client: redis.Redis, start_worker: StartWorker) -> None:
    gate = threading.Event()

    @app.task(name="hold")
    def hold() -> None:
        gate.wait(5)

    redis_client.rpush("machinery_tasks", Signature(uuid="task_np", name="hold", args=[]).to_json())
    start_worker()
    wait_for(lambda: b"STARTED" in (redis_client.get("task_np") or b""), what="STARTED")
    assert redis_client.get("task_np") == _state("task_np", "", "STARTED", "0001-01-01T00:00:00Z")
    gate.set()
    wait_for(lambda: b"SUCCESS" in (redis_client.get("task_np") or b""), what="SUCCESS")
    assert redis_client.get("task_np") == _state("task_np", "", "SUCCESS", "0001-01-01T00:00:00Z", "[]")


def test_failure_state_and_error_text(app: Machinery, redis_client: redis.Redis, start_worker: StartWorker) -> None:
    @app.task(name="boom")
    def boom(msg: str) -> int:
        raise ValueError(msg)

    res = boom.delay('bad "thing" <&>')
    start_worker()
    with pytest.raises(TaskFailed) as info:
        res.get(timeout=5)
    assert info.value.error == 'bad "thing" <&>'
    raw = redis_client.get(res.id)
    assert raw is not None
    assert b'"State":"FAILURE","Results":null,"Error":"bad \\"thing\\" \\u003c\\u0026\\u003e"' in raw
    assert b'"TaskName":"boom"' in raw


def test_reflect_args_error_is_a_failure(app: Machinery, redis_client: redis.Redis, start_worker: StartWorker) -> None:
    _register_basics(app)
    redis_client.rpush("machinery_tasks", b'{"UUID":"task_ra","Name":"add","Args":[{"Type":"int64","Value":"1"}]}')
    redis_client.rpush("machinery_tasks", b'{"UUID":"task_rb","Name":"add","Args":[{"Type":"int64","Value":1.5}]}')
    start_worker()
    for uuid, text in (("task_ra", "Reflect task args error: 1 is not int64"),
                       ("task_rb", 'Reflect task args error: strconv.ParseInt: parsing "1.5": invalid syntax')):
        with pytest.raises(TaskFailed) as info:
            app.AsyncResult(uuid).get(timeout=5)
        assert info.value.error == text


def test_every_type_reaches_the_task_as_python_values(
    app: Machinery, redis_client: redis.Redis, start_worker: StartWorker
) -> None:
    got: dict[str, Any] = {}

    @app.task(name="collect")
    def collect(*values: Any) -> None:
        got["values"] = values

    body = (b'{"UUID":"task_types","Name":"collect","Args":['
            b'{"Type":"bool","Value":true},{"Type":"int8","Value":-128},{"Type":"int8","Value":300},'
            b'{"Type":"int64","Value":-9223372036854775808},{"Type":"uint64","Value":18446744073709551615},'
            b'{"Type":"float32","Value":0.1},{"Type":"float64","Value":1e3},{"Type":"string","Value":"h\\u00e9"},'
            b'{"Type":"[]byte","Value":"aGk="},{"Type":"[]uint8","Value":[104,105]},{"Type":"[]int32","Value":null},'
            b'{"Type":"[]string","Value":["a","b"]},{"Type":"[]float64","Value":[1,2.5]}]}')
    redis_client.rpush("machinery_tasks", body)
    start_worker()
    wait_for(lambda: "values" in got, what="task run")
    import struct
    f32 = struct.unpack("f", struct.pack("f", 0.1))[0]
    assert got["values"] == (True, -128, 44, -9223372036854775808, 18446744073709551615, f32, 1000.0,
                             "hé", b"hi", b"hi", [], ["a", "b"], [1.0, 2.5])


def test_results_typed_for_go_readers(app: Machinery, redis_client: redis.Redis, start_worker: StartWorker) -> None:
    @app.task(name="many")
    def many() -> tuple[int, str, bool, float, bytes, list[int]]:
        return 1, "s", True, 2.0, b"hi", [1, 2]

    @app.task(name="narrow")
    def narrow() -> Annotated[int, GoType("uint8")]:
        return 255

    @app.task(name="untyped")
    def untyped() -> Any:
        return {"k": [1, 2]}

    @app.task(name="nothing")
    def nothing() -> None:
        return None

    r1, r2, r3, r4 = many.delay(), narrow.delay(), untyped.delay(), nothing.delay()
    start_worker()
    assert r1.get(timeout=5) == (1, "s", True, 2.0, b"hi", [1, 2])
    raw = redis_client.get(r1.id)
    assert raw is not None
    assert (b'"Results":[{"Type":"int64","Value":1},{"Type":"string","Value":"s"},{"Type":"bool","Value":true},'
            b'{"Type":"float64","Value":2},{"Type":"[]uint8","Value":"aGk="},{"Type":"[]int64","Value":[1,2]}]') in raw
    assert r2.get(timeout=5) == 255
    assert b'"Results":[{"Type":"uint8","Value":255}]' in (redis_client.get(r2.id) or b"")
    assert r3.get(timeout=5) == {"k": [1, 2]}
    assert b'"Results":[{"Type":"map[string]interface {}","Value":{"k":[1,2]}}]' in (redis_client.get(r3.id) or b"")
    assert r4.get(timeout=5) is None
    assert b'"Results":[]' in (redis_client.get(r4.id) or b"")


def test_result_out_of_range_fails_the_task(app: Machinery, start_worker: StartWorker) -> None:
    @app.task(name="too_big")
    def too_big() -> Annotated[int, GoType("int8")]:
        return 1000

    res = too_big.delay()
    start_worker()
    with pytest.raises(TaskFailed, match="out of range for Go type int8"):
        res.get(timeout=5)


def test_retry_count_follows_fibonacci(app: Machinery, redis_client: redis.Redis, start_worker: StartWorker) -> None:
    runs: list[float] = []

    @app.task(name="flaky")
    def flaky() -> str:
        runs.append(time.monotonic())
        if len(runs) < 3:
            raise RuntimeError(f"attempt {len(runs)}")
        return "ok"

    res = flaky.apply_async(retry_count=3)
    start_worker()
    wait_for(lambda: redis_client.zcard("delayed_tasks"), what="first retry scheduled")
    (body, score), = redis_client.zrange("delayed_tasks", 0, -1, withscores=True)
    sig = Signature.from_json(body)
    assert (sig.uuid, sig.retry_count, sig.retry_timeout) == (res.id, 2, 1)
    assert sig.eta is not None and abs(sig.eta.unix_ns - score) < 1000
    assert res.get(timeout=15) == "ok"
    assert len(runs) == 3
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert 0.9 < gaps[0] < 1.6 and 1.9 < gaps[1] < 2.6, gaps


def test_retry_exhausted_is_failure(app: Machinery, start_worker: StartWorker) -> None:
    runs = []

    @app.task(name="always_fails")
    def always_fails() -> None:
        runs.append(1)
        raise RuntimeError(f"attempt {len(runs)}")

    res = always_fails.apply_async(retry_count=1)
    start_worker()
    with pytest.raises(TaskFailed, match="attempt 2"):
        res.get(timeout=10)
    assert len(runs) == 2


def test_retry_later_keeps_retry_count(app: Machinery, redis_client: redis.Redis, start_worker: StartWorker) -> None:
    runs = []

    @app.task(name="later")
    def later() -> str:
        runs.append(1)
        if len(runs) == 1:
            raise Retry("not yet", countdown=0.3)
        return "done"

    res = later.apply_async(retry_count=5, retry_timeout=7)
    start_worker()
    wait_for(lambda: redis_client.zcard("delayed_tasks"), what="retry-later scheduled")
    sig = Signature.from_json(redis_client.zrange("delayed_tasks", 0, -1)[0])
    assert (sig.retry_count, sig.retry_timeout) == (5, 7)
    assert res.get(timeout=5) == "done"


def test_on_success_and_on_error_callbacks(app: Machinery, redis_client: redis.Redis, start_worker: StartWorker) -> None:
    seen: dict[str, Any] = {}

    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    @app.task(name="record")
    def record(*args: Any) -> None:
        seen.setdefault("calls", []).append(args)

    @app.task(name="boom")
    def boom() -> None:
        raise ValueError("kaput")

    on_ok = app.build_signature("record", args=["prefix"])
    parent = app.build_signature("add", args=[1, 2])
    parent.on_success = [on_ok]
    app.send_signature(parent)
    imm = app.build_signature("add", args=[5], immutable=True)
    imm.on_success = [app.build_signature("record", args=["immutable"])]
    app.send_signature(imm)
    failing = app.build_signature("boom")
    failing.on_error = [app.build_signature("record", args=["after"])]
    app.send_signature(failing)
    start_worker()
    wait_for(lambda: len(seen.get("calls", [])) == 3, what="3 callbacks")
    assert sorted(seen["calls"], key=str) == sorted([("prefix", 3), ("immutable",), ("kaput", "after")], key=str)


def test_unregistered_task_requeued_without_livelock(
    app: Machinery, redis_client: redis.Redis, start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    body = Signature(uuid="task_go_only", name="go_only", routing_key="machinery_tasks", headers={}).to_json()
    redis_client.rpush("machinery_tasks", body)
    redis_client.config_resetstat()
    start_worker()
    time.sleep(1.5)
    stats = redis_client.info("commandstats")
    pushes = stats.get("cmdstat_rpush", {}).get("calls", 0)
    assert 1 <= pushes < 60, pushes  # backed off, not thousands of round trips
    # the bytes are untouched and still there for a worker that has the task
    assert redis_client.lrange("machinery_tasks", 0, -1) == [body] or redis_client.llen("machinery_tasks") == 0
    warnings = [r for r in caplog.records if "go_only is not registered" in r.getMessage()]
    assert len(warnings) == 1
    assert redis_client.get("task_go_only") is None  # no state written for it


def test_unregistered_then_handled_by_another_worker(
    app: Machinery, redis_url: str, redis_client: redis.Redis, start_worker: StartWorker
) -> None:
    other = Machinery(broker=redis_url, default_queue="machinery_tasks")

    @other.task(name="only_other")
    def only_other() -> str:
        return "other ran it"

    res = app.send_task("only_other")
    start_worker()
    time.sleep(0.3)
    start_worker(other)
    assert res.get(timeout=10) == "other ran it"


def test_ignore_when_task_not_registered_drops(
    app: Machinery, redis_client: redis.Redis, start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    app.send_task("nobody", ignore_when_task_not_registered=True)
    start_worker()
    wait_for(lambda: any("IgnoreWhenTaskNotRegistered" in r.getMessage() for r in caplog.records), what="drop log")
    assert redis_client.llen("machinery_tasks") == 0


def test_undecodable_message_kept_in_dead_list(
    app: Machinery, redis_client: redis.Redis, start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    _register_basics(app)
    for bad in (b"not json", b'{"UUID":"x","RetryCount":"3"}', b'{"ETA":"2024-05-01T12:00:00"}', b"[1]"):
        redis_client.rpush("machinery_tasks", bad)
    res = app.send_task("add", args=[1, 2])
    start_worker()
    assert res.get(timeout=5) == 3  # the worker survived
    wait_for(lambda: redis_client.llen("machinery_tasks.dead") == 4, what="4 dead letters")
    assert sorted(redis_client.lrange("machinery_tasks.dead", 0, -1)) == sorted(
        [b"not json", b'{"UUID":"x","RetryCount":"3"}', b'{"ETA":"2024-05-01T12:00:00"}', b"[1]"])
    msgs = [r.getMessage() for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(msgs) == 4 and all("moved to machinery_tasks.dead" in m for m in msgs)
    assert any("raw=b'not json'" in m for m in msgs)
    assert any("Signature.RetryCount of type int" in m for m in msgs)


def test_delayed_tasks_moved_once_by_competing_workers(
    app: Machinery, redis_url: str, redis_client: redis.Redis, start_worker: StartWorker
) -> None:
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def make(target: Machinery) -> None:
        @target.task(name="count")
        def count(key: str) -> None:
            with lock:
                counts[key] = counts.get(key, 0) + 1

    make(app)
    other = Machinery(broker=redis_url, default_queue="machinery_tasks")
    make(other)
    n = 300
    pipe = redis_client.pipeline()
    due = time.time_ns() + 300_000_000
    for i in range(n):
        sig = Signature(uuid=f"task_d{i}", name="count", routing_key="machinery_tasks",
                        args=[Arg("string", f"k{i}")], headers={})
        pipe.zadd("delayed_tasks", {sig.to_json(): due + i})
    pipe.execute()
    start_worker(concurrency=4, delayed_poll_interval=0.01)
    start_worker(other, concurrency=4, delayed_poll_interval=0.01)
    wait_for(lambda: sum(counts.values()) >= n, timeout=20, what="all delayed tasks run")
    time.sleep(0.3)
    assert len(counts) == n and set(counts.values()) == {1}
    assert redis_client.zcard("delayed_tasks") == 0


def test_graceful_stop_finishes_running_and_leaves_the_rest(
    app: Machinery, redis_client: redis.Redis
) -> None:
    started = threading.Event()
    finished = []

    @app.task(name="slow")
    def slow(i: int) -> int:
        started.set()
        time.sleep(0.5)
        finished.append(i)
        return i

    results = [slow.delay(i) for i in range(10)]
    w = app.worker(concurrency=2, poll_timeout=0.1).start()
    started.wait(5)
    w.stop(timeout=10)
    done = [r for r in results if r.ready()]
    assert len(done) == len(finished) >= 1
    assert redis_client.llen("machinery_tasks") == 10 - len(finished)
    # what was pushed back is intact and in order
    remaining = [Signature.from_json(b).uuid for b in redis_client.lrange("machinery_tasks", 0, -1)]
    assert remaining == [r.id for r in results if not r.ready()]


def test_worker_survives_broker_outage(redis_server_factory, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    server = redis_server_factory()
    app = Machinery(broker=server.url)

    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    w = app.worker(concurrency=2, poll_timeout=0.1).start()
    try:
        assert app.send_task("add", args=[1, 1]).get(timeout=5) == 2
        server.stop()
        time.sleep(1.0)
        server.start()
        res = wait_for(lambda: _try_send(app), timeout=10, what="producer reconnect")
        assert res.get(timeout=15) == 5
    finally:
        w.stop(timeout=10)
    assert any("broker unreachable" in r.getMessage() for r in caplog.records)


def _try_send(app: Machinery) -> Any:
    try:
        return app.send_task("add", args=[2, 3])
    except Exception:
        return None


def test_bound_task_sees_request(app: Machinery, start_worker: StartWorker) -> None:
    seen = {}

    @app.task(name="introspect", bind=True)
    def introspect(self: Any, x: int) -> str:
        seen["id"], seen["retries"], seen["headers"] = self.request.id, self.request.retries, self.request.headers
        return self.request.name

    res = introspect.apply_async(args=[1], retry_count=2, headers={"h": "v"})
    start_worker()
    assert res.get(timeout=5) == "introspect"
    assert seen == {"id": res.id, "retries": 2, "headers": {"h": "v"}}


def test_log_lines_a_celery_user_recognises(
    app: Machinery, start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    _register_basics(app)
    res = app.send_task("add", args=[2, 2])
    start_worker()
    res.get(timeout=5)
    wait_for(lambda: any("succeeded in" in r.getMessage() for r in caplog.records), what="log")
    msgs = [r.getMessage() for r in caplog.records]
    assert f"Task add[{res.id}] received" in msgs
    assert any(m.startswith(f"Task add[{res.id}] succeeded in ") and m.endswith(": 4") for m in msgs)
    assert caplog.records[0].name.startswith("machinery_compat")
    logging.getLogger("machinery_compat").debug("done")


def test_backend_outage_before_start_pushes_the_message_back(
    redis_url: str, redis_client: redis.Redis, redis_server_factory: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend_server = redis_server_factory()
    app = Machinery(broker=redis_url, result_backend=backend_server.url)
    runs = []

    @app.task(name="add")
    def add(*nums: int) -> int:
        runs.append(nums)
        return sum(nums)

    backend_server.stop()
    redis_client.rpush("machinery_tasks", Signature(uuid="task_bo", name="add", args=[Arg("int64", 4)],
                                                    headers={}).to_json())
    w = app.worker(concurrency=1, poll_timeout=0.1).start()
    try:
        wait_for(lambda: any("not started: result backend error" in r.getMessage()
                             for r in caplog.records), timeout=30, what="backend error log")
        assert runs == []
        backend_server.start()
        assert app.AsyncResult("task_bo").get(timeout=30) == 4
    finally:
        w.stop(timeout=10)
    assert runs == [(4,)]
