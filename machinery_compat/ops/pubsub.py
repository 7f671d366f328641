"""Operator commands on the GCP Pub/Sub broker (see :mod:`machinery_compat.brokers.pubsub`).

Pub/Sub shows a subscription's messages only by *pulling* them, which leases them away from
workers until they are acknowledged or given back, and it does not say how many a
subscription holds (that is a Cloud Monitoring metric, ``num_undelivered_messages``).  So:

* ``inspect pending`` and ``inspect delayed`` are not supported (one line, exit 1); ``status``
  shows the queue and dead-letter counts as unknown (``-``);
* ``purge``: pulls and acknowledges the queue's subscription until a pull comes back empty,
  and prints how many it removed; messages a worker holds at that moment are not purged (they
  are its to finish or give back);
* dead letters: the topic and subscription ``<queue>.dead`` where Python workers publish
  undecodable messages with the attribute ``reason``.  ``dead list`` pulls them and gives
  them back at once (``ModifyAckDeadline`` 0); ``dead requeue`` publishes each body,
  unchanged, to the topic ``<queue>`` and acknowledges it in the dead subscription only after
  the publish succeeded (on an error the messages not moved are given back); ``dead purge``
  pulls and acknowledges the dead subscription.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from ..brokers.pubsub import dead_letter_topic
from ..exceptions import BrokerError
from .base import BrokerOps, Message, QueueDepth, Unsupported

#: seconds one pull may wait for messages (the emulator answers an empty pull after ~0.5 s)
PULL_WAIT = 1.0
#: messages asked for per pull
PULL_BATCH = 100


class PubSubOps(BrokerOps):
    kind = "pubsub"

    def dead_place(self, queue: str) -> str:
        return dead_letter_topic(queue)

    def depth(self, queue: str) -> QueueDepth:
        return QueueDepth(queue, None)  # Pub/Sub does not tell (Cloud Monitoring does)

    def pending(self, queue: str, limit: int) -> list[Message]:
        raise Unsupported("Pub/Sub cannot list a subscription's messages without pulling them "
                          "(which leases them away from workers); its backlog is Cloud "
                          "Monitoring's num_undelivered_messages")

    def delayed(self, limit: int, queues: Sequence[str] = ()) -> list[Message]:
        raise Unsupported("Pub/Sub has no delayed messages: a task with an ETA waits in its "
                          "subscription, then in a Python worker's consumer until due")

    def delayed_count(self, queues: Sequence[str] = ()) -> int | None:
        return None

    # -- pulling --------------------------------------------------------------------------
    def _pull(self, queue: str, n: int) -> list[Any]:
        from google.api_core import exceptions as gx

        try:
            return self.broker.pull(queue, max(1, min(n, PULL_BATCH)), PULL_WAIT)  # type: ignore[no-any-return]
        except BrokerError as e:
            if isinstance(e.__cause__, gx.NotFound):  # no such subscription: nothing there
                return []
            raise

    def _settle(self, queue: str, received: Sequence[Any], *, ack: bool) -> None:
        """Acknowledge ``received`` (``ack``) or give it back at once (deadline 0)."""
        if not received:
            return
        path = self.broker.subscription_path(queue)
        ids = [m.ack_id for m in received]
        with self.broker._translated(f"{'acknowledge' if ack else 'give back'} "
                                     f"{len(ids)} message(s) of {path}"):
            for start in range(0, len(ids), 1000):
                chunk = ids[start:start + 1000]
                if ack:
                    self.broker.subscriber.acknowledge(subscription=path, ack_ids=chunk)
                else:
                    self.broker.subscriber.modify_ack_deadline(
                        subscription=path, ack_ids=chunk, ack_deadline_seconds=0)

    def _drain(self, queue: str) -> int:
        """Pull and acknowledge until a pull comes back empty; how many were removed."""
        seen: set[str] = set()
        while True:
            batch = self._pull(queue, PULL_BATCH)
            if not batch:
                return len(seen)
            self._settle(queue, batch, ack=True)
            seen.update(m.message.message_id for m in batch)

    @staticmethod
    def _message(m: Any, place: str) -> Message:
        return Message(bytes(m.message.data), place,
                       reason=str(m.message.attributes.get("reason", "")))

    # -- commands -------------------------------------------------------------------------
    def purge(self, queue: str) -> int:
        return self._drain(queue)

    def dead_list(self, queue: str, limit: int) -> list[Message]:
        dead = self.dead_place(queue)
        seen: dict[str, Any] = {}
        received: list[Any] = []
        try:
            while len(seen) < limit:
                batch = self._pull(dead, limit - len(seen))
                if not batch:
                    break
                received += batch
                for m in batch:
                    seen.setdefault(m.message.message_id, m)
        finally:
            with contextlib.suppress(BrokerError):
                self._settle(dead, received, ack=False)
        return [self._message(m, dead) for m in seen.values()]

    def dead_requeue(self, queue: str, limit: int) -> int:
        dead = self.dead_place(queue)
        moved = 0
        while moved < limit:
            batch = self._pull(dead, limit - moved)
            if not batch:
                break
            for i, m in enumerate(batch):
                try:
                    self.broker._publish(queue, [bytes(m.message.data)],
                                         "a dead-lettered message")
                except BaseException:
                    with contextlib.suppress(Exception):
                        self._settle(dead, batch[i:], ack=False)
                    raise
                self._settle(dead, [m], ack=True)
                moved += 1
        return moved

    def dead_purge(self, queue: str) -> int:
        return self._drain(self.dead_place(queue))
