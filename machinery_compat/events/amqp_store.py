"""Events on AMQP (RabbitMQ, for stacks without Redis): the fanout exchange
``machinery_compat.events``.

The background flusher of :mod:`.emitter` publishes each batch of events as one message
(body: the batch's JSON array, :func:`.model.encode_batch`; ``content_type``
``application/json``, not persistent, publisher-confirmed) to the durable fanout exchange
``machinery_compat.events``.  Bound to
it, the durable queue ``machinery_compat.events.history`` keeps the newest batches
(``x-max-length`` = ``max_len`` batches, RabbitMQ drops the oldest), which ``history`` browses
(``basic.get`` of every message, then all nacked back) for ``stats`` and ``events`` without
``--follow``.  Following declares an exclusive, auto-deleted queue of its own bound to the
exchange.  Go Machinery never declares, binds or reads these names.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Final

from .model import Event, decode_batch

logger = logging.getLogger(__name__)

EXCHANGE: Final = "machinery_compat.events"
HISTORY_QUEUE: Final = "machinery_compat.events.history"


def decode_message(body: bytes) -> list[Event]:
    """The events of one message (what is no event is logged and skipped)."""
    events, bad = decode_batch(body)
    for why in bad:
        logger.warning("event message holds an item that is no event (%s): skipped", why)
    return events


class AMQPEventStore:
    """Publishes and reads events over the broker's AMQP endpoint (connections of its own)."""

    kind = "amqp"

    def __init__(self, endpoint: Any, max_len: int) -> None:
        from .._amqp import LinkPool

        self.endpoint = endpoint
        self.max_len = max_len
        self.pool = LinkPool(endpoint, "events", size=1)

    def _declare(self, link: Any) -> None:
        from .._amqp import bind_queue, declare_exchange, declare_queue

        if "events" in link.declared:
            return
        declare_exchange(link.channel, EXCHANGE, "fanout")
        declare_queue(link.channel, HISTORY_QUEUE, durable=True, auto_delete=False,
                      arguments={"x-max-length": self.max_len})
        bind_queue(link.channel, HISTORY_QUEUE, EXCHANGE, "", None)
        link.declared.add("events")

    def write(self, body: bytes, count: int) -> None:
        """Publish a batch (:func:`.model.encode_batch` of ``count`` events) as one
        message."""
        if count <= 0:
            return
        props = {"content_type": "application/json", "delivery_mode": 1}

        def op(link: Any) -> None:
            self._declare(link)
            link.publish(body, EXCHANGE, "", props, mandatory=False)

        self.pool.run(op, budget=2.0, describe="publish events")

    def history(self, since: float | None = None, limit: int | None = None) -> list[Event]:
        from .._amqp import body_bytes, browse

        def op(link: Any) -> list[Any]:
            self._declare(link)
            ch = link.conn.connection.channel()
            try:
                return browse(ch, HISTORY_QUEUE, None)
            finally:
                if ch.is_open:
                    ch.close()

        messages = self.pool.run(op, budget=5.0, describe="read events")
        events = [e for m in messages for e in decode_message(body_bytes(m.body))
                  if since is None or e.timestamp >= since]  # in the order written
        return events[-limit:] if limit is not None else events

    def follow(self, since: float | None, poll: float = 1.0) -> Iterator[Event | None]:
        """The events from ``since`` (None: from now) on, as they come (``None`` every
        ``poll`` seconds without one).  A queue of its own is bound before the history is
        read, so nothing falls between the two (a batch seen in both is yielded once)."""
        from .._amqp import Link, body_bytes

        link = Link(self.endpoint, "follow events").open()
        try:
            self._declare(link)
            ch = link.channel
            ok = ch.queue_declare("", exclusive=True, auto_delete=True)
            ch.queue_bind(ok.queue, EXCHANGE, "")
            got: list[bytes] = []
            ch.basic_consume(ok.queue, no_ack=True,
                             callback=lambda m: got.append(body_bytes(m.body)))
            seen: set[str] = set()
            if since is not None:
                for event in self.history(since):
                    seen.add(event.to_json())
                    yield event
            while True:
                if not got:
                    try:
                        link.conn.connection.drain_events(timeout=poll)
                    except TimeoutError:
                        yield None
                        continue
                batch, got[:] = list(got), []
                for body in batch:
                    for event in decode_message(body):
                        if seen:
                            text = event.to_json()
                            if text in seen:
                                seen.discard(text)
                                continue
                        yield event
        finally:
            link.close()

    def close(self) -> None:
        self.pool.close()
