"""In-memory broker: queues inside this Python process, for tests and local development.

URL forms: ``memory://`` (the process's default store) or ``memory://<name>`` (a named
store).  Every broker built with the same URL in one process shares the same queues, so a
producer app and a worker app created separately (``Machinery(broker="memory://t1")`` twice)
talk to each other exactly as they would over Redis.  Nothing leaves the process: Go workers
cannot see these queues, and everything is lost when the process exits.

It behaves like the Redis broker, message for message:

* a queue is a FIFO of the raw Signature JSON (Go's encoding, byte for byte), named after the
  routing key (an empty one becomes the default queue);
* a task with a future ``ETA`` is held in the store's delayed set until a worker's delayed-task
  mover (:meth:`MemoryBroker.move_due_delayed`) moves it to its queue once it is due;
* :meth:`~MemoryBroker.fetch` takes from the first non-empty queue of the list it is given,
  else waits (on a condition variable, no polling) until one of them gets a message;
* messages given back go to the head (``front=True``) or the tail of their queue; undecodable
  ones are kept, raw, in the queue ``<queue>.dead``.

Inspect a store with :meth:`~MemoryBroker.pending_tasks`, :meth:`~MemoryBroker.delayed_tasks`
and :meth:`~MemoryBroker.messages` (raw bytes, ``"<queue>.dead"`` included); inject raw bytes
(as a Go producer or a corrupt client would) with :meth:`~MemoryBroker.push`; throw a store away
with :func:`reset`.  Thread-safe; no optional dependency.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from .._named_stores import NamedStores
from ..exceptions import DecodeError
from ..protocol import Signature
from .base import Broker, Delivery

logger = logging.getLogger(__name__)

SCHEMES = ("memory",)


@dataclass
class _Store:
    """One named set of queues plus its delayed tasks (a heap of (due ns, seq, body))."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    queues: dict[str, deque[bytes]] = field(default_factory=dict)
    delayed: list[tuple[int, int, bytes]] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=itertools.count)


def _renew_lock(store: _Store) -> None:
    store.cond = threading.Condition()


_stores = NamedStores(_Store, _renew_lock)
_store = _stores.get


def store_name(url: str) -> str:
    """The store a ``memory://<name>`` (or ``eager://<name>``) URL names ("" = default)."""
    rest = url.split("://", 1)[1] if "://" in url else url.partition(":")[2]
    return rest.strip("/")


def reset(name: str | None = None) -> None:
    """Forget the broker store ``name`` (every store when ``None``); brokers built on it
    afterwards start empty.  Brokers still holding the old store keep it."""
    _stores.reset(name)


class MemoryBroker(Broker):
    """Queues in this process, shared by every broker with the same URL."""

    schemes = SCHEMES

    def __init__(self, url: str = "memory://", default_queue: str = "machinery_tasks") -> None:
        super().__init__(default_queue)
        self.url = url
        self.name = store_name(url)
        self._s = _store(self.name)

    # -- producer -----------------------------------------------------------------------
    def publish(self, sig: Signature) -> None:
        self.adjust_routing_key(sig)
        body = sig.to_json()
        eta = sig.eta
        if eta is not None and eta.unix_ns > time.time_ns():
            self.push_delayed(body, eta.unix_ns)
        else:
            self.push(sig.routing_key, body)

    def push(self, queue: str, *bodies: bytes) -> None:
        """Append raw message bodies to ``queue`` (what an ``RPUSH`` does on Redis)."""
        s = self._s
        with s.cond:
            s.queues.setdefault(queue, deque()).extend(bodies)
            s.cond.notify_all()

    def push_delayed(self, body: bytes, due_ns: int) -> None:
        """Hold a raw message body until ``due_ns`` (Unix nanoseconds)."""
        s = self._s
        with s.cond:
            heapq.heappush(s.delayed, (due_ns, next(s.seq), body))

    # -- consumer -----------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        s = self._s
        deadline = time.monotonic() + max(timeout, 0.0)
        with s.cond:
            while True:
                for name in queues:
                    q = s.queues.get(name)
                    if q:
                        n = min(max(max_messages, 1), len(q))
                        return [Delivery(q.popleft(), name) for _ in range(n)]
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                s.cond.wait(left)

    def requeue(self, deliveries: Sequence[Delivery], *, front: bool = False) -> None:
        if not deliveries:
            return
        s = self._s
        with s.cond:
            if front:
                for d in reversed(deliveries):
                    s.queues.setdefault(d.queue, deque()).appendleft(d.body)
            else:
                for d in deliveries:
                    s.queues.setdefault(d.queue, deque()).append(d.body)
            s.cond.notify_all()

    def dead_letter(self, delivery: Delivery, reason: str) -> str:
        where = f"{delivery.queue}.dead"
        self.push(where, delivery.body)
        return where

    def move_due_delayed(self, limit: int = 1000) -> int:
        """Move up to ``limit`` due delayed tasks to the queue their RoutingKey names (the
        default queue when empty; ``<default>.dead`` when the body is not a JSON object)."""
        s = self._s
        now = time.time_ns()
        moved = 0
        with s.cond:
            while s.delayed and moved < limit and s.delayed[0][0] <= now:
                _, _, body = heapq.heappop(s.delayed)
                s.queues.setdefault(self._route(body), deque()).append(body)
                moved += 1
            if moved:
                s.cond.notify_all()
        return moved

    def _route(self, body: bytes) -> str:
        try:
            obj = json.loads(body)
        except ValueError:
            return f"{self.default_queue}.dead"
        if not isinstance(obj, dict):
            return f"{self.default_queue}.dead"
        key = obj.get("RoutingKey")
        if key is None:  # Go's decoder matches field names case-insensitively
            key = next((v for k, v in obj.items() if k.lower() == "routingkey"), None)
        return key if isinstance(key, str) and key else self.default_queue

    # -- inspection ---------------------------------------------------------------------
    def messages(self, queue: str | None = None) -> list[bytes]:
        """The raw bodies waiting in ``queue`` (default queue when ``None``), head first."""
        s = self._s
        with s.cond:
            return list(s.queues.get(queue or self.default_queue, ()))

    def delayed_messages(self) -> list[tuple[bytes, int]]:
        """The raw bodies of the delayed tasks with their due time (Unix ns), soonest first."""
        s = self._s
        with s.cond:
            return [(body, due) for due, _, body in sorted(s.delayed)]

    def _decode_all(self, items: list[bytes], where: str) -> list[Signature]:
        out = []
        for raw in items:
            try:
                out.append(Signature.from_json(raw))
            except DecodeError as e:
                logger.warning("undecodable message in %s: %s; raw=%r", where, e, raw[:200])
        return out

    def pending_tasks(self, queue: str | None = None) -> list[Signature]:
        q = queue or self.default_queue
        return self._decode_all(self.messages(q), q)

    def delayed_tasks(self) -> list[Signature]:
        return self._decode_all([b for b, _ in self.delayed_messages()], "delayed tasks")


__all__ = ["MemoryBroker", "reset", "store_name"]
