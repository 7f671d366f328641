"""Signals, Go's handlers and the worker controls (issue #11), on every broker and backend."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from machinery_compat import Machinery, Signature, TaskFailed, group, signals
from machinery_compat.signals import Signal

from .conftest import Probe, StartWorker, wait_for


@pytest.fixture
def record() -> Iterator[Callable[..., list[tuple[str, dict[str, Any]]]]]:
    """``record(*signals)`` connects a recorder to each signal; disconnected afterwards."""
    connected: list[tuple[Signal, Callable[..., Any]]] = []
    seen: list[tuple[str, dict[str, Any]]] = []
    lock = threading.Lock()

    def connect(*sigs: Signal) -> list[tuple[str, dict[str, Any]]]:
        for s in sigs:
            def receiver(signal: Signal, sender: Any, **kwargs: Any) -> None:
                with lock:
                    seen.append((signal.name, {"sender": sender, **kwargs}))
            s.connect(receiver)
            connected.append((s, receiver))
        return seen

    yield connect
    for s, r in connected:
        s.disconnect(r)


def _names(seen: list[tuple[str, dict[str, Any]]], task_id: str) -> list[str]:
    out = []
    for name, kw in list(seen):
        ids = {kw.get("task_id"), getattr(kw.get("body"), "uuid", None),
               getattr(kw.get("request"), "id", None)}
        if task_id in ids:
            out.append(name)
    return out


def test_signals_of_a_successful_task_in_order(app: Machinery, start_worker: StartWorker,
                                               record: Any) -> None:
    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    seen = record(signals.before_task_publish, signals.after_task_publish,
                  signals.task_received, signals.task_prerun, signals.task_success,
                  signals.task_postrun, signals.task_failure, signals.task_retry)
    start_worker()
    r = add.delay(2, 3)
    assert r.get(timeout=20) == 5
    wait_for(lambda: "task_postrun" in _names(seen, r.id), what="task_postrun")
    names = _names(seen, r.id)
    # (a worker may take the message before the publish returns: AMQP's confirm comes later)
    assert names[0] == "before_task_publish" and names.count("after_task_publish") == 1
    assert [n for n in names[1:] if n != "after_task_publish"] == [
        "task_received", "task_prerun", "task_postrun"]
    byname = {n: kw for n, kw in seen if n != "task_success"}
    before = byname["before_task_publish"]
    assert before["sender"] == "add" and isinstance(before["body"], Signature)
    assert before["routing_key"] == "machinery_tasks"
    assert before["headers"] is before["body"].headers
    assert byname["task_prerun"]["sender"] is add
    assert byname["task_prerun"]["args"] == [2, 3] and byname["task_prerun"]["kwargs"] == {}
    post = byname["task_postrun"]
    assert post["retval"] == 5 and post["state"] == "SUCCESS" and post["task"] is add
    assert [kw["result"] for n, kw in seen if n == "task_success"] == [5]
    assert byname["task_received"]["request"].id == r.id


def test_before_task_publish_headers_go_on_the_wire(app: Machinery, probe: Probe,
                                                    record: Any) -> None:
    @signals.before_task_publish.connect(sender="tagged")
    def tag(headers: dict[str, Any], **kwargs: Any) -> None:
        headers["tenant"] = "acme"

    try:
        app.send_task("tagged", args=[1])
        app.send_task("other", args=[1])
    finally:
        signals.before_task_publish.disconnect(tag, sender="tagged")
    by_name = {s.name: s for s in probe.pending("machinery_tasks")}
    assert by_name["tagged"].headers == {"tenant": "acme"}
    assert by_name["other"].headers == {}


def test_publish_signals_for_every_group_member(app: Machinery, record: Any) -> None:
    seen = record(signals.before_task_publish, signals.after_task_publish)
    res = group(app.signature("g", args=[1]), app.signature("g", args=[2])).apply_async()
    ids = [r.id for r in res.results]
    for i in ids:
        assert _names(seen, i) == ["before_task_publish", "after_task_publish"]


def test_failure_signal_error_handler_and_task_failed_for_bad_args(
        app: Machinery, probe: Probe, start_worker: StartWorker, record: Any) -> None:
    @app.task(name="boom")
    def boom(x: int) -> None:
        raise ValueError(f"bad {x}")

    seen = record(signals.task_failure, signals.task_postrun)
    errors: list[BaseException] = []
    w = start_worker()
    w.set_error_handler(errors.append)
    r = boom.delay(7)
    # as a Go producer could send it: a string for an int64 is Go's reflect error
    probe.push("machinery_tasks",
               b'{"UUID":"task_bad","Name":"boom","Args":[{"Type":"int64","Value":"x"}]}')
    wait_for(lambda: len(errors) == 2, what="error handler twice")
    assert sorted(type(e).__name__ for e in errors) == ["TaskFailed", "ValueError"]
    failures = {kw["task_id"]: kw for n, kw in seen if n == "task_failure"}
    assert isinstance(failures[r.id]["exception"], ValueError)
    assert failures[r.id]["args"] == [7] and failures[r.id]["sender"] is boom
    assert failures[r.id]["traceback"] is not None
    assert isinstance(failures["task_bad"]["exception"], TaskFailed)
    assert "Reflect task args error" in str(failures["task_bad"]["exception"])
    wait_for(lambda: "task_postrun" in _names(seen, r.id), what="postrun")
    post = next(kw for n, kw in seen if n == "task_postrun" and kw["task_id"] == r.id)
    assert post["state"] == "FAILURE" and isinstance(post["retval"], ValueError)
    assert "task_postrun" not in _names(seen, "task_bad")  # it never ran


def test_pre_and_post_task_handlers_around_run_and_callbacks(
        app: Machinery, start_worker: StartWorker) -> None:
    events: list[str] = []

    @app.task(name="first")
    def first() -> int:
        events.append("run first")
        return 1

    @app.task(name="second")
    def second(x: int) -> None:
        events.append("run second")

    w = start_worker(concurrency=1)

    @w.set_pre_task_handler
    def pre(sig: Signature) -> None:
        events.append(f"pre {sig.name}")

    @w.set_post_task_handler
    def post(sig: Signature) -> None:
        events.append(f"post {sig.name}")

    (first.s() | second.s()).apply_async()
    wait_for(lambda: "post second" in events, what="post second")
    # the post-task handler of `first` runs after its callback was sent (Go defers it)
    assert events.index("pre first") < events.index("run first") < events.index("post first")
    assert events[-3:] == ["pre second", "run second", "post second"]


def test_pre_publish_handler_after_pending_before_publish(app: Machinery, probe: Probe,
                                                          start_worker: StartWorker) -> None:
    seen: list[tuple[str, bool]] = []

    @app.set_pre_publish_handler
    def hook(sig: Signature) -> None:
        sig.headers = {**(sig.headers or {}), "hooked": "yes"}
        seen.append((sig.name, bool(probe.pending("machinery_tasks"))))

    app.send_task("solo")
    group(app.signature("member"), app.signature("member")).apply_async()
    app.set_pre_publish_handler(None)
    app.send_task("after")
    assert seen == [("solo", False)]  # group members do not go through it, as in Go
    msgs = {s.name: s.headers for s in probe.pending("machinery_tasks")}
    assert msgs["solo"] == {"hooked": "yes"} and msgs["after"] == {}
    assert msgs["member"] == {}


def test_pre_consume_handler_false_fetches_nothing(app: Machinery, probe: Probe,
                                                   start_worker: StartWorker) -> None:
    ran: list[int] = []
    allow = threading.Event()

    @app.task(name="n")
    def n(i: int) -> None:
        ran.append(i)

    asked = threading.Event()

    def gate(worker: Any) -> bool:
        asked.set()
        return allow.is_set()

    w = app.worker(concurrency=2, poll_timeout=0.1, delayed_poll_interval=0.05)
    w.set_pre_consume_handler(gate)
    w.start()
    try:
        n.delay(1)
        assert asked.wait(10)
        time.sleep(1.0)
        assert ran == [] and len(probe.pending("machinery_tasks")) == 1
        allow.set()
        wait_for(lambda: ran == [1], what="run once allowed")
    finally:
        w.stop(timeout=10)


def test_stop_returns_what_is_still_running(app: Machinery, start_worker: StartWorker,
                                            record: Any) -> None:
    seen = record(signals.worker_ready, signals.worker_shutdown)
    release = threading.Event()
    started = threading.Event()

    @app.task(name="slow")
    def slow() -> None:
        started.set()
        release.wait(30)

    @app.task(name="quick")
    def quick() -> None:
        pass

    w = app.worker(concurrency=2, poll_timeout=0.1, delayed_poll_interval=0.05).start()
    try:
        r = slow.delay()
        assert started.wait(20)
        assert [t.id for t in w.running()] == [r.id]
        t0 = time.monotonic()
        still = w.stop(timeout=1.0)
        assert time.monotonic() - t0 < 10  # one deadline in all, not per thread
        assert [(t.id, t.name) for t in still] == [(r.id, "slow")]
        assert [n for n, kw in seen if kw["sender"] is w] == ["worker_ready", "worker_shutdown"]
    finally:
        release.set()
    wait_for(lambda: r.state == "SUCCESS", timeout=20, what="slow task finishes anyway")
    w2 = app.worker(concurrency=1, poll_timeout=0.1, delayed_poll_interval=0.05).start()
    q = quick.delay()
    q.get(timeout=20)
    assert w2.stop(timeout=20) == []


def test_retry_backoff_function_writes_retry_timeout_and_eta(
        app: Machinery, probe: Probe, start_worker: StartWorker, record: Any) -> None:
    calls: list[tuple[int, int]] = []

    def backoff(retry_timeout: int, retries: int) -> float:
        calls.append((retry_timeout, retries))
        return 99.5

    @app.task(name="flaky", retry_backoff=backoff, max_retries=3)
    def flaky() -> None:
        raise OSError("down")

    seen = record(signals.task_retry)
    start_worker()
    before = time.time()
    r = flaky.delay()
    wait_for(lambda: probe.delayed_tasks(), timeout=20, what="the retry, delayed")
    again = probe.delayed_tasks()[0]
    assert again.uuid == r.id and again.retry_count == 2
    assert again.retry_timeout == 100  # 99.5 s rounded up: what a Go worker goes on from
    assert again.eta is not None
    due = again.eta.timestamp()
    assert before + 99 <= due <= time.time() + 100
    assert calls == [(0, 0)]
    wait_for(lambda: any(n == "task_retry" for n, _ in seen), what="task_retry")
    retry = next(kw for n, kw in seen if n == "task_retry")
    assert retry["sender"] is flaky and isinstance(retry["reason"], OSError)
    assert retry["request"].id == r.id


@pytest.mark.kinds("memory", "redis")
def test_max_memory_stops_the_worker_after_the_task(app: Machinery) -> None:
    done: list[int] = []

    @app.task(name="eat")
    def eat(i: int) -> None:
        done.append(i)

    w = app.worker(concurrency=1, poll_timeout=0.1, delayed_poll_interval=0.05,
                   max_memory=1)  # 1 KiB: past it after the first task
    w.start()
    try:
        eat.delay(1).get(timeout=20)
        wait_for(lambda: w._stopped.is_set(), timeout=20, what="the worker stops itself")
        assert w.memory_exceeded and done == [1] and w.running() == []
    finally:
        w.stop(timeout=10)
