"""The taskiq side of ``bench.redis_bench`` (run only in subprocesses of the benchmark).

* producer: ``python -m bench.taskiq_app produce N`` awaits ``add.kiq(1)`` N times, prints
  ``{"elapsed": s, "cpu": s, "n": N}`` and then (untimed) appends the task ids, in send order,
  to the Redis list given by ``BENCH_IDS_KEY``;
* worker: ``taskiq worker bench.taskiq_app:broker --workers 1 --max-async-tasks C``.

Broker and results: taskiq-redis's ``ListQueueBroker`` (LPUSH / BRPOP on the list ``taskiq``)
and ``RedisAsyncResultBackend`` (a result under its task id) on ``BENCH_REDIS_URL``; the task
is a coroutine (taskiq's own way; a plain function would run in a thread pool); everything
else taskiq's default (pickled results, ack when the result is saved) except the broker's
socket timeout (see below).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = "taskiq"
WARMUP_QUEUE = "bench_warmup"

# socket_timeout=None: the broker's BRPOP waits without a timeout, and redis-py 8's default
# 5 s socket timeout would end an idle worker with TimeoutError
broker = ListQueueBroker(REDIS_URL, queue_name=QUEUE, socket_timeout=None).with_result_backend(
    RedisAsyncResultBackend(REDIS_URL))


@broker.task(task_name="add")
async def add(*nums: int) -> int:
    """The no-op used by every implementation: the sum of its integer arguments."""
    return sum(nums)


async def produce(n: int, ids_key: str) -> None:
    await broker.startup()
    try:
        # connect before the clock starts (to another queue: not drained)
        await add.kicker().with_labels(queue_name=WARMUP_QUEUE).kiq(1)
        ids: list[str] = []
        append, kiq = ids.append, add.kiq
        cpu0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            append((await kiq(1)).task_id)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        import redis

        with redis.Redis.from_url(REDIS_URL) as client:
            for i in range(0, len(ids), 5000):
                client.rpush(ids_key, *ids[i : i + 5000])
    finally:
        await broker.shutdown()
    print(json.dumps({"elapsed": elapsed, "cpu": cpu, "n": n}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "produce":
        sys.exit("usage: python -m bench.taskiq_app produce N")
    asyncio.run(produce(int(sys.argv[2]), os.environ.get("BENCH_IDS_KEY", "bench:ids")))
