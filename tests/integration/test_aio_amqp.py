"""The asyncio API on AMQP for both broker and result backend (Go's per-task state queues).

* the bytes: a task and a group sent by ``app.aio`` leave the same messages in the task
  queue and in every task's state queue (body and properties, aiormq's ``message_id``
  aside) as the sync API;
* round trips through a Python worker: a value, a failure with its exception record (peeked,
  so it is there for a second read), ``states()``, a chain, a group and a chord (the worker
  consumes the group queue);
* consuming reads: what ``app.aio`` consumed is what a sync ``AsyncResult`` of the same
  process reads afterwards (one per-process memory), and ``forget()`` deletes the queues.

Redis (and AMQP + Redis): tests/integration/test_aio.py; Go: interop/tests/test_interop_aio.py.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from typing import Any

import pytest

from machinery_compat import GoTime, Machinery, TaskFailed
from machinery_compat.canvas import chord, group
from machinery_compat.config import AMQPConfig
from machinery_compat.protocol import FAILURE, PENDING, SUCCESS
from machinery_compat.worker import Worker

pytestmark = pytest.mark.rabbitmq

QUEUE = "aio_amqp_tasks"
FIXED_NOW = GoTime.parse("2026-12-04T01:02:03.123456789Z")


@pytest.fixture
def vhost_url(rabbitmq_vhost_url: str) -> str:
    return rabbitmq_vhost_url


@pytest.fixture
def app(vhost_url: str) -> Iterator[Machinery]:
    app = Machinery(broker=vhost_url, result_backend=vhost_url, default_queue=QUEUE)
    # default-routed tasks into QUEUE, which the producer declares (no race with the worker)
    app.config.amqp = AMQPConfig(prefetch_count=16, binding_key=QUEUE)

    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    @app.task(name="div")
    def div(a: int, b: int) -> float:
        return a / b

    yield app
    app.close()


@pytest.fixture
def worker(app: Machinery) -> Iterator[Worker]:
    w = app.worker(concurrency=2, poll_timeout=0.1).start()
    yield w
    w.stop(timeout=10)


def _run(app: Machinery, coro: Any) -> Any:
    async def closing() -> Any:
        async with app.aio:
            return await coro

    return asyncio.run(closing())


def _take(rabbitmq_server: Any, vhost_url: str, queues: list[str]) -> list[Any]:
    """Every message of ``queues`` (body, properties without message_id), taken off them."""
    conn = rabbitmq_server.connection(vhost_url.rsplit("/", 1)[1])
    out: list[Any] = []
    try:
        ch = conn.channel()
        for queue in queues:
            while (msg := ch.basic_get(queue, no_ack=True)) is not None:
                props = {k: v for k, v in msg.properties.items() if k != "message_id"}
                out.append((queue, bytes(msg.body), sorted(props.items())))
        ch.close()
    finally:
        conn.close()
    return sorted(out)


def test_pending_states_and_messages_are_the_sync_bytes(
        app: Machinery, rabbitmq_server: Any, vhost_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GoTime, "now", classmethod(lambda cls: FIXED_NOW))
    add = app.tasks["add"]
    one = app.build_signature("add", [1, 2], task_id="task_aio-amqp", queue=QUEUE,
                              headers={"tenant": "ä"})
    members = group(add.s(1, 1), add.s(2, 2)).to_signatures(queue=QUEUE)
    for send_sync, send_async, sigs in [
            (lambda s: app.send_signature(s[0]), lambda s: app.aio.send_signature(s[0]), [one]),
            (lambda s: app.send_group(s), lambda s: app.aio.send_group(s), members)]:
        queues = [QUEUE, *(s.uuid for s in sigs)]
        send_sync(copy.deepcopy(sigs))
        sync_bytes = _take(rabbitmq_server, vhost_url, queues)
        _run(app, send_async(copy.deepcopy(sigs)))
        async_bytes = _take(rabbitmq_server, vhost_url, queues)
        states = [m for m in sync_bytes if m[0] != QUEUE]
        assert len(states) == len(sigs) and all(b'"PENDING"' in m[1] for m in states)
        assert len(sync_bytes) == 2 * len(sigs) and async_bytes == sync_bytes


def test_round_trips_through_a_python_worker(app: Machinery, worker: Worker) -> None:
    add = app.tasks["add"]

    async def main() -> tuple[Any, ...]:
        aio = app.aio
        r = await aio.send_task("add", args=[1, 2, 3])
        seen = [st.state async for st in r.states(timeout=15, interval=0.02)]
        value = await r.get(timeout=5)
        failing = await aio.send_task("div", args=[1, 0])
        with pytest.raises(ZeroDivisionError) as e:
            await failing.get(timeout=15)
        assert isinstance(e.value, TaskFailed) and e.value.traceback
        again = aio.AsyncResult(failing.id)  # a fresh reader: the consumed state is remembered
        assert await again.state() == FAILURE
        record = await (await aio._result_backend()).get_exception_record(failing.id)
        assert record is not None and record.exc_type == "ZeroDivisionError"  # peeked, still there
        assert await aio.AsyncResult("task_nobody").state() == PENDING
        chain_r = await aio.apply_async(add.s(1, 1) | add.s(5) | add.s(10))
        group_r = await aio.apply_async(group(add.s(1, 1), add.s(2, 2)), send_concurrency=1)
        chord_r = await aio.apply_async(chord([add.s(1), add.s(2), add.s(3)], add.s(100)))
        return (seen, value, await chain_r.get(timeout=20), await group_r.get(timeout=20),
                await chord_r.get(timeout=20))

    seen, *values = _run(app, main())
    assert seen[-1] == SUCCESS and len(seen) == len(set(seen)), seen
    assert values == [6, 17, [2, 4], 106]


def test_consumed_states_are_shared_with_the_sync_api_and_forget_deletes(
        app: Machinery, worker: Worker, rabbitmq_server: Any, vhost_url: str) -> None:
    async def main() -> str:
        r = await app.aio.send_task("div", args=[1, 0])
        assert isinstance(await r.get(timeout=15, propagate=False), TaskFailed)
        return r.id

    task_id = _run(app, main())
    # consumed by app.aio, remembered for the sync API of this process
    assert isinstance(app.AsyncResult(task_id).get(timeout=1, propagate=False), TaskFailed)

    def exc_queue_exists() -> bool:
        conn = rabbitmq_server.connection(vhost_url.rsplit("/", 1)[1])
        try:
            conn.channel().queue_declare(task_id + ".exc", passive=True)
            return True
        except Exception as e:
            assert "NOT_FOUND" in str(e) or "404" in str(e), e
            return False
        finally:
            conn.close()

    assert exc_queue_exists()

    async def forget() -> str:
        r = app.aio.AsyncResult(task_id)
        await r.forget()
        return await r.state()

    assert _run(app, forget()) == PENDING  # the memory dropped, the queues deleted
    assert not exc_queue_exists()
    assert app.AsyncResult(task_id).state == PENDING
