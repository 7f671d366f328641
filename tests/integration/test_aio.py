"""The asyncio API (``app.aio``) on real servers: Redis, and AMQP with a Redis backend.

* the bytes: a task, a delayed task, a group and a chord sent by ``app.aio`` store and
  publish exactly the bytes the sync API does (same Signatures, the clock pinned): Redis
  lists/ZSET and state keys, RabbitMQ message bodies and properties (aiormq's own
  ``message_id`` aside);
* round trips through a Python worker: ``await get()``, ``await state()``, ``states()``,
  failures with their exception record, chains, groups, chords;
* what the async API refuses (brokers and result backends other than Redis and AMQP) and how.

The AMQP result backend: tests/integration/test_aio_amqp.py.  The Go side:
interop/tests/test_interop_aio.py.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from machinery_compat import GoTime, Machinery, TaskFailed, signals
from machinery_compat.canvas import chord, group
from machinery_compat.config import AMQPConfig
from machinery_compat.exceptions import ConfigError, PublishError
from machinery_compat.protocol import PENDING, SUCCESS, Signature
from machinery_compat.worker import Worker

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "aio_tasks"
FIXED_NOW = GoTime.parse("2026-12-04T01:02:03.123456789Z")
STACKS = ["redis", pytest.param("amqp+redis", marks=pytest.mark.rabbitmq)]


@pytest.fixture(params=STACKS)
def stack(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def broker_url(stack: str, redis_url: str, request: pytest.FixtureRequest) -> str:
    if stack == "redis":
        return redis_url
    return str(request.getfixturevalue("rabbitmq_vhost_url"))


@pytest.fixture
def aio_app(broker_url: str, redis_url: str) -> Iterator[Machinery]:
    app = Machinery(broker=broker_url, result_backend=redis_url, default_queue=QUEUE)
    # AMQP: what a worker holds at once is amqp.prefetch_count (Go's default 3), also on the
    # asyncio pool; default-routed tasks go to QUEUE (binding_key), which the producer then
    # declares itself: with Go's default key a task sent before the worker bound QUEUE lands
    # in the queue "machinery_task" only (the test would wait for it in vain)
    app.config.amqp = AMQPConfig(prefetch_count=32, binding_key=QUEUE)

    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    @app.task(name="div")
    def div(a: int, b: int) -> float:
        return a / b

    @app.task(name="sum_all")
    def sum_all(*nums: int) -> int:
        return sum(nums)

    yield app
    app.close()


@pytest.fixture
def worker(aio_app: Machinery) -> Iterator[Worker]:
    w = aio_app.worker(concurrency=2, poll_timeout=0.1, delayed_poll_interval=0.05).start()
    yield w
    w.stop(timeout=10)


@pytest.fixture
def stored(stack: str, redis_client: Any, request: pytest.FixtureRequest
           ) -> Iterator[Callable[..., list[Any]]]:
    """``stored(task_ids)``: everything the send left, then deleted: the state keys' bytes,
    the queued messages (Redis: list and ZSET members with scores; AMQP: body and
    properties of each message in the queue, taken off it)."""
    conn = None
    if stack != "redis":
        server = request.getfixturevalue("rabbitmq_server")
        vhost = str(request.getfixturevalue("rabbitmq_vhost_url")).rsplit("/", 1)[1]
        conn = server.connection(vhost)

    def take(task_ids: list[str], queues: tuple[str, ...] = ()) -> list[Any]:
        out: list[Any] = [redis_client.get(t) for t in task_ids]
        out += [redis_client.get(k) for k in redis_client.keys("group_*")]
        redis_client.delete(*task_ids, *redis_client.keys("group_*"))
        if conn is None:
            out += [redis_client.lrange(QUEUE, 0, -1),
                    redis_client.zrange("delayed_tasks", 0, -1, withscores=True)]
            redis_client.delete(QUEUE, "delayed_tasks")
            return out
        ch = conn.channel()
        messages: list[Any] = []  # sorted: group members are published concurrently
        try:
            for queue in (QUEUE, *queues):
                while (msg := ch.basic_get(queue, no_ack=True)) is not None:
                    props = {k: v for k, v in msg.properties.items() if k != "message_id"}
                    messages.append((queue, bytes(msg.body), sorted(props.items())))
        finally:
            ch.close()
        return out + sorted(messages)

    yield take
    if conn is not None:
        conn.close()


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _closing(app: Machinery, coro: Any) -> Any:
    async with app.aio:
        return await coro


# -- the same bytes -----------------------------------------------------------------------
def test_send_task_stores_the_sync_bytes(aio_app: Machinery, stored: Callable[..., list[Any]],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """send_task (a mix of Go types, headers, priority), sync then async: same bytes."""
    monkeypatch.setattr(GoTime, "now", classmethod(lambda cls: FIXED_NOW))
    opts: dict[str, Any] = dict(task_id="task_aio-bytes", queue=QUEUE, priority=3,
                                headers={"tenant": "ä"}, retry_count=2)
    args = [1, -2.5, "ß", True, [1, 2], ["x"], 2**64 - 1]
    aio_app.send_task("go_only", args=args, **opts)
    sync_bytes = stored(["task_aio-bytes"])
    _run(_closing(aio_app, aio_app.aio.send_task("go_only", args=args, **opts)))
    async_bytes = stored(["task_aio-bytes"])
    assert sync_bytes[0] is not None and b'"PENDING"' in sync_bytes[0]
    assert any(b"task_aio-bytes" in repr(x).encode() for x in sync_bytes[1:])
    assert async_bytes == sync_bytes


def test_delayed_group_and_chord_store_the_sync_bytes(
        aio_app: Machinery, stored: Callable[..., list[Any]], stack: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same Signatures sent by both APIs: a group, a chord, a delayed task (Redis: its
    ZSET score is its ETA; AMQP: in Go's delay queue, declared with 64-bit x-message-ttl and
    x-expires by the sync producer, then again by aiormq with smaller integer types, which
    RabbitMQ accepts as the same arguments): same stored and published bytes."""
    monkeypatch.setattr(GoTime, "now", classmethod(lambda cls: FIXED_NOW))
    add = aio_app.tasks["add"]
    members = group(add.s(1, 1), add.s(2, 2), add.s(3)).to_signatures(queue=QUEUE)
    ch_members, _callback = chord([add.s(4), add.s(5)], aio_app.signature("sum_all")
                                  ).to_signatures(queue=QUEUE)
    due = GoTime(FIXED_NOW.unix_ns + 10**10)  # in 10 s of the pinned clock
    monkeypatch.setattr("time.time_ns", lambda: FIXED_NOW.unix_ns)
    delayed = aio_app.build_signature("add", [7], task_id="task_aio-eta", eta=due, queue=QUEUE)
    delay_queues = () if stack == "redis" else (aio_app.broker.delay_queue(QUEUE, 10_000)[0],)
    sends: list[tuple[Callable[[Any], Any], Callable[[Any], Any], list[Signature],
                      tuple[str, ...]]] = [
        (lambda m: aio_app.send_group(m), lambda m: aio_app.aio.send_group(m), members, ()),
        (lambda m: aio_app.send_group(m, 1), lambda m: aio_app.aio.send_group(m, 1), ch_members,
         ()),
        (lambda m: aio_app.send_signature(m[0]), lambda m: aio_app.aio.send_signature(m[0]),
         [delayed], delay_queues),
    ]
    for send_sync, send_async, sigs, queues in sends:
        ids = [s.uuid for s in sigs]
        send_sync(copy.deepcopy(sigs))
        sync_bytes = stored(ids, queues)
        _run(_closing(aio_app, send_async(copy.deepcopy(sigs))))
        async_bytes = stored(ids, queues)
        assert all(x is not None for x in sync_bytes[:len(ids)])
        assert len(sync_bytes) > len(ids) and async_bytes == sync_bytes


# -- round trips --------------------------------------------------------------------------
def test_send_and_await_results(aio_app: Machinery, worker: Worker) -> None:
    async def main() -> None:
        r = await aio_app.aio.send_task("add", args=[1, 2, 3])
        assert await r.get(timeout=15) == 6
        assert await r.state() == SUCCESS and await r.successful()
        failing = await aio_app.aio.send_task("div", args=[1, 0])
        with pytest.raises(ZeroDivisionError) as e:  # the TaskFailed is one, as in sync
            await failing.get(timeout=15)
        assert isinstance(e.value, TaskFailed) and e.value.traceback
        assert "division by zero" in str(e.value)
        assert await failing.failed()
        assert await aio_app.aio.AsyncResult("task_nobody").state() == PENDING

    _run(_closing(aio_app, main()))


def test_states_stream_until_ready(aio_app: Machinery, worker: Worker) -> None:
    async def main() -> list[str]:
        r = await aio_app.aio.send_task("add", args=[2, 2], countdown=0.5)
        return [st.state async for st in r.states(timeout=15, interval=0.02)]

    seen = _run(_closing(aio_app, main()))
    assert seen[0] == PENDING and seen[-1] == SUCCESS, seen
    assert len(seen) == len(set(seen))


def test_canvas(aio_app: Machinery, worker: Worker) -> None:
    add, sum_all = aio_app.tasks["add"], aio_app.tasks["sum_all"]

    async def main() -> tuple[Any, ...]:
        aio = aio_app.aio
        chain_r = await aio.apply_async(add.s(1, 1) | add.s(5) | add.s(10))
        group_r = await aio.apply_async(group(add.s(1, 1), add.s(2, 2), add.s(3, 3)),
                                        send_concurrency=2)
        chord_r = await aio.apply_async(chord([add.s(1), add.s(2), add.s(3)], sum_all.s(100)))
        sig_r = await aio.apply_async(add.s(4), queue=QUEUE)
        return (await chain_r.get(timeout=20), await group_r.get(timeout=20),
                await chord_r.get(timeout=20), await sig_r.get(timeout=20),
                await group_r.completed_count())

    assert _run(_closing(aio_app, main())) == (17, [2, 4, 6], 106, 4, 3)


def test_many_sends_from_one_loop(aio_app: Machinery, worker: Worker) -> None:
    """100 concurrent sends and reads on one loop (one connection per server)."""
    async def main() -> list[Any]:
        results = await asyncio.gather(*(aio_app.aio.send_task("add", args=[i, 1])
                                         for i in range(100)))
        return await asyncio.gather(*(r.get(timeout=30) for r in results))

    assert _run(_closing(aio_app, main())) == [i + 1 for i in range(100)]


def test_a_second_loop_gets_its_own_connections(aio_app: Machinery, worker: Worker) -> None:
    """Connections belong to a loop: each asyncio.run gets its own (closed by its close())."""
    for n in range(3):
        assert _run(_closing(aio_app, _send_get(aio_app, n))) == n + 1
    assert not aio_app.aio._loops


async def _send_get(app: Machinery, n: int) -> Any:
    return await (await app.aio.send_task("add", args=[n, 1])).get(timeout=15)


# -- refused ------------------------------------------------------------------------------
def test_other_result_backends_are_refused(redis_url: str) -> None:
    app = Machinery(broker=redis_url, result_backend="memcache://127.0.0.1:1")
    with pytest.raises(ConfigError, match="Redis or AMQP result backend"):
        _run(app.aio.send_task("add", args=[1]))


def test_other_brokers_are_refused() -> None:
    app = Machinery(broker="memory://", result_backend="redis://127.0.0.1:1/0")
    with pytest.raises(ConfigError, match="Redis and AMQP brokers"):
        _run(app.aio.send_task("add", args=[1]))


# -- worker --pool asyncio ----------------------------------------------------------------
@pytest.fixture
def async_tasks(aio_app: Machinery) -> dict[str, Any]:
    """``async def`` tasks, recording the thread and loop each ran on."""
    seen: dict[str, Any] = {"threads": set(), "loops": set(), "running": 0, "peak": 0,
                            "flaky_calls": 0}

    @aio_app.task(name="nap")
    async def nap(n: int) -> int:
        seen["threads"].add(threading.current_thread().name)
        seen["loops"].add(id(asyncio.get_running_loop()))
        seen["running"] += 1
        seen["peak"] = max(seen["peak"], seen["running"])
        await asyncio.sleep(0.3)
        seen["running"] -= 1
        return n * 2

    @aio_app.task(name="flaky")
    async def flaky(n: int) -> int:
        seen["flaky_calls"] += 1
        await asyncio.sleep(0)
        if seen["flaky_calls"] == 1:
            raise ConnectionError("first call fails")
        return n

    @aio_app.task(name="async_fail")
    async def async_fail() -> None:
        await asyncio.sleep(0)
        raise ValueError("bad value")

    return seen


def test_asyncio_pool_runs_async_tasks_on_one_loop(aio_app: Machinery,
                                                   async_tasks: dict[str, Any]) -> None:
    """20 async tasks of 0.3 s each, concurrency 20: on one loop in one thread, together;
    a RetryCount retry, a failure with its exception record, a chain (callbacks), all
    through the same worker code as threads."""
    prerun: list[str] = []

    def on_prerun(sender: Any, task_id: str, **kwargs: Any) -> None:
        prerun.append(task_id)

    signals.task_prerun.connect(on_prerun, sender="nap")
    w = aio_app.worker(pool="asyncio", concurrency=20, poll_timeout=0.1,
                       delayed_poll_interval=0.05).start()
    try:
        assert w.concurrency == 20
        nap, flaky = aio_app.tasks["nap"], aio_app.tasks["flaky"]

        async def main() -> tuple[Any, ...]:
            aio = aio_app.aio
            t0 = time.monotonic()
            naps = await asyncio.gather(*(aio.send_task("nap", args=[i]) for i in range(20)))
            values = await asyncio.gather(*(r.get(timeout=20) for r in naps))
            took = time.monotonic() - t0
            retried = await aio.send_task("flaky", args=[7], retry_count=1)
            failing = await aio.send_task("async_fail")
            with pytest.raises(ValueError, match="bad value") as e:
                await failing.get(timeout=20)
            chained = await aio.apply_async(nap.s(1) | nap.s() | flaky.si(5))
            return values, took, await retried.get(timeout=20), e.value, \
                await chained.get(timeout=20)

        values, took, retried, failure, chained = _run(_closing(aio_app, main()))
    finally:
        signals.task_prerun.disconnect(on_prerun, sender="nap")
        assert w.stop(timeout=10) == []
    assert values == [i * 2 for i in range(20)]
    assert len(prerun) == 20 + 2  # the naps and the chain's two
    assert took < 3.0, took  # one at a time would take 6 s
    assert async_tasks["peak"] > 5
    assert async_tasks["threads"] == {"mc-asyncio"} and len(async_tasks["loops"]) == 1
    assert retried == 7 and async_tasks["flaky_calls"] == 3  # retry, then the chain's step
    assert isinstance(failure, TaskFailed) and failure.exc_type == "ValueError"
    assert chained == 5
    assert w.outcomes["run"] == 20 + 2 + 1 + 3


def test_asyncio_pool_cli_worker_killed_mid_task(stack: str, redis_url: str, broker_url: str,
                                                tmp_path: Any) -> None:
    """``machinery-compat worker -P asyncio`` (a real process) takes an async task and is
    SIGKILLed while it awaits: the message is not lost — RabbitMQ redelivers it, or on Redis
    the next worker re-queues the dead worker's processing list — and a second worker runs
    it to SUCCESS."""
    started = tmp_path / "started"
    (tmp_path / "aio_cli_app.py").write_text(textwrap.dedent(f"""
        import asyncio, pathlib
        from machinery_compat import Machinery
        from machinery_compat.config import Config, RedisConfig
        cfg = Config(broker={broker_url!r}, result_backend={redis_url!r},
                     default_queue={QUEUE!r}, redis=RedisConfig(heartbeat_ttl=1))
        app = Machinery(config=cfg)

        @app.task(name="hang")
        async def hang(n: int) -> int:
            pathlib.Path({str(started)!r}).write_text("x")
            await asyncio.sleep(60)
            return -1
    """))
    app = Machinery(broker=broker_url, result_backend=redis_url, default_queue=QUEUE)

    @app.task(name="hang")
    async def hang(n: int) -> int:
        return n + 1

    r = app.send_task("hang", args=[41], queue=QUEUE)  # (AMQP: before any worker declared it)
    proc = subprocess.Popen([sys.executable, "-m", "machinery_compat", "worker", "-A",
                             "aio_cli_app", "-P", "asyncio", "-c", "4", "-l", "warning"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}"))
    try:
        deadline = time.monotonic() + 30
        while not started.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the CLI worker never started the task"
            time.sleep(0.05)
        assert r.state == "STARTED"
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    w = app.worker(pool="asyncio", concurrency=2, poll_timeout=0.1, heartbeat_ttl=1).start()
    try:
        assert r.get(timeout=30) == 42
    finally:
        w.stop(timeout=10)
        app.close()


def test_asyncio_pool_options_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    from machinery_compat.cli import main

    app = Machinery(broker="redis://127.0.0.1:1/0")
    with pytest.raises(ConfigError, match="one process"):
        app.worker(pool="asyncio", processes=2)
    with pytest.raises(ConfigError, match="'threads' or 'asyncio'"):
        app.worker(pool="gevent")
    assert main(["worker", "-A", "nowhere:app", "-P", "asyncio", "--processes", "2"]) == 2
    assert "-P asyncio runs one event loop in one process" in capsys.readouterr().err


@pytest.mark.rabbitmq
def test_amqp_publisher_reconnects_and_gives_up_on_what_cannot_work(
        rabbitmq_vhost_url: str, redis_url: str, rabbitmq_server: Any,
        rabbitmq_restart: Callable[..., None]) -> None:
    """The node restarts between two sends: the second goes on a new connection.  A queue
    declared with other arguments: PRECONDITION_FAILED raises PublishError at once (no
    20 s of retries)."""
    vhost = rabbitmq_vhost_url.rsplit("/", 1)[1]
    conn = rabbitmq_server.connection(vhost)
    try:
        conn.channel().queue_declare("aio_other", durable=True, auto_delete=False,
                                     arguments={"x-max-length": 5})
    finally:
        conn.close()
    app = Machinery(broker=rabbitmq_vhost_url, result_backend=redis_url, default_queue=QUEUE)

    async def refused() -> float:
        t0 = time.monotonic()
        with pytest.raises(PublishError, match="PRECONDITION_FAILED"):
            await app.aio.send_task("go_only", args=[3], queue="aio_other")
        return time.monotonic() - t0

    # one loop throughout; the node restarts from this (main) thread while the loop waits
    # (a node started from a thread that ends gets SIGTERM: its die-with-parent signal)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(app.aio.send_task("go_only", args=[1], queue=QUEUE))
        rabbitmq_restart()
        loop.run_until_complete(app.aio.send_task("go_only", args=[2], queue=QUEUE))
        assert loop.run_until_complete(refused()) < 5
    finally:
        loop.run_until_complete(app.aio.close())
        loop.close()
        app.close()
    conn = rabbitmq_server.connection(vhost)
    try:
        ch = conn.channel()
        bodies = []
        while (msg := ch.basic_get(QUEUE, no_ack=True)) is not None:
            bodies.append(json.loads(msg.body)["Args"][0]["Value"])
    finally:
        conn.close()
    assert bodies == [1, 2]
