"""Crash-safe Redis consumption against real crashes and a real Redis restart.

* kill loop: a Python worker subprocess is ``kill -9``-ed at random moments while ~1,000 tasks
  run, and restarted each time: every task reaches SUCCESS (0 lost); duplicates (tasks that
  had started when their worker died, run again) are counted and printed;
* mixed pool: the same with a real Go Machinery worker (``interop/bin/mcworker``) consuming the
  same queue throughout;
* Redis restarted (``appendonly yes``: the data survives) for 3 s while ~1,000 tasks run:
  0 lost, no worker exits.

The long versions (5,000 tasks, 20+ kills, a 20 s outage) are ``make soak`` (bench/soak.py).
Worker processes are fresh interpreters started under ``setpriv --pdeathsig KILL``; this
process never forks.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.services import RedisServer, in_ci

from .crash_harness import GoWorker, Producer, PyWorker, kill_loop, tally, wait_all_done

pytestmark = pytest.mark.slow

TASKS = 1000
KILLS = 6


def _show(capsys: pytest.CaptureFixture[str], title: str, line: str) -> None:
    with capsys.disabled():
        print(f"\n[{title}] {line}")


def _busy(producer: Producer, client: redis.Redis) -> bool:
    """Work is left: the producer is still sending, or tasks are queued."""
    return not producer.done.is_set() or int(client.llen("crash_tasks")) > 0


def _alive(worker: PyWorker) -> None:
    assert worker.alive(), f"worker {worker.name} exited:\n{worker.log_tail()}"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def test_kill_loop_loses_nothing(redis_url: str, client: redis.Redis, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(9)
    producer = Producer(redis_url, TASKS, seconds=6.0, seed=1).start()
    worker = PyWorker(redis_url, tmp_path)
    try:
        last, kills = kill_loop(worker.start, client, KILLS, rng,
                                busy=lambda: _busy(producer, client))
        producer.join()
        wait_all_done(client, producer.uuids, 90, check=lambda: _alive(last))
        assert last.stop() == 0, last.log_tail()
        t = tally(client, producer.uuids, kills=kills)
        _show(capsys, "kill loop", t.line())
        assert kills >= 5, t.line()
        assert t.lost == [], t.line()
        assert t.left_in_queues == 0 and t.left_in_processing == 0, t.line()
        assert t.duplicated <= kills * worker.concurrency * 3, t.line()  # only what was held
        assert not client.keys("machinery_compat:heartbeat:*")
        assert client.hlen("machinery_compat:workers") == 0  # the dead were recovered
    finally:
        worker.kill()
        producer.close()


def test_mixed_pool_with_go_worker_keeps_working(redis_url: str, client: redis.Redis,
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    if not GoWorker.available():
        if in_ci():
            pytest.fail("interop/bin/mcworker is missing (make bootstrap builds it)")
        pytest.skip("interop/bin/mcworker is not built (interop/build.sh)")
    go = GoWorker(redis_url, tmp_path).start()
    rng = random.Random(5)
    # 12 s of sending: a Python worker restart takes seconds on a loaded machine (CI runs two
    # pytest processes), and once the producer is done the Go worker drains the rest alone
    producer = Producer(redis_url, TASKS, seconds=12.0, task="add").start()
    worker = PyWorker(redis_url, tmp_path)
    try:
        last, kills = kill_loop(worker.start, client, KILLS, rng, min_runs=5,
                                busy=lambda: _busy(producer, client))
        producer.join()
        wait_all_done(client, producer.uuids, 90)
        assert go.alive(), "the Go worker died"
        assert last.stop() == 0, last.log_tail()
        assert go.stop() == 0
        t = tally(client, producer.uuids, extra_runs=go.runs, kills=kills)
        t.extra["run_by_go"] = sum(go.runs.values())
        _show(capsys, "mixed Go + Python pool", t.line())
        assert kills >= 5, t.line()
        assert t.lost == [], t.line()
        assert t.extra["run_by_go"] > 0 and sum(t.runs.values()) > t.extra["run_by_go"]
        assert t.left_in_queues == 0 and t.left_in_processing == 0, t.line()
        for u, value in zip(producer.uuids[:50], range(50), strict=True):
            assert producer.app.AsyncResult(u).get(timeout=5) == value + 1
    finally:
        worker.kill()
        go.kill()
        producer.close()


@pytest.fixture
def persistent_redis(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    """A private redis-server with ``appendonly yes``: what it holds survives a restart."""
    return redis_server_factory(extra_args=("--appendonly", "yes", "--appendfsync", "always"))


def test_redis_restart_for_3s_loses_nothing(persistent_redis: RedisServer, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    url = persistent_redis.url
    client = persistent_redis.client()
    producer = Producer(url, TASKS, seconds=4.0, ms_range=(2, 20), seed=3).start()
    workers = [PyWorker(url, tmp_path, name=f"py{i}").start() for i in range(2)]
    try:
        deadline = time.monotonic() + 30
        while client.llen("crash:runs") < TASKS // 4:  # a quarter done: mid-run
            assert time.monotonic() < deadline, "workers did not start running tasks"
            time.sleep(0.02)
        persistent_redis.stop()
        down = time.monotonic()
        time.sleep(3.0)
        for w in workers:
            assert w.alive(), f"{w.name} exited while Redis was down:\n{w.log_tail()}"
        persistent_redis.start()
        outage = time.monotonic() - down
        client = persistent_redis.client()
        producer.join(60)
        wait_all_done(client, producer.uuids, 90)
        for w in workers:
            assert w.alive(), f"{w.name} exited:\n{w.log_tail()}"
        for w in workers:
            assert w.stop() == 0, w.log_tail()
        t = tally(client, producer.uuids)
        t.extra["outage_s"] = f"{outage:.1f}"
        t.extra["producer_retries"] = len(producer.errors)
        _show(capsys, "redis restart 3 s", t.line())
        assert t.lost == [], t.line()
        assert t.left_in_queues == 0 and t.left_in_processing == 0, t.line()
    finally:
        for w in workers:
            w.kill()
        producer.close()
        client.close()
