"""Kill loop on AMQP (issue #9): RabbitMQ broker, Redis result backend.

A Python worker subprocess consuming from RabbitMQ (results and the crash app's run records on
Redis) is ``kill -9``-ed at random moments while ~1,000 tasks run, and restarted each time.
A message is acked only after its task ran, so what a killed worker held (running or
prefetched) is redelivered by RabbitMQ: every task reaches SUCCESS (0 lost); tasks run again
are counted and printed.  The processing-list figures of the tally are Redis-only (0 here);
``left_in_queues`` is the AMQP queue's depth at the end.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import kombu
import pytest
import redis

from .crash_harness import Producer, PyWorker, done_count, kill_loop, tally, wait_all_done

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq]

TASKS = 1000
KILLS = 6


def _alive(worker: PyWorker) -> None:
    assert worker.alive(), f"worker {worker.name} exited:\n{worker.log_tail()}"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def amqp_queue(rabbitmq_url: str) -> Iterator[str]:
    """A queue name of its own on the shared node (deleted afterwards)."""
    name = f"crash_amqp_{uuid.uuid4().hex[:8]}"
    yield name
    with kombu.Connection(rabbitmq_url, connect_timeout=5) as conn:
        conn.default_channel.queue_delete(name)


def _depth(url: str, queue: str) -> int:
    """Messages ready in ``queue``."""
    with kombu.Connection(url, connect_timeout=5) as conn:
        return int(conn.default_channel.queue_declare(queue, passive=True).message_count)


def test_amqp_kill_loop_loses_nothing(rabbitmq_url: str, redis_url: str, client: redis.Redis,
                                      amqp_queue: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(9)
    producer = Producer(redis_url, TASKS, seconds=6.0, seed=1, queue=amqp_queue,
                        broker=rabbitmq_url).start()
    worker = PyWorker(redis_url, tmp_path, queue=amqp_queue, broker=rabbitmq_url)

    def busy() -> bool:
        return not producer.done.is_set() or done_count(client, producer.uuids) < TASKS

    try:
        last, kills = kill_loop(worker.start, client, KILLS, rng, busy=busy)
        producer.join()
        assert not producer.errors, producer.errors[:3]
        wait_all_done(client, producer.uuids, 60, check=lambda: _alive(last))
        assert last.stop() == 0, last.log_tail()
        t = tally(client, producer.uuids, queue=amqp_queue, kills=kills)
        t.left_in_queues = _depth(rabbitmq_url, amqp_queue)
        with capsys.disabled():
            print(f"\n[amqp kill loop] {t.line()}")
        assert kills >= 5, t.line()
        assert t.tasks == TASKS and t.lost == [], t.line()
        assert t.left_in_queues == 0 and t.left_in_processing == 0, t.line()
        # only what a killed worker held (running or prefetched) runs again
        assert t.duplicated <= kills * worker.concurrency * 3, t.line()
    finally:
        worker.kill()
        producer.close()
