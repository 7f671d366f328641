"""The app that crash tests and ``bench/soak.py`` run in worker subprocesses
(``machinery-compat worker -A tests.integration.apps.crash_app:app``).

Environment: ``MC_CRASH_URL`` (Redis URL of the result backend, and of the broker unless
``MC_CRASH_BROKER`` is set), ``MC_CRASH_BROKER`` (optional broker URL, e.g. ``amqp://...``:
AMQP broker, Redis results; the queue is bound with the queue name as binding key),
``MC_CRASH_QUEUE`` (default ``crash_tasks``), ``MC_CRASH_TTL`` (heartbeat TTL in seconds, default 1),
``MC_CRASH_CRASH_SAFE`` (``0`` turns crash-safe consumption off).

Every ``work`` and ``sleep`` task appends its UUID to the Redis list ``crash:started`` when it starts and to
``crash:runs`` just before it returns (``add`` only to ``crash:runs``), so a test counts how
many times each task started and ran to the end (retrying through a Redis outage: a run is
never left unrecorded because Redis was down).  Each entry is ``"<task UUID> <run token>"``:
a write retried after a lost reply records the same run twice, which the counting ignores.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

import redis

from machinery_compat import Machinery
from machinery_compat.config import AMQPConfig, Config, RedisConfig

RUNS_KEY = "crash:runs"
STARTED_KEY = "crash:started"

URL = os.environ.get("MC_CRASH_URL", "redis://127.0.0.1:6379/0")
BROKER = os.environ.get("MC_CRASH_BROKER") or URL
QUEUE = os.environ.get("MC_CRASH_QUEUE", "crash_tasks")
_amqp: dict[str, Any] = (
    {"amqp": AMQPConfig(binding_key=QUEUE)} if BROKER.startswith(("amqp://", "amqps://")) else {}
)
config = Config.from_url(
    BROKER, URL, default_queue=QUEUE, **_amqp,
    redis=RedisConfig(heartbeat_ttl=int(os.environ.get("MC_CRASH_TTL", "1")),
                      crash_safe=os.environ.get("MC_CRASH_CRASH_SAFE", "1") != "0",
                      read_timeout=3, write_timeout=3, connect_timeout=3),
)
app = Machinery(config=config)
_runs = redis.Redis.from_url(URL, socket_timeout=3, socket_connect_timeout=3)


def _record(entry: str, key: str = RUNS_KEY) -> None:
    while True:
        try:
            _runs.rpush(key, entry)
            return
        except redis.RedisError:
            time.sleep(0.1)


@app.task(name="work", bind=True)
def work(self: Any, n: int, ms: int) -> int:
    """Record the start, sleep ``ms`` milliseconds, record the run, return ``n``."""
    run = f"{self.request.id} {secrets.token_hex(6)}"
    _record(run, STARTED_KEY)
    time.sleep(ms / 1000)
    _record(run)
    return n


@app.task(name="sleep", bind=True)
def sleep(self: Any, ms: int) -> int:
    """Go's ``sleep`` (interop/bin/mcworker): sleep ``ms`` milliseconds, return ``ms``;
    recorded like ``work``."""
    run = f"{self.request.id} {secrets.token_hex(6)}"
    _record(run, STARTED_KEY)
    time.sleep(ms / 1000)
    _record(run)
    return ms


@app.task(name="add", bind=True)
def add(self: Any, *nums: int) -> int:
    """The sum (as Go's ``add`` in interop/bin/mcworker), recorded as a run."""
    _record(f"{self.request.id} {secrets.token_hex(6)}")
    return sum(nums)
