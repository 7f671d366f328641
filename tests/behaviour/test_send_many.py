"""``app.send_many``: Go's SendTask for many tasks in bulk, on every broker and backend — the
same bytes as ``send_task``, each task's PENDING state, the hooks and signals per task."""

from __future__ import annotations

from typing import Any

import pytest

from machinery_compat import Machinery, Signature, signals
from tests.helpers import wait_for

from .conftest import Probe, StartWorker

#: where the messages are in the order given: the Redis brokers (one write per chunk) and the
#: memory broker; AMQP publishes from several threads, SQS/Pub/Sub/Azure keep no order
ORDERED = ("redis", "memory", "redis+memory", "redis-sentinel", "redis+memcache",
           "redis+mongodb", "memory+dynamodb")


@pytest.mark.mixed
def test_send_many_sends_like_send_task_in_chunks(app: Machinery, probe: Probe,
                                                  app_kind: str,
                                                  start_worker: StartWorker) -> None:
    @app.task(name="add")
    def add(*xs: int) -> int:
        return sum(xs)

    before: list[str] = []
    handled: list[str] = []

    def on_publish(sender: Any, body: Signature, **kwargs: Any) -> None:
        before.append(body.uuid)

    signals.before_task_publish.connect(on_publish)
    app.set_pre_publish_handler(lambda sig: handled.append(sig.uuid))
    try:
        items: list[Any] = [("add", [i, 1]) for i in range(10)]
        items += [add.s(100, i) for i in range(10)]
        items.append(app.build_signature("add", [7, 7], task_id="task_bulk-given-id"))
        items.append(("add", [40, 2], {"headers": {"k": "v"}}))
        results = app.send_many(items, chunk=5)
    finally:
        signals.before_task_publish.disconnect(on_publish)
        app.set_pre_publish_handler(None)
    ids = [r.id for r in results]
    assert ids[20] == "task_bulk-given-id" and len(set(ids)) == 22
    assert before == ids and handled == ids
    assert all(r.state == "PENDING" for r in results[::7])
    bodies = probe.messages()
    sigs = [Signature.from_json(b) for b in bodies]
    got = [s.uuid for s in sigs]
    if app_kind in ORDERED:
        assert got == ids
    else:
        assert sorted(got) == sorted(ids)
    assert sigs[got.index(ids[21])].headers == {"k": "v"}
    # the bytes send_task writes for the same task
    app.send_task("add", args=[0, 1], task_id="task_send-task-twin")
    twin = next(b for b in probe.messages() if b"task_send-task-twin" in b)
    assert bodies[got.index(ids[0])] == twin.replace(b"task_send-task-twin", ids[0].encode())
    start_worker(concurrency=4)
    want = [i + 1 for i in range(10)] + [100 + i for i in range(10)] + [14, 42]
    assert [r.get(timeout=30) for r in results] == want
    assert app.AsyncResult("task_send-task-twin").get(timeout=30) == 1


def test_send_many_refuses_what_is_not_a_task(app: Machinery) -> None:
    with pytest.raises(TypeError, match="send_many"):
        app.send_many([42])
    with pytest.raises(ValueError, match="chunk"):
        app.send_many([("add", [1])], chunk=0)
    assert app.send_many([]) == []


@pytest.mark.kinds("redis")
def test_send_many_on_redis_is_one_write_per_chunk(app: Machinery) -> None:
    """PENDING then the message for each task, a whole chunk in one write."""
    fast = app.broker.fast  # type: ignore[attr-defined]
    writes: list[list[tuple[Any, ...]]] = []
    execute = fast.execute

    def recording(*commands: tuple[Any, ...]) -> list[Any]:
        writes.append(list(commands))
        return execute(*commands)  # type: ignore[no-any-return]

    fast.execute = recording
    try:
        results = app.send_many([("add", [i]) for i in range(7)], chunk=3)
    finally:
        del fast.execute
    assert [len(w) for w in writes] == [6, 6, 2]
    flat = [c for w in writes for c in w]
    assert [c[0] for c in flat] == ["SET", "RPUSH"] * 7
    assert [c[1] for c in flat[::2]] == [r.id for r in results]
    wait_for(lambda: all(r.state == "PENDING" for r in results), timeout=5)
