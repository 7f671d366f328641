"""Eager mode (``eager://``): tasks run inside the producer's call, through the real worker."""

from __future__ import annotations

import struct
import threading
import time
from typing import Any

import pytest

from machinery_compat import (
    Arg,
    EncodeError,
    Machinery,
    Retry,
    TaskFailed,
    TaskNotRegistered,
    chain,
    chord,
    group,
)
from machinery_compat.backends.memory import MemoryBackend


@pytest.fixture
def app(eager_app: Machinery) -> Machinery:
    @eager_app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    @eager_app.task(name="multiply")
    def multiply(*nums: int) -> int:
        out = 1
        for n in nums:
            out *= n
        return out

    @eager_app.task(name="collect")
    def collect(*values: Any) -> list[str]:
        return [str(v) for v in values]

    return eager_app


def stored(app: Machinery, uuid: str) -> bytes:
    backend = app.backend
    assert isinstance(backend, MemoryBackend)
    return backend.raw(uuid) or b""


def test_delay_runs_the_task_before_returning_in_the_calling_thread(app: Machinery) -> None:
    seen: list[threading.Thread] = []

    @app.task(name="where")
    def where() -> str:
        seen.append(threading.current_thread())
        return "here"

    res = where.delay()
    assert seen == [threading.current_thread()]
    assert res.state == "SUCCESS" and res.get(timeout=0) == "here"
    raw = stored(app, res.id)  # the worker's bytes: TaskName/CreatedAt kept from PENDING
    assert raw.startswith(f'{{"TaskUUID":"{res.id}","TaskName":"where","State":"SUCCESS",'
                          f'"Results":[{{"Type":"string","Value":"here"}}],"Error":"","CreatedAt":"'.encode())
    assert b'"CreatedAt":"0001-01-01T00:00:00Z"' not in raw
    assert app.broker.pending_tasks() == [] and app.broker.delayed_tasks() == []


def test_arguments_take_the_wire_round_trip(app: Machinery) -> None:
    got: list[Any] = []

    @app.task(name="echo")
    def echo(*values: Any) -> None:
        got.extend(values)

    echo.delay(Arg("float32", 0.1), b"hi", (1, 2), Arg("int8", -5), "h\u2028")
    f32 = struct.unpack("f", struct.pack("f", 0.1))[0]
    assert got == [f32, b"hi", [1, 2], -5, "h\u2028"]


def test_values_go_refuses_fail_as_they_would_on_the_wire(app: Machinery) -> None:
    @app.task(name="as_dict")
    def as_dict() -> Any:
        return {"k": 1}

    with pytest.raises(EncodeError, match="out of range for Go type int8"):
        app.send_task("add", args=[Arg("int8", 300)])
    # a dict result is stored as Go's map[string]interface {}; fed into the next step, it
    # is refused exactly as a Go worker would refuse it
    res = (as_dict.s() | app.signature("collect")).apply_async()
    assert res.results[0].get(timeout=0) == {"k": 1}
    with pytest.raises(TaskFailed, match=r"^.*Reflect task args error: map\[string\]interface \{\} "
                                         r"is not one of supported types"):
        res.get(timeout=0)


def test_chain_group_and_chord_run_eagerly(app: Machinery) -> None:
    add = app.tasks["add"]
    c = (add.s(1, 1) | add.s(5) | app.signature("multiply", args=[4])).apply_async()
    assert c.get(timeout=0) == 28
    assert [r.get(timeout=0) for r in c.results] == [2, 7, 28]
    assert chain(add.s(1, 1), add.si(10), add.s(5)).apply_async().get(timeout=0) == 15
    g = group(add.s(i, i) for i in range(5)).apply_async(send_concurrency=1)
    assert g.get(timeout=0) == [0, 2, 4, 6, 8]
    ch = chord([add.s(i) for i in range(6)], app.signature("collect", args=["first"])).apply_async()
    assert ch.get(timeout=0) == ["first", "0", "1", "2", "3", "4", "5"]


def test_chord_callback_runs_once_with_concurrent_members(app: Machinery) -> None:
    runs: list[tuple[int, ...]] = []

    @app.task(name="done")
    def done(*values: int) -> int:
        runs.append(values)
        return sum(values)

    @app.task(name="slow_id")
    def slow_id(i: int) -> int:
        time.sleep(0.01)
        return i

    res = chord([app.signature("slow_id", args=[i]) for i in range(8)],
                app.signature("done")).apply_async(send_concurrency=0)
    assert res.get(timeout=0) == sum(range(8))
    assert runs == [tuple(range(8))]


def test_long_chain_does_not_exhaust_the_stack(app: Machinery) -> None:
    add = app.tasks["add"]
    n = 150  # deeper than EagerBroker.max_depth; (~200 nested steps is the decoder's own limit)
    res = chain(add.s(0), *[add.s(1) for _ in range(n)]).apply_async()
    assert res.get(timeout=0) == n


def test_a_task_may_wait_for_a_task_it_sends(app: Machinery) -> None:
    @app.task(name="outer")
    def outer(x: int) -> int:
        return int(app.send_task("add", args=[x, 1]).get(timeout=1)) * 10

    assert outer.delay(4).get(timeout=0) == 50


def test_failure_and_on_error_callback(app: Machinery) -> None:
    errors: list[tuple[Any, ...]] = []

    @app.task(name="boom")
    def boom() -> None:
        raise ValueError("kaput")

    @app.task(name="on_error")
    def on_error(*args: Any) -> None:
        errors.append(args)

    sig = app.build_signature("boom")
    sig.on_error = [app.build_signature("on_error", args=["after"])]
    res = app.send_signature(sig)  # the producer's call does not raise for a task's failure
    assert res.failed()
    with pytest.raises(TaskFailed, match="kaput"):
        res.get(timeout=0)
    assert errors == [("kaput", "after")]


def test_countdown_and_eta_run_at_once(app: Machinery) -> None:
    start = time.monotonic()
    assert app.send_task("add", args=[1, 2], countdown=30).get(timeout=0) == 3
    assert app.send_task("add", args=[2], eta=time.time() + 60).get(timeout=0) == 2
    assert time.monotonic() - start < 5


def test_retry_count_retries_run_at_once(app: Machinery) -> None:
    runs: list[tuple[int, int]] = []

    @app.task(name="flaky", bind=True)
    def flaky(self: Any) -> str:
        runs.append((self.request.retries, self.request.retries_left))
        if len(runs) < 3:
            raise RuntimeError(f"attempt {len(runs)}")
        return "ok"

    start = time.monotonic()
    res = flaky.apply_async(retry_count=3)
    assert time.monotonic() - start < 1  # the 1 s and 2 s Fibonacci delays are not waited for
    assert res.get(timeout=0) == "ok"
    assert runs == [(0, 3), (1, 2), (2, 1)]  # Celery's retries done; Machinery's RetryCount left

    @app.task(name="always", max_retries=2)
    def always() -> None:
        runs.append((-1, -1))
        raise RuntimeError("still broken")

    runs.clear()
    with pytest.raises(TaskFailed, match="still broken"):
        always.delay().get(timeout=0)
    assert runs == [(-1, -1)] * 3


def test_celery_style_retry_runs_at_once(app: Machinery) -> None:
    attempts: list[int] = []

    @app.task(name="celery_flaky", bind=True, max_retries=3, default_retry_delay=60)
    def celery_flaky(self: Any) -> str:
        attempts.append(self.request.retries)
        if len(attempts) < 2:
            raise self.retry(exc=RuntimeError("once"))
        return "ok"

    assert celery_flaky.delay().get(timeout=0) == "ok"
    assert attempts == [0, 1]


def test_endless_retry_later_is_stopped_with_a_failure(app: Machinery) -> None:
    runs: list[int] = []

    @app.task(name="never_ready")
    def never_ready() -> None:
        runs.append(1)
        raise Retry("not yet", countdown=5)

    res = never_ready.delay()
    assert len(runs) == app.broker.max_runs_per_task  # type: ignore[attr-defined]
    with pytest.raises(TaskFailed, match=r"ran 100 times in one call and was not run again"):
        res.get(timeout=0)


def test_unregistered_task_is_a_clear_error(app: Machinery) -> None:
    with pytest.raises(TaskNotRegistered, match="'go_only' is not registered in this process: eager mode"):
        app.send_task("go_only", args=[1], task_id="task_go_only")
    with pytest.raises(TaskFailed, match="Task go_only is not registered in this process"):
        app.AsyncResult("task_go_only").get(timeout=0)
    # a chain step nobody has: what ran before it stays done, the call raises at the end
    add = app.tasks["add"]
    with pytest.raises(TaskNotRegistered, match="missing"):
        (add.s(1, 1) | app.signature("missing")).apply_async()
    # with IgnoreWhenTaskNotRegistered it is dropped and stays PENDING, as on any broker
    res = app.send_task("nobody", ignore_when_task_not_registered=True)
    assert res.state == "PENDING"


def test_a_worker_on_an_eager_app_stays_idle(app: Machinery, caplog: pytest.LogCaptureFixture) -> None:
    w = app.worker(concurrency=1, poll_timeout=0.05).start()
    assert app.send_task("add", args=[1]).get(timeout=0) == 1
    w.stop(timeout=5)
    assert any("nothing to consume" in r.getMessage() for r in caplog.records)
