"""Events and stats (#16) with a Go worker and a Python worker on one Redis queue (v2,
go-redis): what Go's traffic shows in ``app.stats()`` (queue depth, task states in the
backend) and what it does not (events: Go emits none)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from interop.tests.harness import Stack, StackSpec, wait_for
from interop.tests.pyapp import make_app
from machinery_compat.events import EventsConfig, history

pytestmark = [pytest.mark.interop, pytest.mark.redis]

_serial = itertools.count(1)


def test_go_tasks_show_as_depth_and_states_not_as_events(go_bins: Any, interop_redis: Any,
                                                         new_db: Callable[[], str]) -> None:
    url = new_db()
    queue = f"q_events_{next(_serial)}"
    stack = Stack(StackSpec("redis", "v2-goredis"), url, url, url, queue, interop_redis)
    py = make_app(url, queue, only={"py_only"})
    app = py.app
    app.events_config = EventsConfig(worker_events=True, send_events=True)
    add = {"name": "add", "wait": False,
           "args": [{"type": "int64", "value": 1}, {"type": "int64", "value": 2}]}
    sent = stack.produce([add, add, add])  # Go's producer, before any worker runs
    go_ids = [s["uuid"] for s in sent]
    assert all(s["sent"] is True for s in sent), sent
    before = app.stats()
    assert before["queues"][queue]["depth"] == 3
    assert before["states"]["counts"] == {"PENDING": 3}
    assert "add" not in before["tasks"] and before["events"]["count"] == 0
    go = stack.go_worker().start()
    worker = app.worker(concurrency=2, poll_timeout=0.1).start()
    try:
        mine = [app.send_task("py_only", args=["hi"]) for _ in range(2)]
        assert [r.get(timeout=30) for r in mine] == ["py:HI", "py:HI"]
        wait_for(lambda: len(go.tasks(name="add")) == 3, 30, "Go ran the three adds")
        assert {e["uuid"] for e in go.tasks(name="add")} == set(go_ids)
    finally:
        worker.stop(timeout=10)
        go.stop()
    app.close()  # the last events are written

    def settled() -> dict[str, Any] | None:
        s = app.stats()
        return s if s["states"]["counts"].get("SUCCESS") == 5 else None

    after = wait_for(settled, 15, "five SUCCESS states")
    assert after["queues"][queue]["depth"] == 0  # Go drained its messages: the broker says so
    assert after["tasks"]["py_only"]["enqueued"] == 2
    assert after["tasks"]["py_only"]["succeeded"] == 2
    assert "add" not in after["tasks"]  # Go sent and ran them: no events
    kept = history(app)
    assert not any(e.uuid in go_ids for e in kept)
    assert {e.type for e in kept} >= {"task-sent", "task-started", "task-succeeded",
                                      "worker-online", "worker-offline"}
    py.close()
