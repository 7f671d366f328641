"""``worker_ready`` is sent before the worker's threads start (an in-process app on the
memory broker): its receivers see every task, also those waiting when the worker starts,
and a receiver that stops the worker leaves the queue untouched."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from machinery_compat import Machinery, signals
from machinery_compat.brokers import memory as memory_broker


@pytest.fixture
def app() -> Iterator[Machinery]:
    name = f"ready-{uuid.uuid4().hex[:8]}"
    a = Machinery(broker=f"memory://{name}", result_backend=f"memory://{name}")

    @a.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    yield a
    a.close()
    memory_broker.reset(name)


def test_receivers_run_before_any_task_of_a_queue_with_messages_waiting(app: Machinery) -> None:
    order: list[str] = []

    def on_ready(sender: Any, **_: Any) -> None:
        order.append(f"ready, threads: {len(sender._threads)}")

    def on_prerun(sender: Any, task_id: str = "", **_: Any) -> None:
        order.append("task")

    results = [app.send_task("add", args=[i]) for i in range(10)]
    signals.worker_ready.connect(on_ready)
    signals.task_prerun.connect(on_prerun)
    w = app.worker(concurrency=4, poll_timeout=0.05).start()
    try:
        assert [r.get(timeout=10) for r in results] == list(range(10))
    finally:
        w.stop(timeout=10)
        signals.worker_ready.disconnect(on_ready)
        signals.task_prerun.disconnect(on_prerun)
    assert order[0] == "ready, threads: 0"
    assert order[1:] == ["task"] * 10


def test_a_receiver_that_stops_the_worker_leaves_the_queue_untouched(app: Machinery) -> None:
    waiting = app.send_task("add", args=[1])

    def stop_it(sender: Any, **_: Any) -> None:
        sender.stop(timeout=5)

    signals.worker_ready.connect(stop_it)
    try:
        w = app.worker(concurrency=2, poll_timeout=0.05).start()
    finally:
        signals.worker_ready.disconnect(stop_it)
    assert w._threads == []
    assert w.processed == 0
    assert waiting.state == "PENDING"
    assert app.broker.pending_tasks("machinery_tasks")[0].uuid == waiting.task_id
    # a new worker runs it
    w2 = app.worker(concurrency=1, poll_timeout=0.05).start()
    try:
        assert waiting.get(timeout=10) == 1
    finally:
        w2.stop(timeout=10)
