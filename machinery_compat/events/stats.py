"""``app.stats()`` / ``machinery-compat stats``: what the events, the broker and the backend
tell about the traffic.

From the **events kept** (Python workers and producers only; see :mod:`.settings` for how
many are kept), per queue and per task name: ``enqueued`` (task-sent: producers with
``send_events``), ``received`` (taken but not run), ``started``, ``succeeded``, ``failed``,
``retried``, ``dead_lettered``; per task name the runtime percentiles (p50/p90/p99, nearest
rank, seconds) of the succeeded and failed runs; the workers whose last event is recent and
not worker-offline.

From the **broker** (every producer and worker, Go included): each queue's ``depth`` (the
queues seen in events and the default queue), the ``delayed`` count (ETA'd messages:
Redis's ``delayed_tasks`` set; ``None`` where the broker cannot count them).

From a **Redis result backend** (everyone's tasks, Go's included): ``states``, the number of
task states kept per state (PENDING … FAILURE), from a ``SCAN`` of keys ``task_*`` (the ids
Machinery and this library make), at most :data:`STATE_SCAN_LIMIT` of them.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Final

from .._redis import mget_all
from .model import (
    DEAD_LETTERED,
    FAILED,
    RECEIVED,
    RETRIED,
    SENT,
    STARTED,
    SUCCEEDED,
    WORKER_OFFLINE,
    WORKER_TYPES,
    Event,
)

logger = logging.getLogger(__name__)

#: event type -> the count it adds to
COUNTS: Final = {SENT: "enqueued", RECEIVED: "received", STARTED: "started",
                 SUCCEEDED: "succeeded", FAILED: "failed", RETRIED: "retried",
                 DEAD_LETTERED: "dead_lettered"}
#: the queue or task name of an event without one (a dead letter whose bytes had none)
UNKNOWN: Final = "(unknown)"
#: task-state keys scanned at most
STATE_SCAN_LIMIT: Final = 100_000
#: a worker with no event for this long is no longer listed (3 heartbeats)
WORKER_SILENCE: Final = 15.0


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile ``p`` (0-100) of ascending values (None when empty)."""
    if not sorted_values:
        return None
    rank = max(math.ceil(p / 100 * len(sorted_values)), 1)
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _blank() -> dict[str, int]:
    return dict.fromkeys(COUNTS.values(), 0)


def aggregate(events: Iterable[Event], now: float | None = None) -> dict[str, Any]:
    """The event part of the stats (pure)."""
    queues: dict[str, dict[str, int]] = defaultdict(_blank)
    tasks: dict[str, dict[str, Any]] = defaultdict(_blank)
    runtimes: dict[str, list[float]] = defaultdict(list)
    workers: dict[str, Event] = {}
    n = 0
    first = last = None
    for e in events:
        n += 1
        first = e.timestamp if first is None else min(first, e.timestamp)
        last = e.timestamp if last is None else max(last, e.timestamp)
        key = COUNTS.get(e.type)
        if key is not None:
            queues[e.queue or UNKNOWN][key] += 1
            tasks[e.name or UNKNOWN][key] += 1
            if e.runtime is not None and e.type in (SUCCEEDED, FAILED):
                runtimes[e.name or UNKNOWN].append(e.runtime)
        elif e.type in WORKER_TYPES:
            wid = f"{e.hostname}/{(e.extra or {}).get('pid', '')}"
            seen = workers.get(wid)
            if seen is None or seen.timestamp <= e.timestamp:
                workers[wid] = e
    for name, values in runtimes.items():
        values.sort()
        tasks[name]["runtime"] = {"count": len(values), "p50": percentile(values, 50),
                                  "p90": percentile(values, 90), "p99": percentile(values, 99),
                                  "max": values[-1]}
    clock = time.time() if now is None else now
    alive = []
    for e in workers.values():
        if e.type == WORKER_OFFLINE or clock - e.timestamp > WORKER_SILENCE:
            continue
        alive.append({"hostname": e.hostname, "last_event": e.type, "timestamp": e.timestamp,
                      **(e.extra or {})})
    alive.sort(key=lambda w: (str(w["hostname"]), str(w.get("pid"))))
    return {"events": {"count": n, "first": first, "last": last},
            "queues": {q: dict(c) for q, c in sorted(queues.items())},
            "tasks": {t: dict(c) for t, c in sorted(tasks.items())},
            "workers": alive}


def _broker_part(app: Any, queues: Sequence[str]) -> tuple[dict[str, int | None], int | None, str]:
    from ..ops import Unsupported, broker_ops

    try:
        ops = broker_ops(app.broker)
    except Unsupported as e:
        return dict.fromkeys(queues), None, str(e)
    try:
        depths = {q: ops.depth(q).messages for q in queues}
        try:
            delayed = ops.delayed_count(queues if ops.kind == "sqs" else ())
        except Unsupported:
            delayed = None
        return depths, delayed, ops.kind
    finally:
        ops.close()


def backend_states(app: Any, limit: int = STATE_SCAN_LIMIT) -> dict[str, Any] | None:
    """Task states kept per state, on a Redis result backend (None elsewhere)."""
    backend = app.backend
    if "RedisBackend" not in {c.__name__ for c in type(backend).__mro__}:
        return None
    client = backend.client
    counts: Counter[str] = Counter()
    scanned = 0
    batch: list[Any] = []

    def count(keys: list[Any]) -> None:
        for raw in mget_all(client, keys):
            if raw is None:
                continue
            try:
                state = json.loads(raw).get("State")
            except (ValueError, AttributeError):
                continue
            if isinstance(state, str):
                counts[state] += 1

    complete = True
    for key in client.scan_iter(match="task_*", count=1000, _type="string"):
        if scanned >= limit:
            complete = False
            break
        scanned += 1
        batch.append(key)
        if len(batch) >= 1000:
            count(batch)
            batch = []
    if batch:
        count(batch)
    return {"counts": dict(sorted(counts.items())), "scanned": scanned, "complete": complete}


def stats(app: Any, *, limit: int | None = None) -> dict[str, Any]:
    """Events (the newest ``limit`` kept, else all), broker depths and backend states; see
    the module docs.  A stack that keeps no events gives zero counts and says so in
    ``events.store``."""
    from .stores import describe_none, store_for

    store = store_for(app)
    if store is None:
        part = aggregate(())
        part["events"]["store"] = None
        part["events"]["note"] = describe_none(app)
    else:
        try:
            part = aggregate(store.history(None, limit))
            part["events"]["store"] = store.kind
        finally:
            store.close()
    queues = sorted({*part["queues"], app.config.default_queue} - {UNKNOWN})
    depths, delayed, kind = _broker_part(app, queues)
    for q in queues:
        part["queues"].setdefault(q, _blank())["depth"] = depths.get(q)
    part["broker"] = kind
    part["delayed"] = delayed
    try:
        part["states"] = backend_states(app)
    except Exception as e:  # the stats are still worth printing
        logger.warning("task states not counted: %s", e)
        part["states"] = None
    part["generated"] = time.time()
    return part
