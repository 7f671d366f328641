"""The dramatiq side of ``bench.redis_bench`` (run only in subprocesses of the benchmark).

* producer: ``python -m bench.dramatiq_app produce N`` sends ``add.send(1)`` N times, prints
  ``{"elapsed": s, "cpu": s, "n": N}`` and then (untimed) appends each message's result key,
  in send order, to the Redis list given by ``BENCH_IDS_KEY``;
* worker: ``python -m bench.dramatiq_app worker C``: one process, ``dramatiq.Worker`` with C
  threads, until SIGTERM.

Broker and results: dramatiq's own Redis broker and Redis result backend (the ``Results``
middleware, ``store_results=True``) on ``BENCH_REDIS_URL``, JSON encoder, everything else
dramatiq's default except the worker's idle poll: the Redis broker has no blocking fetch, an
idle consumer sleeps with a growing back-off of up to ``worker_timeout`` (1 s by default) and
the benchmark releases the queue to an idle worker, so the worker here polls at most every
100 ms (``worker_timeout=100``) — what the ``dramatiq`` command runs with the default would
start up to a second later.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
#: the worker's longest idle sleep between two fetches, ms (dramatiq's default: 1000)
IDLE_POLL_MS = 100

broker = RedisBroker(url=REDIS_URL)
backend = RedisBackend(url=REDIS_URL)
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="add", store_results=True, max_retries=0)
def add(*nums: int) -> int:
    """The no-op used by every implementation: the sum of its integer arguments."""
    return sum(nums)


def produce(n: int, ids_key: str) -> None:
    client = backend.client
    client.ping()  # connect before the clock starts
    keys: list[str] = []
    append, key, send = keys.append, backend.build_message_key, add.send
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        append(key(send(1)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    for i in range(0, len(keys), 5000):
        client.rpush(ids_key, *keys[i : i + 5000])
    print(json.dumps({"elapsed": elapsed, "cpu": cpu, "n": n}), flush=True)


def work(threads: int) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=IDLE_POLL_MS)
    worker.start()
    print("dramatiq worker started", file=sys.stderr, flush=True)
    stop.wait()
    worker.stop()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("produce", "worker"):
        sys.exit("usage: python -m bench.dramatiq_app produce N | worker THREADS")
    if sys.argv[1] == "produce":
        produce(int(sys.argv[2]), os.environ.get("BENCH_IDS_KEY", "bench:ids"))
    else:
        work(int(sys.argv[2]))
