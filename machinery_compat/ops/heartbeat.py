"""Worker heartbeats: each Python worker says it is alive, so ``machinery-compat status``
lists it.

A worker that starts (``worker_ready``) gets a thread that writes, every
:data:`INTERVAL` seconds, a small JSON record with an expiry of :data:`TTL_FACTOR` times
that; the worker's ``worker_shutdown`` stops the thread and deletes the record.  A worker
killed without a shutdown disappears once its record expires.  The record::

    {"id": "…", "hostname": "4242@host", "host": "host", "pid": 4242,
     "queues": ["machinery_tasks"], "concurrency": 8, "processed": 1234,
     "started": "2026-01-01T12:00:00+00:00", "last_beat": "2026-01-01T12:05:00+00:00",
     "interval": 5.0, "ttl": 15.0, "version": "0.1.0", "store": "redis"}

``hostname`` is the worker's ``-n`` name (default ``<pid>@<host>``); ``processed`` (tasks done) is read from the worker by the heartbeat thread: nothing is added
to the work of a task.  Where it is kept:

* a **Redis** broker, else a Redis result backend: the key
  ``machinery_compat.worker.<host>.<pid>.<n>`` (``SET … PX``) in that database;
* a **DynamoDB** result backend (with a non-Redis broker, e.g. SQS): an item of the
  ``task_states`` table whose ``TaskUUID`` is ``machinery_compat.worker.<host>.<pid>.<n>``,
  with the record in the attribute ``Worker`` and its expiry in ``TTL`` (DynamoDB's TTL
  removes it eventually; readers ignore expired ones).  No Machinery client ever asks for
  such a UUID;
* an **AMQP** broker with an AMQP result backend (an AMQP-only stack): messages in the
  durable queue ``machinery_compat.workers`` (default exchange), each beat one message with a per-message
  ``expiration`` of the TTL; at shutdown a last message marks the worker stopped.  ``status``
  browses the queue (``basic.get``, then every message nacked back) and keeps each worker's
  newest record.  Go never declares or reads that queue;
* otherwise (e.g. an AMQP or SQS broker with a memory backend): no heartbeat (``status``
  says so).

**Go workers publish no heartbeat**: ``status`` never lists them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime
from itertools import count
from typing import Any

from .. import __version__, signals
from .._redis import mget_all

logger = logging.getLogger(__name__)

#: seconds between two beats
INTERVAL = 5.0
#: a record expires after this many intervals without a beat
TTL_FACTOR = 3
#: every heartbeat key/item starts with this
PREFIX = "machinery_compat.worker."
#: the DynamoDB attribute holding the record
DYNAMODB_ATTRIBUTE = "Worker"

_ids = count(1)
_beaters: dict[int, _Beater] = {}
_lock = threading.Lock()


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _names(obj: Any) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__}


class Store:
    """Where records go: Redis or DynamoDB."""

    kind = ""

    def put(self, key: str, record: dict[str, Any], ttl: float) -> None:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def records(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections of its own."""


class RedisStore(Store):
    kind = "redis"

    def __init__(self, client: Any) -> None:
        self.client = client

    def put(self, key: str, record: dict[str, Any], ttl: float) -> None:
        self.client.set(key, json.dumps(record), px=int(ttl * 1000))

    def delete(self, key: str) -> None:
        self.client.delete(key)

    def records(self) -> list[dict[str, Any]]:
        keys = list(self.client.scan_iter(match=PREFIX + "*", count=1000, _type="string"))
        if not keys:
            return []
        out = []
        for raw in mget_all(self.client, keys):
            if raw is None:
                continue  # expired between SCAN and MGET
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out


class DynamoDBStore(Store):
    kind = "dynamodb"

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def put(self, key: str, record: dict[str, Any], ttl: float) -> None:
        self.backend.client.put_item(TableName=self.backend.task_table, Item={
            "TaskUUID": {"S": key}, DYNAMODB_ATTRIBUTE: {"S": json.dumps(record)},
            "TTL": {"N": str(int(time.time() + ttl) + 1)}})

    def delete(self, key: str) -> None:
        self.backend.client.delete_item(TableName=self.backend.task_table,
                                        Key={"TaskUUID": {"S": key}})

    def records(self) -> list[dict[str, Any]]:
        client, table = self.backend.client, self.backend.task_table
        out = []
        now = time.time()
        kwargs: dict[str, Any] = {
            "TableName": table, "ConsistentRead": True,
            "FilterExpression": "begins_with(#K, :p)",
            "ExpressionAttributeNames": {"#K": "TaskUUID"},
            "ExpressionAttributeValues": {":p": {"S": PREFIX}}}
        while True:
            reply = client.scan(**kwargs)
            for item in reply.get("Items", ()):
                try:
                    expires = float(item.get("TTL", {}).get("N", "0"))
                    rec = json.loads(item[DYNAMODB_ATTRIBUTE]["S"])
                except (KeyError, ValueError, TypeError):
                    continue
                if expires >= now and isinstance(rec, dict):
                    out.append(rec)
            if "LastEvaluatedKey" not in reply:
                return out
            kwargs["ExclusiveStartKey"] = reply["LastEvaluatedKey"]


class AMQPStore(Store):
    kind = "amqp"
    #: the queue holding the heartbeat messages
    QUEUE = "machinery_compat.workers"

    def __init__(self, endpoint: Any) -> None:
        from .._amqp import LinkPool

        self.pool = LinkPool(endpoint, "worker heartbeat", size=1)
        self.ttl = INTERVAL * TTL_FACTOR

    def _publish(self, record: dict[str, Any], ttl: float) -> None:
        from .._amqp import Link, declare_queue

        body = json.dumps(record).encode()
        props = {"content_type": "application/json", "delivery_mode": 1,
                 "expiration": str(max(1, int(ttl * 1000)))}

        def op(link: Link) -> None:
            if "workers" not in link.declared:
                declare_queue(link.channel, self.QUEUE, durable=True, auto_delete=False,
                              arguments=None)
                link.declared.add("workers")
            link.publish(body, "", self.QUEUE, props)

        self.pool.run(op, budget=2.0, describe="worker heartbeat")

    def put(self, key: str, record: dict[str, Any], ttl: float) -> None:
        self.ttl = ttl
        self._publish(record, ttl)

    def delete(self, key: str) -> None:
        self._publish({"id": key[len(PREFIX):], "stopped": True, "beat_at": time.time()},
                      self.ttl)

    def records(self) -> list[dict[str, Any]]:
        from .amqp import _browse

        messages = self.pool.run(lambda link: _browse(link, self.QUEUE, 100_000), budget=5.0,
                                 describe="read worker heartbeats")
        newest: dict[str, dict[str, Any]] = {}
        for m in messages:  # oldest first: the last one of a worker wins
            try:
                rec = json.loads(m.body)
            except ValueError:
                continue
            if isinstance(rec, dict) and "id" in rec:
                newest[str(rec["id"])] = rec
        now = time.time()
        return [r for r in newest.values() if not r.get("stopped")
                and float(r.get("beat_at", 0)) + float(r.get("ttl", 0)) >= now]

    def close(self) -> None:
        self.pool.close()


def store_for(app: Any, *, create: bool = True) -> Store | None:
    """Where ``app``'s workers keep their heartbeats (``None``: nowhere, see the module docs).
    ``create=False``: only from the broker/backend already made (a worker has made both)."""
    broker = app.broker if create else getattr(app, "_broker", None)
    if broker is not None and "RedisBroker" in _names(broker):
        return RedisStore(broker.client)
    backend = app.backend if create else getattr(app, "_backend", None)
    if backend is not None and "RedisBackend" in _names(backend):
        return RedisStore(backend.client)
    if backend is not None and "DynamoDBBackend" in _names(backend):
        return DynamoDBStore(backend)
    if (broker is not None and "AMQPBroker" in _names(broker)
            and backend is not None and "AMQPBackend" in _names(backend)):
        return AMQPStore(broker.endpoint)
    return None


def list_workers(app: Any) -> list[dict[str, Any]] | None:
    """The live Python workers' records, by hostname (``None``: this stack keeps none)."""
    store = store_for(app)
    if store is None:
        return None
    try:
        records = store.records()
    finally:
        store.close()
    return sorted(records, key=lambda r: (str(r.get("hostname")), str(r.get("id"))))


class _Beater:
    def __init__(self, worker: Any, store: Store, interval: float) -> None:
        self.worker = worker
        self.store = store
        self.interval = interval
        host = socket.gethostname()
        self.key = f"{PREFIX}{host}.{os.getpid()}.{next(_ids)}"
        self.started = _now_iso()
        self.host = host
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mc-worker-heartbeat",
                                        daemon=True)

    def record(self) -> dict[str, Any]:
        w = self.worker
        hostname = getattr(w, "hostname", None) or f"{os.getpid()}@{self.host}"
        return {
            "id": self.key[len(PREFIX):], "hostname": hostname, "host": self.host,
            "pid": os.getpid(), "queues": list(w.queues), "concurrency": w.concurrency,
            "processed": w.processed, "started": self.started, "last_beat": _now_iso(),
            "beat_at": time.time(),
            "interval": self.interval, "ttl": self.interval * TTL_FACTOR,
            "version": __version__, "store": self.store.kind,
        }

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.store.put(self.key, self.record(), self.interval * TTL_FACTOR)
                if failing:
                    logger.info("worker heartbeat %s written again", self.key)
                failing = False
            except Exception as e:
                if not failing:
                    logger.warning("worker heartbeat %s could not be written: %s (retrying "
                                   "every %gs)", self.key, e, self.interval)
                failing = True
            self._stop.wait(self.interval)
        try:
            self.store.delete(self.key)
        except Exception as e:
            logger.info("worker heartbeat %s not deleted (%s): it expires by itself", self.key, e)
        finally:
            self.store.close()

    def stop(self, wait: float = 1.0) -> None:
        self._stop.set()
        self._thread.join(wait)


def _on_ready(sender: Any, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if app is None or not hasattr(sender, "queues"):
        return
    try:
        store = store_for(app, create=False)
    except Exception as e:
        logger.warning("no worker heartbeat: %s", e)
        return
    if store is None:
        return
    beater = _Beater(sender, store, INTERVAL)
    with _lock:
        old = _beaters.pop(id(sender), None)
        _beaters[id(sender)] = beater
    if old is not None:
        old.stop(0)
    beater.start()


def _on_shutdown(sender: Any, **_: Any) -> None:
    with _lock:
        beater = _beaters.pop(id(sender), None)
    if beater is not None:
        beater.stop()


signals.worker_ready.connect(_on_ready, dispatch_uid="machinery_compat.ops.heartbeat.ready")
signals.worker_shutdown.connect(_on_shutdown,
                                dispatch_uid="machinery_compat.ops.heartbeat.shutdown")
