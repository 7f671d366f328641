"""The Celery side of ``bench.redis_bench`` (run only in subprocesses of the benchmark).

* worker: ``celery -A bench.celery_app worker --pool threads --concurrency C ...``
* producer: ``python -m bench.celery_app produce N`` times ``add.apply_async(args=[1])`` N
  times, prints ``{"elapsed": s, "cpu": s, "n": N}`` and then (untimed) appends the task ids, in
  send order, to the Redis list given by ``BENCH_IDS_KEY``.

Broker and result backend are both ``BENCH_REDIS_URL`` (the benchmark's private Redis).
Everything not set here is Celery's default: JSON serializer, prefetch multiplier 4, results
written once (no ``task_track_started``), ``result_extended`` off.
"""

from __future__ import annotations

import json
import os
import sys
import time

from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_ignore_result=False,
    result_extended=False,
    task_track_started=False,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="add")
def add(*nums: int) -> int:
    """The no-op used by every implementation: the sum of its integer arguments."""
    return sum(nums)


def produce(n: int, ids_key: str) -> None:
    ids: list[str] = []
    append = ids.append
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        append(add.apply_async(args=[1]).id)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    client = app.backend.client
    for i in range(0, len(ids), 5000):
        client.rpush(ids_key, *ids[i : i + 5000])
    print(json.dumps({"elapsed": elapsed, "cpu": cpu, "n": n}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "produce":
        sys.exit("usage: python -m bench.celery_app produce N")
    produce(int(sys.argv[2]), os.environ.get("BENCH_IDS_KEY", "bench:ids"))
