"""The emitter: which signals give which events (an in-process app on the memory broker,
whose stack keeps no events, with a listener), the bounded buffer and its drop counting,
a store that fails.  The stores themselves are tested on real servers in
tests/integration/test_events.py."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from machinery_compat import Machinery, Retry
from machinery_compat.brokers import memory as memory_broker
from machinery_compat.events import EventsConfig
from machinery_compat.events import emitter as emitter_mod
from machinery_compat.events.emitter import Emitter, emitter_for
from machinery_compat.events.model import Event, decode_batch
from machinery_compat.worker import Worker
from tests.helpers import wait_for


@pytest.fixture
def app() -> Iterator[Machinery]:
    name = f"events-{uuid.uuid4().hex[:8]}"
    a = Machinery(broker=f"memory://{name}", result_backend=f"memory://{name}")
    yield a
    a.close()
    memory_broker.reset(name)


def test_worker_signals_become_events(app: Machinery) -> None:
    seen: list[Event] = []
    em = emitter_for(app, store=False)
    assert em is not None and em.store is None  # the memory stack keeps no events
    em.listeners.append(seen.append)
    tries: list[int] = []

    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    @app.task(name="boom")
    def boom() -> None:
        raise ValueError("kaput")

    @app.task(name="again")
    def again() -> str:
        tries.append(1)
        if len(tries) == 1:
            raise Retry(countdown=0.1)
        return "ok"

    w: Worker = app.worker(concurrency=2, poll_timeout=0.05, delayed_poll_interval=0.05).start()
    try:
        ok = app.send_task("add", args=[1, 2])
        bad = app.send_task("boom")
        retried = app.send_task("again")
        assert ok.get(timeout=10) == 3
        with pytest.raises(Exception, match="kaput"):
            bad.get(timeout=10)
        assert retried.get(timeout=10) == "ok"
        typed = app.build_signature("add", args=[1])
        typed.uuid, typed.headers = f"task_{uuid.uuid4()}", {}
        body = typed.to_json().replace(b'"Type":"int64","Value":1', b'"Type":"bool","Value":1')
        assert b'"bool"' in body  # a value Go's reflect would refuse: FAILURE, not run
        app.broker.push("machinery_tasks", body)  # type: ignore[attr-defined]
        not_run = app.AsyncResult(typed.uuid)
        with pytest.raises(Exception, match="Reflect task args error"):
            not_run.get(timeout=10)
        app.broker.push("machinery_tasks", b"not json")  # type: ignore[attr-defined]
        wait_for(lambda: any(e.type == "task-dead-lettered" for e in seen), 10)
    finally:
        w.stop(timeout=10)
    wait_for(lambda: seen[-1].type == "worker-offline", 5, "worker-offline")
    kinds = [(e.type, e.uuid) for e in seen]
    assert kinds[0] == ("worker-online", "")
    assert kinds[-1] == ("worker-offline", "")
    assert ("task-started", ok.task_id) in kinds and ("task-succeeded", ok.task_id) in kinds
    failed = next(e for e in seen if e.type == "task-failed" and e.uuid == bad.task_id)
    assert failed.exception == "kaput" and failed.runtime is not None and failed.name == "boom"
    assert failed.queue == "machinery_tasks"
    retry = next(e for e in seen if e.type == "task-retried")
    assert retry.uuid == retried.task_id and retry.retries == 0
    assert [t for t, u in kinds if u == retried.task_id] == [
        "task-started", "task-retried", "task-started", "task-succeeded"]
    assert [t for t, u in kinds if u == not_run.task_id] == ["task-received", "task-failed"]
    dead = next(e for e in seen if e.type == "task-dead-lettered")
    assert dead.queue == "machinery_tasks" and "JSON" in dead.reason
    succeeded = next(e for e in seen if e.type == "task-succeeded" and e.uuid == ok.task_id)
    assert succeeded.runtime is not None and 0 <= succeeded.runtime < 5
    online = seen[0]
    assert online.extra["queues"] == ["machinery_tasks"] and online.extra["concurrency"] == 2


def test_producers_emit_sent_only_when_asked(app: Machinery) -> None:
    seen: list[Event] = []
    em = emitter_for(app, store=False)
    assert em is not None
    em.listeners.append(seen.append)
    app.send_task("add", args=[1])
    assert seen == []  # off by default
    app.events_config = EventsConfig(send_events=True)
    r = app.send_task("add", args=[2])
    assert [(e.type, e.uuid, e.name, e.queue) for e in seen] == [
        ("task-sent", r.task_id, "add", "machinery_tasks")]
    assert seen[0].retries == 0
    app.events_config = EventsConfig(send_events=False)
    app.send_task("add", args=[3])
    assert len(seen) == 1


class _SlowStore:
    """An in-process EventStore whose writes wait until released (or fail when told)."""

    kind = "test"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.written: list[Event] = []
        self.fail = False
        self.writing = threading.Event()

    def write(self, batch: bytes, count: int) -> None:
        self.writing.set()
        self.release.wait(10)
        if self.fail:
            raise ConnectionError("store down")
        events, bad = decode_batch(batch)
        assert not bad and len(events) == count
        self.written.extend(events)

    def history(self, since: float | None = None, limit: int | None = None) -> list[Event]:
        return list(self.written)

    def follow(self, since: float | None, poll: float = 1.0) -> Iterator[Event | None]:
        yield None

    def length(self) -> int | None:
        return len(self.written)

    def close(self) -> None:
        pass


def _event(i: int) -> Event:
    return Event("task-started", time.time(), f"t{i}", "add", "q")


def test_a_full_buffer_drops_and_counts_with_one_warning(app: Machinery,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    store = _SlowStore()
    em = Emitter(app, store, EventsConfig(worker_events=True))
    em.max_buffer = 5
    caplog.set_level(logging.WARNING, logger="machinery_compat.events")
    em.emit(_event(0))  # starts the flusher, which takes it and waits in write()
    assert store.writing.wait(5)
    for i in range(1, 9):
        em.emit(_event(i))
    assert em.dropped == 3  # 5 wait, 3 dropped
    full = [r for r in caplog.records if "buffer full" in r.getMessage()]
    assert len(full) == 1
    store.release.set()
    em.stop()
    assert [e.uuid for e in store.written] == ["t0", "t1", "t2", "t3", "t4", "t5"]
    assert em.written == 6 and em.dropped == 3


def test_a_store_that_fails_drops_the_batch_counted_then_recovers(
        app: Machinery, caplog: pytest.LogCaptureFixture) -> None:
    store = _SlowStore()
    store.release.set()
    store.fail = True
    em = Emitter(app, store, EventsConfig(worker_events=True))
    caplog.set_level(logging.INFO, logger="machinery_compat.events")
    em.emit(_event(0))
    em.emit(_event(1))
    wait_for(lambda: em.dropped == 2, 5)
    em.emit(_event(2))
    wait_for(lambda: em.dropped == 3, 5)
    assert len([r for r in caplog.records if "could not be written" in r.getMessage()]) == 1
    store.fail = False
    em.emit(_event(3))
    em.stop()
    assert [e.uuid for e in store.written] == ["t3"]
    assert any("written again" in r.getMessage() for r in caplog.records)


def test_flush_writes_batches_of_at_most_BATCH(app: Machinery) -> None:
    store = _SlowStore()
    store.release.set()
    sizes: list[int] = []
    original = store.write

    def write(batch: bytes, count: int) -> None:
        sizes.append(count)
        original(batch, count)

    store.write = write  # type: ignore[method-assign]
    em = Emitter(app, store, EventsConfig(worker_events=True))
    for i in range(emitter_mod.BATCH * 2 + 7):
        em._buf.append(_event(i))
    em.flush()
    assert sum(sizes) == emitter_mod.BATCH * 2 + 7 and max(sizes) == emitter_mod.BATCH


def test_a_flush_writes_what_waited_and_leaves_what_came_meanwhile(app: Machinery) -> None:
    """Events emitted while a batch is written wait for the next flush: a flusher writing
    until the buffer is empty wrote a few events per round trip under load."""
    store = _SlowStore()
    store.release.set()
    sizes: list[int] = []
    em = Emitter(app, store, EventsConfig(worker_events=True))
    original = store.write

    def write(batch: bytes, count: int) -> None:
        sizes.append(count)
        original(batch, count)
        em._buf.append(_event(1000 + len(sizes)))  # a task thread, meanwhile

    store.write = write  # type: ignore[method-assign]
    for i in range(3):
        em._buf.append(_event(i))
    em.flush()
    assert sizes == [3] and len(em._buf) == 1
    em.flush()
    assert sizes == [3, 1] and len(em._buf) == 1


