"""Python producers and workers on a Redis Cluster (``redis.cluster_enabled`` / several
addresses), with Go's key names: every step touches one slot (machinery_compat._redis_cluster).

On the session's six-node cluster (tests/services/redis_cluster_svc.py: three masters, one
replica each).  The failover test runs ``CLUSTER FAILOVER`` on the replica of the master that
holds the queue's slot while 2,000 tasks are produced and drained, and counts every result."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.cluster import ClusterNode

from machinery_compat import Machinery, chord, group
from machinery_compat._redis_cluster import cluster_processing_key, slot_tag
from machinery_compat.brokers.redis import RedisBroker
from machinery_compat.config import Config
from machinery_compat.config.model import RedisConfig
from machinery_compat.exceptions import ConfigError
from machinery_compat.periodic.lock import RedisLock
from tests.helpers import retrying_sender, wait_for
from tests.services.redis_cluster_svc import RedisClusterNodes

pytestmark = pytest.mark.slow


def _app(cluster: RedisClusterNodes, queue: str, *, url: str | None = None,
         wait_replicas: int = 0, enabled: bool = True) -> Machinery:
    cfg = Config.default()
    cfg.broker = cfg.result_backend = url or cluster.url()
    cfg.default_queue = queue
    cfg.redis = RedisConfig(cluster_enabled=enabled, connect_timeout=2, read_timeout=2,
                            write_timeout=2, wait_replicas=wait_replicas)
    app = Machinery(config=cfg)

    @app.task(name="add")
    def add(*xs: int) -> int:
        return sum(xs)

    return app


@pytest.fixture
def queue(redis_cluster: RedisClusterNodes) -> Iterator[str]:
    name = f"cluster-{uuid.uuid4().hex[:8]}"
    yield name
    redis_cluster.wait_ok()
    with redis_cluster.client() as c:
        c.delete(name)


def test_processing_lists_share_their_queues_slot(redis_cluster: RedisClusterNodes) -> None:
    """CLUSTER KEYSLOT of each processing list is its queue's, for Go's bare names and names
    with a hash tag of their own."""
    for q in ("machinery_tasks", "cluster-q", "a{tag}b", "{x}"):
        key = cluster_processing_key("host-1-abcd", q)
        assert key is not None
        assert redis_cluster.keyslot(key) == redis_cluster.keyslot(q), q
    assert slot_tag("a}b") is None and cluster_processing_key("w", "a}b") is None


def test_cluster_path_orders_pushes_after_the_writes_before_them() -> None:
    """A call's pushes go out once every earlier command is acknowledged (PENDING before its
    message); a MULTI…EXEC group runs one command after the other; the mover's rule for a
    member's queue is MOVE_DELAYED's."""
    from machinery_compat._redis_cluster import ClusterPath, _routing_key

    waves = ClusterPath._waves(None, [  # type: ignore[arg-type]
        ("SET", "task_1", "p"), ("SET", "task_2", "p"), ("RPUSH", "q", "m1"), ("RPUSH", "q", "m2"),
        ("MULTI",), ("SET", "hb", "x"), ("HSET", "reg", "w", "x"), ("EXEC",), ("LREM", "p", 1, "m")])
    assert [[c[1] for c in w] for w in waves] == [
        ["task_1", "task_2"], ["q", "q"], ["hb"], ["reg"], ["p"]]
    assert _routing_key(b'{"RoutingKey":"other"}', "dq") == "other"
    assert _routing_key(b'{"routingKey":"lower"}', "dq") == "lower"
    assert _routing_key(b'{"RoutingKey":""}', "dq") == "dq"
    assert _routing_key(b"not json", "dq") == "dq.dead"


def test_tasks_canvas_etas_and_the_lock_on_the_cluster(redis_cluster: RedisClusterNodes,
                                                       queue: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """One seed address and ``cluster_enabled`` (v1's ``cluster_mode`` maps to it): tasks,
    a group (member states on three masters), a chord, countdowns moved by two competing
    movers (each pushed once), crash-safe consumption, the periodic lock."""
    caplog.set_level(logging.INFO, logger="machinery_compat.worker")
    app = _app(redis_cluster, queue, url=redis_cluster.url(1))
    worker = app.worker(concurrency=4, poll_timeout=0.2, delayed_poll_interval=0.05).start()
    other = _app(redis_cluster, queue).worker(concurrency=1, poll_timeout=0.2,
                                              delayed_poll_interval=0.05).start()
    try:
        assert app.send_task("add", args=[1, 2]).get(timeout=20) == 3
        members = group(app.signature("add", args=[i, i]) for i in range(6))
        assert members.apply_async().get(timeout=20) == [0, 2, 4, 6, 8, 10]
        both = chord([app.signature("add", args=[i]) for i in range(4)],
                     app.signature("add", args=[100]))
        assert both.apply_async().get(timeout=20) == 106
        sent = time.time()
        later = [app.send_task("add", args=[i, 1], countdown=0.5) for i in range(20)]
        assert [r.get(timeout=20) for r in later] == [i + 1 for i in range(20)]
        assert time.time() - sent >= 0.5
    finally:
        worker.stop()
        other.stop()
    with redis_cluster.client() as c:
        assert c.llen(queue) == 0
        assert c.zcard("delayed_tasks") == 0
        assert not c.hgetall("machinery_compat:workers")  # both unregistered on stop
        states = c.mget_nonatomic([r.task_id for r in later])
    # each countdown ran once (one mover won each ZREM and pushed it): SUCCESS, run once
    assert all(s is not None and b'"State":"SUCCESS"' in s for s in states)
    received = [r.getMessage() for r in caplog.records if r.getMessage().endswith(" received")]
    assert [sum(r.task_id in m for m in received) for r in later] == [1] * len(later)
    lock = RedisLock(app.broker.client)  # type: ignore[attr-defined]
    key = f"machinery_lock_{uuid.uuid4().hex}"
    value = time.time_ns() + 5_000_000_000
    assert lock.acquire(key, value) is True
    assert lock.acquire(key, value) is False
    assert lock.state(key).holder is not None


def test_competing_movers_push_each_due_task_once(redis_cluster: RedisClusterNodes,
                                                  queue: str) -> None:
    """Four movers at once on 300 due members (``delayed_tasks`` and the queue on different
    masters): each member is pushed by the one mover whose ``ZREM`` removed it."""
    app = _app(redis_cluster, queue)
    broker: RedisBroker = app.broker  # type: ignore[assignment]
    due = time.time_ns() - 1
    bodies = [f'{{"UUID":"task_{i}","Name":"add","RoutingKey":"{queue}"}}' for i in range(300)]
    broker.fast.execute(*[("ZADD", broker.delayed_tasks_key, due, b) for b in bodies])
    start = threading.Barrier(4)
    moved: list[int] = []

    def mover() -> None:
        start.wait()
        moved.append(broker.move_due_delayed(1000))

    threads = [threading.Thread(target=mover) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with redis_cluster.client() as c:
        pushed = c.lrange(queue, 0, -1)
        assert c.zcard(broker.delayed_tasks_key) == 0
    assert sum(moved) == 300 and sorted(pushed) == sorted(b.encode() for b in bodies)


def test_a_dead_workers_messages_come_back(redis_cluster: RedisClusterNodes, queue: str) -> None:
    """A crash-safe worker that took messages and died (no heartbeat): another one re-queues
    them to the head of their queue (single-slot steps) with the redeliveries header."""
    app = _app(redis_cluster, queue)
    broker: RedisBroker = app.broker  # type: ignore[assignment]
    for i in range(3):
        app.send_task("add", args=[i])
    dead = broker.consumer([queue], heartbeat_ttl=0.5)
    taken = dead.fetch([queue], 2, 0.1)
    assert len(taken) == 2
    dead._stop.set()  # type: ignore[attr-defined]  # dies: the heartbeat expires
    time.sleep(0.8)
    alive = broker.consumer([queue], heartbeat_ttl=0.5)
    try:
        assert alive.recover_dead() == 2  # type: ignore[attr-defined]
        with redis_cluster.client() as c:
            assert c.llen(queue) == 3
            head = c.lrange(queue, 0, 1)
        assert all(b'"redeliveries":"1"' in m for m in head)
    finally:
        alive.stop_consuming()  # type: ignore[attr-defined]


def test_go_style_fetch_on_queues_of_several_slots(redis_cluster: RedisClusterNodes,
                                                   queue: str) -> None:
    """Crash-safe off (LPOP/BLPOP, Go's way) on two queues of different slots: a BLPOP on
    both would be CROSSSLOT; it blocks on the first a while and polls the other."""
    app = _app(redis_cluster, queue)
    broker: RedisBroker = app.broker  # type: ignore[assignment]
    other = f"{queue}-other"
    assert redis_cluster.keyslot(other) != redis_cluster.keyslot(queue)
    try:
        began = time.monotonic()
        assert broker.fetch([queue, other], 1, 0.3) == []
        assert time.monotonic() - began < 0.3  # 0.1 s on the first queue
        broker.fast.execute(("RPUSH", other, b"m"))
        got = broker.fetch([queue, other], 1, 0.3)
        assert [(d.body, d.queue) for d in got] == [(b"m", other)]
    finally:
        with redis_cluster.client() as c:
            c.delete(other)


def test_a_cluster_url_with_a_db_is_refused(redis_cluster: RedisClusterNodes) -> None:
    cfg = Config.default()
    cfg.broker = cfg.result_backend = redis_cluster.url() + "/1"
    cfg.redis = RedisConfig(cluster_enabled=True)
    with pytest.raises(ConfigError, match="DB 0 only"):
        Machinery(config=cfg).send_task("add", args=[1])


TASKS = 2000


def test_a_write_with_wait_sent_to_a_master_turned_replica_goes_to_the_new_master(
        redis_cluster: RedisClusterNodes) -> None:
    """A slot map older than a failover sends a write (and ``WAIT``) to the old master, now a
    replica: its MOVED sends the write again to the new master, and its "WAIT cannot be used
    with replica instances" does not fail the call (seen in CI: a worker's state write failed
    with it, and the message stayed in its processing list)."""
    from machinery_compat._redis_cluster import ClusterPath

    with redis_cluster.client() as c:
        path = ClusterPath(c, wait_replicas=1)
        key = f"cluster-wait-{uuid.uuid4().hex[:8]}"
        server = redis_cluster.replica_of(redis_cluster.master_for(key))
        replica = ClusterNode(server.host, server.port, server_type="replica",
                              redis_connection=redis.Redis(host=server.host, port=server.port))
        real = path._node
        sent_to: list[int] = []

        def stale_first(command: Any) -> Any:
            node = replica if not sent_to else real(command)
            sent_to.append(node.port)
            return node

        path._node = stale_first  # type: ignore[method-assign]
        assert path.execute(("SET", key, "v")) == [b"OK"]
        assert sent_to[0] == replica.port and sent_to[-1] != replica.port
        assert c.get(key) == b"v"
        c.delete(key)
        replica.redis_connection.close()


def test_a_failover_during_2000_tasks_loses_none(redis_cluster: RedisClusterNodes,
                                                queue: str) -> None:
    """``CLUSTER FAILOVER`` on the replica of the master holding the queue's slot while a
    producer sends 2,000 tasks one by one (a failed send retried, as a caller would) and a
    crash-safe worker drains them, both with ``redis.wait_replicas: 1`` (WAIT on each node's
    connection): every result stored; producer and worker follow the new slot map by
    themselves, the worker never exits."""
    app = _app(redis_cluster, queue, wait_replicas=1)
    worker = app.worker(concurrency=4, poll_timeout=0.2).start()
    ids = [f"task_{uuid.uuid4()}" for _ in range(TASKS)]
    send_errors: list[str] = []

    producer = retrying_sender(app, ids, send_errors, name="cluster-producer")
    try:
        with redis_cluster.client() as c:
            wait_for(lambda: sum(1 for s in c.mget_nonatomic(ids[:400]) if s) >= 300,
                     timeout=60, what="300 tasks sent before the failover")
        old = redis_cluster.master_for(queue)
        new = redis_cluster.failover(old)
        assert redis_cluster.master_for(queue).port == new.port != old.port
        producer.join(timeout=180)
        assert not producer.is_alive()

        def done() -> int:
            with redis_cluster.client() as c:
                states = c.mget_nonatomic(ids)
            return sum(1 for s in states if s is not None and b'"State":"SUCCESS"' in s)

        wait_for(lambda: done() == TASKS, timeout=120,
                 what=f"all {TASKS} results after the failover")
        print(f"send errors during the failover: {len(send_errors)} {sorted(set(send_errors))}")
        assert all(t.is_alive() for t in worker._threads), "a worker thread exited"
    finally:
        producer.join(timeout=5)
        worker.stop()


def test_operator_reads_and_requeue_across_slots(redis_cluster: RedisClusterNodes,
                                                  queue: str) -> None:
    """The operator side on a cluster: a dead letter list in another slot than its queue is
    requeued message by message (copy, then remove), bytes unchanged; heartbeat records and
    the backend's group reads span several nodes (MGET split per node)."""
    from machinery_compat.ops import broker_ops
    from machinery_compat.ops.heartbeat import store_for

    app = _app(redis_cluster, queue)
    ops = broker_ops(app.broker)
    dead = ops.dead_place(queue)
    client = app.broker.client  # type: ignore[attr-defined]
    assert client.keyslot(dead) != client.keyslot(queue)
    bodies = [f"not json {i}".encode() for i in range(3)]
    client.rpush(dead, *bodies)
    try:
        assert ops.dead_requeue(queue, 2) == 2
        assert client.lrange(queue, 0, -1) == bodies[:2]
        assert client.lrange(dead, 0, -1) == bodies[2:]
        assert ops.dead_requeue(queue, 10) == 1
        assert client.lrange(queue, 0, -1) == bodies and client.llen(dead) == 0
    finally:
        client.delete(dead)
    store = store_for(app)
    assert store is not None
    keys = [f"machinery_compat.worker.test-{i}" for i in range(6)]
    assert len({client.keyslot(k) for k in keys}) > 1
    for i in range(6):
        store.put(keys[i], {"worker": f"test-{i}"}, ttl=30)
    try:
        assert {r["worker"] for r in store.records()} >= {f"test-{i}" for i in range(6)}
    finally:
        for k in keys:
            store.delete(k)
    ids = [app.send_task("add", args=[i]).task_id for i in range(6)]
    states = app.backend.get_states(ids)
    assert [s.state if s else None for s in states] == ["PENDING"] * 6
