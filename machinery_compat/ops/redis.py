"""Operator commands on the Redis broker (Machinery's layout, see
:mod:`machinery_compat.brokers.redis`).

* pending: ``LRANGE <queue>``; depth: ``LLEN``; purge: ``DEL`` (the length read in the same
  ``MULTI``);
* delayed: the sorted set ``delayed_tasks`` (``redis.delayed_tasks_key``), scores in Unix
  nanoseconds;
* dead letters: the list ``<queue>.dead``.  Requeue is one ``LMOVE <queue>.dead <queue> LEFT
  RIGHT`` per message: atomic, so a message is always in exactly one of the two lists, with
  its bytes unchanged.  On a Redis Cluster where the two lists hash to different slots:
  ``RPUSH`` a copy, then ``LREM`` it from the dead list (a crash between: a duplicate).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import BrokerOps, Message, QueueDepth


def _one_slot(client: Any, *keys: str) -> bool:
    """Whether ``keys`` may share one command: always on one Redis, on a cluster when they
    hash to one slot."""
    if not hasattr(client, "nodes_manager"):
        return True
    return len({client.keyslot(k) for k in keys}) == 1


class RedisOps(BrokerOps):
    kind = "redis"

    @property
    def client(self) -> Any:
        return self.broker.client

    def depth(self, queue: str) -> QueueDepth:
        return QueueDepth(queue, int(self.client.llen(queue)))

    def pending(self, queue: str, limit: int) -> list[Message]:
        return [Message(b, queue) for b in self.client.lrange(queue, 0, max(limit, 1) - 1)]

    def delayed(self, limit: int, queues: Sequence[str] = ()) -> list[Message]:
        key = self.broker.delayed_tasks_key
        items = self.client.zrange(key, 0, max(limit, 1) - 1, withscores=True)
        return [Message(body, key, due=float(score) / 1e9) for body, score in items]

    def delayed_count(self, queues: Sequence[str] = ()) -> int | None:
        return int(self.client.zcard(self.broker.delayed_tasks_key))

    def purge(self, queue: str) -> int:
        pipe = self.client.pipeline(transaction=True)
        pipe.llen(queue)
        pipe.delete(queue)
        n, _ = pipe.execute()
        return int(n)

    def dead_list(self, queue: str, limit: int) -> list[Message]:
        return self.pending(self.dead_place(queue), limit)

    def dead_requeue(self, queue: str, limit: int) -> int:
        dead = self.dead_place(queue)
        moved = 0
        if not _one_slot(self.client, dead, queue):
            return self._requeue_across_slots(dead, queue, limit)
        while moved < limit and self.client.lmove(dead, queue, "LEFT", "RIGHT") is not None:
            moved += 1
        return moved

    def _requeue_across_slots(self, dead: str, queue: str, limit: int) -> int:
        """Redis Cluster, the two lists in different slots (no LMOVE between them): per
        message, push a copy to the queue, then remove it from the dead list — a crash in
        between leaves it in both (a duplicate), never in neither."""
        moved = 0
        while moved < limit:
            raw = self.client.lindex(dead, 0)
            if raw is None:
                break
            self.client.rpush(queue, raw)
            self.client.lrem(dead, 1, raw)
            moved += 1
        return moved
