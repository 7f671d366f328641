"""The Celery side of ``bench.redis_bench`` and ``bench.amqp_bench`` (run only in subprocesses
of the benchmarks).

* worker: ``celery -A bench.celery_app worker --pool threads --concurrency C ...``
* producer: ``python -m bench.celery_app produce N`` times ``add.apply_async(args=[1])`` N
  times, prints ``{"elapsed": s, "cpu": s, "n": N}`` and then (untimed) appends the task ids, in
  send order, to the Redis list given by ``BENCH_IDS_KEY``; with ``BENCH_WARMUP_QUEUE`` set, one
  untimed ``apply_async`` to that queue first (connecting).

The result backend is ``BENCH_REDIS_URL`` (the benchmark's private Redis); the broker is
``BENCH_BROKER_URL`` when set (``amqp://…``: the AMQP benchmark's private RabbitMQ, through
kombu's py-amqp transport, with publisher confirms on: ``confirm_publish``), else the same
Redis.  ``BENCH_PREFETCH_MULTIPLIER`` sets ``worker_prefetch_multiplier`` (the AMQP benchmark
uses 1, so that RabbitMQ's prefetch count is the concurrency, as for the other workers).
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
BROKER_URL = os.environ.get("BENCH_BROKER_URL") or REDIS_URL

app = Celery("bench", broker=BROKER_URL, backend=REDIS_URL)
app.conf.update(
    task_ignore_result=False,
    result_extended=False,
    task_track_started=False,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
if BROKER_URL.startswith(("amqp://", "amqps://", "pyamqp://")):
    # every publish waits for RabbitMQ's basic.ack, as Go Machinery's and machinery_compat's do
    app.conf.broker_transport_options = {"confirm_publish": True}
if os.environ.get("BENCH_PREFETCH_MULTIPLIER"):
    app.conf.worker_prefetch_multiplier = int(os.environ["BENCH_PREFETCH_MULTIPLIER"])


@app.task(name="add")
def add(*nums: int) -> int:
    """The no-op used by every implementation: the sum of its integer arguments."""
    return sum(nums)


def produce(n: int, ids_key: str, warmup_queue: str | None = None) -> None:
    if warmup_queue:  # connect (and declare) before the clock starts
        add.apply_async(args=[1], queue=warmup_queue)
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
    produce(int(sys.argv[2]), os.environ.get("BENCH_IDS_KEY", "bench:ids"),
            os.environ.get("BENCH_WARMUP_QUEUE"))
