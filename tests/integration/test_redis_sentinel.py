"""Python producers and workers through Redis Sentinel (``redis.master_name``), as Go v2's
go-redis FailoverClient: the URL's addresses are the sentinels, ``redis.sentinel_password``
authenticates to them, the master they name holds every key (no script changes: one master).

On the session's sentinel set (tests/services/redis_cluster_svc.py: one master, one replica,
three password-protected sentinels).  The failover test moves the master while 2,000 tasks
are produced and drained, and counts every result."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from machinery_compat import Machinery, chord, group
from machinery_compat.config import Config
from machinery_compat.config.model import RedisConfig
from tests.helpers import retrying_sender, wait_for
from tests.services.redis_cluster_svc import SENTINEL_PASSWORD, RedisSentinelSet

pytestmark = pytest.mark.slow


def _app(sentinels: RedisSentinelSet, queue: str, *, password: str = SENTINEL_PASSWORD,
         timeout: int = 2, wait_replicas: int = 0) -> Machinery:
    cfg = Config.default()
    cfg.broker = cfg.result_backend = sentinels.url()
    cfg.default_queue = queue
    cfg.redis = RedisConfig(master_name=sentinels.master_name, sentinel_password=password,
                            connect_timeout=timeout, read_timeout=timeout,
                            write_timeout=timeout, wait_replicas=wait_replicas)
    app = Machinery(config=cfg)

    @app.task(name="add")
    def add(*xs: int) -> int:
        return sum(xs)

    return app


@pytest.fixture
def queue(redis_sentinel: RedisSentinelSet) -> Iterator[str]:
    name = f"sentinel-{uuid.uuid4().hex[:8]}"
    yield name
    redis_sentinel.wait_stable()
    with redis_sentinel.master().client() as c:
        c.delete(name)


def test_tasks_canvas_and_etas_through_the_sentinels(redis_sentinel: RedisSentinelSet,
                                                     queue: str) -> None:
    app = _app(redis_sentinel, queue)
    worker = app.worker(concurrency=4, poll_timeout=0.2, delayed_poll_interval=0.05).start()
    try:
        assert app.send_task("add", args=[1, 2]).get(timeout=20) == 3
        members = group(app.signature("add", args=[i, i]) for i in range(5))
        assert members.apply_async().get(timeout=20) == [0, 2, 4, 6, 8]
        both = chord([app.signature("add", args=[i]) for i in range(4)],
                     app.signature("add", args=[100]))
        assert both.apply_async().get(timeout=20) == 106
        sent = time.time()
        assert app.send_task("add", args=[40, 2], countdown=0.5).get(timeout=20) == 42
        assert time.time() - sent >= 0.5
        probe = app.send_task("add", args=[7], task_id=f"task_{uuid.uuid4()}")
        assert probe.get(timeout=20) == 7
    finally:
        worker.stop()
    # the states live on the master the sentinels name, as Go's FailoverClient writes them
    with redis_sentinel.master().client() as direct:
        stored = direct.get(probe.task_id)
    assert stored is not None and b'"State":"SUCCESS"' in stored


def test_a_send_refused_by_a_replica_goes_again_to_the_master(
        redis_sentinel: RedisSentinelSet, queue: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The connection a send takes reaches the replica (a sentinel still naming the old
    master right after a failover; CI saw it twice): the replica refuses the PENDING write
    and the push (READONLY), so the send goes once more, on a new connection, to the master
    the sentinels name now; the task is queued once and its PENDING stored."""
    app = _app(redis_sentinel, queue)
    try:
        pool = app.broker.client.connection_pool
        pool.disconnect(inuse_connections=True)  # this thread's connection: connect anew
        # (redis-py's connections ask the pool's proxy for the master when they connect)
        replica, real = redis_sentinel.replica(), pool.proxy.get_master_address
        answers: list[tuple[str, int]] = []

        def stale_first() -> tuple[str, int]:
            answers.append((replica.host, replica.port) if not answers else real())
            return answers[-1]

        monkeypatch.setattr(pool.proxy, "get_master_address", stale_first)
        with caplog.at_level("WARNING", logger="machinery_compat._redis"):
            res = app.send_task("add", args=[2, 3])
        assert answers[0] == (replica.host, replica.port) and len(answers) == 2
        assert "READONLY" in caplog.text
        with redis_sentinel.master().client() as c:
            assert c.llen(queue) == 1
            assert b'"State":"PENDING"' in c.get(res.task_id)
    finally:
        app.close()


def test_a_wrong_sentinel_password_is_a_clear_error(redis_sentinel: RedisSentinelSet,
                                                    queue: str) -> None:
    app = _app(redis_sentinel, queue, password="wrong")
    with pytest.raises(Exception, match=r"(?i)auth|sentinel|password") as err:
        app.send_task("add", args=[1])
    assert "wrong" not in str(err.value)


TASKS = 2000


def _states(sentinels: RedisSentinelSet, ids: list[str]) -> dict[str, int]:
    """How many of ``ids`` are in each state on the master now (``missing``: no state)."""
    counts: dict[str, int] = {}
    with sentinels.master().client() as c:
        for raw in c.mget(ids):
            state = "missing" if raw is None else raw.split(b'"State":"')[1].split(b'"')[0].decode()
            counts[state] = counts.get(state, 0) + 1
    return counts


@pytest.mark.parametrize("how", ["SENTINEL FAILOVER", "master killed"])
def test_a_failover_during_2000_tasks_loses_none(redis_sentinel: RedisSentinelSet,
                                                queue: str, how: str) -> None:
    """The master moves (``SENTINEL FAILOVER``, or SIGKILL and the sentinels promote the
    replica) while a producer sends 2,000 tasks one by one (a failed send retried, as a
    caller would) and a crash-safe worker drains them, both with ``redis.wait_replicas: 1``:
    every task's result is stored on the new master; the producer and the worker reconnect
    by themselves, the worker never exits.

    Without ``wait_replicas`` the same run lost 476-1,597 of the 2,000 (the writes made on
    the old master between the replica's promotion and ``+switch-master``, thrown away when
    the old master resynced as a replica); Go's FailoverClient has the same window."""
    app = _app(redis_sentinel, queue, wait_replicas=1)
    worker = app.worker(concurrency=4, poll_timeout=0.2).start()
    ids = [f"task_{uuid.uuid4()}" for _ in range(TASKS)]
    send_errors: list[str] = []

    producer = retrying_sender(app, ids, send_errors, name="sentinel-producer")
    try:
        old = redis_sentinel.master()
        with old.client() as c:
            wait_for(lambda: sum(1 for i in ids[:400] if c.exists(i)) >= 300, timeout=60,
                     what="300 tasks sent before the failover")
        if how == "SENTINEL FAILOVER":
            new = redis_sentinel.failover()
        else:
            new = redis_sentinel.kill_master()
            # the new master has no replica until the dead one is back (a supervisor would
            # restart it): with wait_replicas 1 writes fail, and are retried, until then
            redis_sentinel.restart_dead()
        assert new.port != old.port
        producer.join(timeout=180)
        assert not producer.is_alive()

        def done() -> int:
            with redis_sentinel.master().client() as c:
                states = c.mget(ids)
            return sum(1 for s in states if s is not None and b'"State":"SUCCESS"' in s)

        try:
            wait_for(lambda: done() == TASKS, timeout=120,
                     what=f"all {TASKS} results after the failover")
        except AssertionError as e:
            where = {}
            for server in redis_sentinel.servers:
                with server.client() as c:
                    where[server.port] = (c.execute_command("ROLE")[0], c.dbsize(),
                                          c.llen(queue))
            raise AssertionError(f"{e}: {_states(redis_sentinel, ids)}; servers {where}; "
                                 f"master {redis_sentinel.master().port}; "
                                 f"{len(send_errors)} send errors") from None
        print(f"send errors during the failover: {len(send_errors)} {sorted(set(send_errors))}")
        assert all(t.is_alive() for t in worker._threads), "a worker thread exited"
    finally:
        producer.join(timeout=5)
        worker.stop()
        redis_sentinel.restart_dead()
