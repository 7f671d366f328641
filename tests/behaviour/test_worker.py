"""The Python worker against messages written exactly as Go writes them (§12.1), on every
broker and backend.  Redis-only details (MONITOR, TTLs, outages) are in
tests/integration/test_redis_layout.py."""

from __future__ import annotations

import itertools
import logging
import re
import struct
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

import pytest

from machinery_compat import Arg, GoType, Machinery, Retry, Signature, TaskFailed
from tests.helpers import GO_PENDING, GOLDEN_BODY, UUID, state_bytes

from .conftest import Probe, StartWorker, wait_for


def _register_basics(app: Machinery) -> None:
    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)


@pytest.mark.mixed
def test_go_produced_message_final_state_byte_for_byte(
    app: Machinery, probe: Probe, start_worker: StartWorker
) -> None:
    """A Go producer's PENDING and message: SUCCESS keeps its TaskName and CreatedAt."""
    _register_basics(app)
    probe.put_state_bytes(UUID, GO_PENDING)
    probe.push("machinery_tasks", GOLDEN_BODY)
    start_worker()
    wait_for(lambda: b"SUCCESS" in (probe.state_bytes(UUID) or b""), what="SUCCESS")
    assert probe.state_bytes(UUID) == state_bytes(
        UUID, "add", "SUCCESS", "2024-05-01T12:34:56.123456789Z", '[{"Type":"int64","Value":2}]')


def test_received_without_prior_state(app: Machinery, probe: Probe, start_worker: StartWorker) -> None:
    gate = threading.Event()

    @app.task(name="hold")
    def hold() -> None:
        gate.wait(5)

    probe.push("machinery_tasks", Signature(uuid="task_np", name="hold", args=[]).to_json())
    start_worker()
    wait_for(lambda: b"STARTED" in (probe.state_bytes("task_np") or b""), what="STARTED")
    assert probe.state_bytes("task_np") == state_bytes("task_np", "", "STARTED", "0001-01-01T00:00:00Z")
    gate.set()
    wait_for(lambda: b"SUCCESS" in (probe.state_bytes("task_np") or b""), what="SUCCESS")
    assert probe.state_bytes("task_np") == state_bytes("task_np", "", "SUCCESS", "0001-01-01T00:00:00Z", "[]")


@pytest.mark.mixed
def test_failure_state_and_error_text(app: Machinery, probe: Probe, start_worker: StartWorker) -> None:
    @app.task(name="boom")
    def boom(msg: str) -> int:
        raise ValueError(msg)

    res = boom.delay('bad "thing" <&>')
    pending = probe.state_bytes(res.id) or b""
    created = re.search(rb'"CreatedAt":"([^"]+)"', pending)
    assert created, pending
    start_worker()
    with pytest.raises(TaskFailed) as info:
        res.get(timeout=5)
    assert info.value.error == 'bad "thing" <&>'
    assert probe.state_bytes(res.id) == state_bytes(
        res.id, "boom", "FAILURE", created.group(1).decode(),
        error='bad \\"thing\\" \\u003c\\u0026\\u003e')


def test_reflect_args_error_is_a_failure(app: Machinery, probe: Probe, start_worker: StartWorker) -> None:
    _register_basics(app)
    probe.push("machinery_tasks", b'{"UUID":"task_ra","Name":"add","Args":[{"Type":"int64","Value":"1"}]}')
    probe.push("machinery_tasks", b'{"UUID":"task_rb","Name":"add","Args":[{"Type":"int64","Value":1.5}]}')
    start_worker()
    for uuid, text in (("task_ra", "Reflect task args error: 1 is not int64"),
                       ("task_rb", 'Reflect task args error: strconv.ParseInt: parsing "1.5": invalid syntax')):
        with pytest.raises(TaskFailed) as info:
            app.AsyncResult(uuid).get(timeout=5)
        assert info.value.error == text


@pytest.mark.mixed
def test_every_type_reaches_the_task_as_python_values(
    app: Machinery, probe: Probe, start_worker: StartWorker
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
    probe.push("machinery_tasks", body)
    start_worker()
    wait_for(lambda: "values" in got, what="task run")
    f32 = struct.unpack("f", struct.pack("f", 0.1))[0]
    assert got["values"] == (True, -128, 44, -9223372036854775808, 18446744073709551615, f32, 1000.0,
                             "hé", b"hi", b"hi", [], ["a", "b"], [1.0, 2.5])


def test_results_typed_for_go_readers(app: Machinery, probe: Probe, start_worker: StartWorker) -> None:
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
    raw = probe.state_bytes(r1.id)
    assert raw is not None
    assert (b'"Results":[{"Type":"int64","Value":1},{"Type":"string","Value":"s"},{"Type":"bool","Value":true},'
            b'{"Type":"float64","Value":2},{"Type":"[]uint8","Value":"aGk="},{"Type":"[]int64","Value":[1,2]}]') in raw
    assert r2.get(timeout=5) == 255
    assert b'"Results":[{"Type":"uint8","Value":255}]' in (probe.state_bytes(r2.id) or b"")
    assert r3.get(timeout=5) == {"k": [1, 2]}
    assert b'"Results":[{"Type":"map[string]interface {}","Value":{"k":[1,2]}}]' in (probe.state_bytes(r3.id) or b"")
    assert r4.get(timeout=5) is None
    assert b'"Results":[]' in (probe.state_bytes(r4.id) or b"")


def test_result_out_of_range_fails_the_task(app: Machinery, start_worker: StartWorker) -> None:
    @app.task(name="too_big")
    def too_big() -> Annotated[int, GoType("int8")]:
        return 1000

    res = too_big.delay()
    start_worker()
    with pytest.raises(TaskFailed, match="out of range for Go type int8"):
        res.get(timeout=5)


def test_results_expire_after_results_expire_in(make_app: Callable[..., Machinery], probe: Probe) -> None:
    app = make_app(results_expire_in=1)
    res = app.send_task("add", args=[1])
    assert res.state == "PENDING"
    wait_for(lambda: probe.state_bytes(res.id) is None, timeout=5, what="state expired")
    assert app.backend.get_state(res.id) is None


def test_retry_count_follows_fibonacci(app: Machinery, probe: Probe, start_worker: StartWorker) -> None:
    runs: list[float] = []

    @app.task(name="flaky")
    def flaky() -> str:
        runs.append(time.monotonic())
        if len(runs) < 3:
            raise RuntimeError(f"attempt {len(runs)}")
        return "ok"

    res = flaky.apply_async(retry_count=3)
    start_worker()
    wait_for(probe.delayed, what="first retry scheduled")
    (body, due), = probe.delayed()
    sig = Signature.from_json(body)
    assert (sig.uuid, sig.retry_count, sig.retry_timeout) == (res.id, 2, 1)
    assert sig.eta is not None and abs(sig.eta.unix_ns - due) < 1000  # a Redis score is a double
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


@pytest.mark.mixed
def test_retry_later_keeps_retry_count(app: Machinery, probe: Probe, start_worker: StartWorker) -> None:
    runs = []

    @app.task(name="later")
    def later() -> str:
        runs.append(1)
        if len(runs) == 1:
            raise Retry("not yet", countdown=0.3)
        return "done"

    res = later.apply_async(retry_count=5, retry_timeout=7)
    start_worker()
    wait_for(probe.delayed, what="retry-later scheduled")
    sig = Signature.from_json(probe.delayed()[0][0])
    assert (sig.retry_count, sig.retry_timeout) == (5, 7)
    assert res.get(timeout=5) == "done"


@pytest.mark.mixed
def test_on_success_and_on_error_callbacks(app: Machinery, start_worker: StartWorker) -> None:
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
    app: Machinery, probe: Probe, start_worker: StartWorker, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = Signature(uuid="task_go_only", name="go_only", routing_key="machinery_tasks", headers={}).to_json()
    probe.push("machinery_tasks", body)
    broker = app.broker
    requeued: list[bytes] = []
    real_requeue = broker.requeue

    def counting_requeue(deliveries: Any, *, front: bool = False) -> None:
        requeued.extend(d.body for d in deliveries)
        real_requeue(deliveries, front=front)

    monkeypatch.setattr(broker, "requeue", counting_requeue)
    start_worker()
    time.sleep(1.5)
    assert 1 <= len(requeued) < 60, len(requeued)  # backed off, not thousands of round trips
    assert set(requeued) == {body}  # the bytes are untouched, for a worker that has the task
    assert probe.messages() in ([body], [])  # (or taken by the worker just now)
    warnings = [r for r in caplog.records if "go_only is not registered" in r.getMessage()]
    assert len(warnings) == 1
    assert probe.state_bytes("task_go_only") is None  # no state written for it


@pytest.mark.mixed
def test_unregistered_then_handled_by_another_worker(
    app: Machinery, make_app: Callable[..., Machinery], start_worker: StartWorker
) -> None:
    other = make_app()

    @other.task(name="only_other")
    def only_other() -> str:
        return "other ran it"

    res = app.send_task("only_other")
    start_worker()
    time.sleep(0.3)
    start_worker(other)
    # 30 s: where the broker cannot hand it back to one worker in particular (SQS, Pub/Sub),
    # each time the first worker takes it again it hides it a little longer (up to 2 s), and
    # twice in one CI run on the loaded machine moto gave it to that worker past 10 s
    assert res.get(timeout=30) == "other ran it"


def test_ignore_when_task_not_registered_drops(
    app: Machinery, probe: Probe, start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    app.send_task("nobody", ignore_when_task_not_registered=True)
    start_worker()
    wait_for(lambda: any("IgnoreWhenTaskNotRegistered" in r.getMessage() for r in caplog.records), what="drop log")
    assert probe.messages() == []


def test_undecodable_message_kept_in_dead_list(
    app: Machinery, probe: Probe, start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    _register_basics(app)
    bad = [b"not json", b'{"UUID":"x","RetryCount":"3"}', b'{"ETA":"2024-05-01T12:00:00"}', b"[1]"]
    probe.push("machinery_tasks", *bad)
    res = app.send_task("add", args=[1, 2])
    start_worker()
    assert res.get(timeout=5) == 3  # the worker survived
    wait_for(lambda: len(probe.dead()) == 4, what="4 dead letters")
    assert sorted(probe.dead()) == sorted(bad)
    msgs = [r.getMessage() for r in caplog.records if "unusable message" in r.getMessage()]
    where = app.broker.dead_letter_place("machinery_tasks")
    assert len(msgs) == 4 and all(f"moved to {where}:" in m for m in msgs), msgs
    assert any("raw=b'not json'" in m for m in msgs)
    assert any("Signature.RetryCount of type int" in m for m in msgs)


@pytest.mark.mixed
def test_delayed_tasks_moved_once_by_competing_workers(
    app: Machinery, make_app: Callable[..., Machinery], probe: Probe, start_worker: StartWorker,
    app_kind: str,
) -> None:
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def make(target: Machinery) -> None:
        @target.task(name="count")
        def count(key: str) -> None:
            with lock:
                counts[key] = counts.get(key, 0) + 1

    make(app)
    other = make_app()
    make(other)
    n = 300
    due = time.time_ns() + 300_000_000
    for i in range(n):
        sig = Signature(uuid=f"task_d{i}", name="count", routing_key="machinery_tasks",
                        args=[Arg("string", f"k{i}")], headers={})
        probe.push_delayed(sig.to_json(), due + i)
    start_worker(concurrency=4, delayed_poll_interval=0.01)
    start_worker(other, concurrency=4, delayed_poll_interval=0.01)
    # moto's DynamoDB (every state write a request to the one moto process, ~25 ms of its CPU
    # per task) and FerretDB take far longer for 300 tasks on a loaded CI machine (20 s was
    # outlasted once on sqs+dynamodb)
    slow = app_kind.split("+")[-1] in ("dynamodb", "mongodb")
    wait_for(lambda: sum(counts.values()) >= n, timeout=90 if slow else 20,
             what="all delayed tasks run")
    time.sleep(0.3)
    assert len(counts) == n and set(counts.values()) == {1}
    assert probe.delayed() == []


@pytest.mark.mixed
def test_graceful_stop_finishes_running_and_leaves_the_rest(app: Machinery, probe: Probe) -> None:
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
    # what was pushed back is intact and in order
    remaining = [Signature.from_json(b).uuid for b in probe.messages()]
    assert remaining == [r.id for r in results if not r.ready()]
    assert len(remaining) == 10 - len(finished)


def test_bound_task_sees_request(app: Machinery, start_worker: StartWorker) -> None:
    seen = {}

    @app.task(name="introspect", bind=True)
    def introspect(self: Any, x: int) -> str:
        seen["id"], seen["retries"], seen["headers"] = self.request.id, self.request.retries, self.request.headers
        seen["left"] = self.request.retries_left
        return self.request.name

    res = introspect.apply_async(args=[1], retry_count=2, headers={"h": "v"})
    start_worker()
    assert res.get(timeout=5) == "introspect"
    assert seen == {"id": res.id, "retries": 0, "left": 2, "headers": {"h": "v"}}


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


@pytest.mark.mixed
def test_worker_consumes_several_queues(app: Machinery, start_worker: StartWorker) -> None:
    _register_basics(app)
    a = app.send_task("add", args=[1], queue="qa")
    b = app.send_task("add", args=[2], queue="qb")
    start_worker(queues=["qa", "qb"])
    assert (a.get(timeout=5), b.get(timeout=5)) == (1, 2)
