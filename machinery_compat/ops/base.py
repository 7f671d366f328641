"""What every broker's operator commands give: the interface and the data they return.

A :class:`BrokerOps` wraps one broker object (its connection or client) and implements the
operations behind ``machinery-compat inspect | purge | dead | status``.  An operation a broker
cannot do raises :class:`Unsupported`, whose text is the one line the command prints.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import DecodeError, MachineryCompatError
from ..protocol import Signature


class Unsupported(MachineryCompatError):
    """This broker/backend combination cannot do the operation (the text says why)."""


@dataclass(frozen=True, slots=True)
class Message:
    """One message as a broker holds it: its exact bytes and where it is."""

    body: bytes
    place: str
    #: why it was dead-lettered (AMQP header, SQS attribute), when the broker kept that
    reason: str = ""
    #: when it is due (Unix seconds), for a delayed message whose broker knows it
    due: float | None = None

    def summary(self) -> dict[str, Any]:
        """The fields operators look at: uuid, name, routing key, ETA, retries left, size, and
        ``error`` for bytes that are no Signature."""
        out: dict[str, Any] = {"uuid": "", "name": "", "routing_key": "", "eta": None,
                               "retry_count": 0, "size": len(self.body), "place": self.place}
        try:
            sig = Signature.from_json(self.body)
        except (DecodeError, ValueError) as e:
            out["error"] = f"undecodable: {e}"
        else:
            out.update(uuid=sig.uuid, name=sig.name, routing_key=sig.routing_key,
                       eta=sig.eta.isoformat() if sig.eta is not None else None,
                       retry_count=sig.retry_count)
            if sig.group_uuid:
                out["group_uuid"] = sig.group_uuid
        if self.reason:
            out["reason"] = self.reason
        if self.due is not None:
            out["due"] = self.due
        return out


@dataclass(slots=True)
class QueueDepth:
    """How many messages a queue holds (``None``: unknown); SQS adds its other counts."""

    queue: str
    messages: int | None
    extra: dict[str, int] = field(default_factory=dict)


class BrokerOps(abc.ABC):
    """Operator commands on one broker."""

    #: the broker kind, as commands print it
    kind = ""

    def __init__(self, broker: Any) -> None:
        self.broker = broker

    def dead_place(self, queue: str) -> str:
        """Where the broker's workers dead-letter messages taken from ``queue``."""
        place: str = self.broker.dead_letter_place(queue)
        return place

    @abc.abstractmethod
    def depth(self, queue: str) -> QueueDepth:
        """The number of messages waiting in ``queue`` (0 when it does not exist)."""

    @abc.abstractmethod
    def pending(self, queue: str, limit: int) -> list[Message]:
        """Up to ``limit`` messages waiting in ``queue``, head first, left where they are."""

    @abc.abstractmethod
    def delayed(self, limit: int, queues: Sequence[str] = ()) -> list[Message]:
        """Up to ``limit`` delayed messages, soonest first, left where they are
        (``queues``: delay queues to look into, where the broker cannot list them)."""

    def delayed_count(self, queues: Sequence[str] = ()) -> int | None:
        """How many messages are delayed (``None``: unknown)."""
        return len(self.delayed(1_000_000, queues))

    @abc.abstractmethod
    def purge(self, queue: str) -> int:
        """Delete every message waiting in ``queue``; returns how many (as counted just
        before, on brokers that cannot count what they delete)."""

    @abc.abstractmethod
    def dead_list(self, queue: str, limit: int) -> list[Message]:
        """Up to ``limit`` messages of ``queue``'s dead-letter place, left where they are."""

    @abc.abstractmethod
    def dead_requeue(self, queue: str, limit: int) -> int:
        """Move up to ``limit`` messages from ``queue``'s dead-letter place back to ``queue``,
        bytes unchanged; each leaves the dead place only once it was published.  Returns how
        many moved."""

    def dead_purge(self, queue: str) -> int:
        """Delete every message of ``queue``'s dead-letter place; returns how many."""
        return self.purge(self.dead_place(queue))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the operations opened (the broker itself is the app's)."""


def message_json(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The ``--json`` form of messages: their summary and their bytes as text."""
    out = []
    for m in messages:
        row = m.summary()
        row["body"] = m.body.decode("utf-8", "replace")
        out.append(row)
    return out


