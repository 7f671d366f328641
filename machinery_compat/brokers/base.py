"""The broker interface: what producers and workers need from a queue service.

A broker publishes Signature JSON exactly as Go Machinery's broker of the same kind
does, and hands raw message bodies to the worker as :class:`Delivery` objects, which
the worker then settles exactly once: acknowledges (:meth:`Broker.ack`, after its final
state is stored), re-queues (:meth:`Broker.requeue`: unregistered task, pushed back),
dead-letters (:meth:`Broker.dead_letter`: undecodable message) or drops
(:meth:`Broker.drop`).

A worker consumes through :meth:`Broker.consumer`, which lets a broker keep per-worker
state (the Redis broker's crash-safe mode: processing lists and a heartbeat), and calls
:meth:`Broker.stop_consuming` on it when it stops.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..protocol import Signature

#: Header a broker sets (a decimal string) in a message it re-queued because the worker
#: holding it died: how many times that happened.  Go ignores it.
REDELIVERIES_HEADER = "redeliveries"


@dataclass(slots=True)
class Delivery:
    """One message taken from a queue: its exact bytes and where it came from.

    ``settled`` becomes true once the message was acknowledged, re-queued, dead-lettered
    or dropped (by the worker, or by the broker through :meth:`Broker.acking_with_next_write`).
    """

    body: bytes
    queue: str
    tag: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    settled: bool = False


def rotate(queues: Sequence[str], turn: int) -> list[str]:
    """``queues`` starting at position ``turn`` (mod len): round-robin order for one fetch."""
    k = turn % len(queues)
    return [*queues[k:], *queues[:k]]


class Broker(abc.ABC):
    """Base class of every broker.  Subclasses implement the abstract methods."""

    #: URL schemes this broker handles (for error messages and lazy resolution).
    schemes: tuple[str, ...] = ()

    def __init__(self, default_queue: str) -> None:
        self.default_queue = default_queue

    # -- producer side ------------------------------------------------------------------
    def adjust_routing_key(self, sig: Signature) -> None:
        """Machinery's ``AdjustRoutingKey``: an empty routing key becomes the default queue."""
        if not sig.routing_key:
            sig.routing_key = self.default_queue

    @abc.abstractmethod
    def publish(self, sig: Signature) -> None:
        """Send one task message; a future ``ETA`` is honoured the broker's way."""

    # -- consumer side ------------------------------------------------------------------
    @abc.abstractmethod
    def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        """Take up to ``max_messages`` messages from ``queues``, waiting at most ``timeout`` s
        for the first.  Each :class:`Delivery` names the queue it came from.  Callers pass the
        queues in a rotating order (see :func:`rotate`), so a broker serves them fairly by
        taking from the first non-empty one."""

    def wait_for_messages(self, timeout: float) -> None:  # noqa: B027 - optional hook
        """Return once a :meth:`fetch` would find messages without waiting, or after about
        ``timeout`` seconds, taking nothing (a worker whose threads are all busy calls it
        before waiting for one to free up).  This default returns at once."""

    def ack(self, delivery: Delivery) -> None:  # noqa: B027 - optional hook
        """The message was processed (whatever the task's outcome)."""

    def acking_with_next_write(self, delivery: Delivery) -> contextlib.AbstractContextManager[Any]:
        """Within the block, the broker may :meth:`ack` ``delivery`` in the same atomic write
        as the next write the current thread makes to the broker's server (the task's final
        state, when the backend shares it); it then sets ``delivery.settled``.  Otherwise
        (this default) nothing happens and the caller acks after the block."""
        return contextlib.nullcontext()

    @abc.abstractmethod
    def requeue(self, deliveries: Sequence[Delivery], *, front: bool = False) -> None:
        """Give messages back, unchanged, for another worker (``front``: to the head)."""

    def requeue_later(self, deliveries: Sequence[Delivery], delay: float) -> bool:
        """Give messages back, unchanged, to be delivered again in about ``delay`` seconds,
        settling them now (the worker holds nothing meanwhile: AMQP re-publishes through a
        delay queue, SQS changes the visibility timeout).  Returns ``False`` when this broker
        cannot (this default); the worker then keeps them and re-queues them later."""
        return False

    def dead_letter_place(self, queue: str) -> str:
        """Where :meth:`dead_letter` keeps unusable messages taken from ``queue``."""
        return f"{queue}.dead"

    @abc.abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str) -> str:
        """Keep an unusable message where a user can find it; returns that place's name."""

    def drop(self, delivery: Delivery) -> None:
        """Discard a message (``IgnoreWhenTaskNotRegistered``)."""
        self.ack(delivery)

    def consumer(self, queues: Sequence[str], *, crash_safe: bool = True,
                 heartbeat_ttl: float | None = None) -> Broker:
        """The broker a worker consuming ``queues`` fetches and settles through (this one by
        default).  ``crash_safe``: keep every message taken somewhere the broker can give it
        back from if the worker dies (Redis: per-worker processing lists; brokers that ack
        after processing, AMQP, always do); ``heartbeat_ttl``: seconds a dead worker keeps
        its messages before others re-queue them (``None``: the broker's default)."""
        return self

    def stop_consuming(self, *, idle: bool = True) -> None:  # noqa: B027 - optional hook
        """The worker using this :meth:`consumer` stopped fetching; ``idle``: nothing runs any
        more (every message it took was settled, or could not be and is left to the
        broker's recovery)."""

    def move_due_delayed(self, limit: int = 1000) -> int:
        """Move due delayed tasks to their queues; returns how many were moved."""
        return 0

    # -- inspection ---------------------------------------------------------------------
    def pending_tasks(self, queue: str | None = None) -> list[Signature]:
        raise NotImplementedError(f"{type(self).__name__} cannot list pending tasks")

    def delayed_tasks(self) -> list[Signature]:
        raise NotImplementedError(f"{type(self).__name__} cannot list delayed tasks")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
