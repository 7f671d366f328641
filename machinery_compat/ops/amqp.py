"""Operator commands on the AMQP (RabbitMQ) broker (see :mod:`machinery_compat.brokers.amqp`).

Everything goes over AMQP 0-9-1, on connections of their own (the broker's URLs and TLS):

* browsing (``inspect pending``, ``inspect delayed``, ``dead list``): ``basic.get`` of every
  message without ack, then all of them ``basic.nack``-ed back with requeue: they stay in
  their queue, in their order, marked *redelivered*.  Messages RabbitMQ has already handed to
  a consumer (a worker's prefetch) are not seen;
* depth: a passive ``queue.declare`` (its message count; a missing queue counts 0);
* ``purge``: ``queue.purge``;
* dead letters: the durable queue ``<queue>.dead`` (its messages carry the header
  ``x-machinery-compat-reason``).  ``dead requeue`` takes one message at a time with
  ``basic.get`` (no ack), publishes its bytes, unchanged, to ``<queue>`` through the default
  exchange with publisher confirms, and acks it only then: an error leaves it in
  ``<queue>.dead`` (at worst a message is in both, never in neither);
* delayed: RabbitMQ cannot list queues over AMQP, so the delay queues
  (``delay.<ms>.<exchange>.<routing key>``, Go's) must be named (``--delay-queue``, e.g. from
  ``rabbitmqctl list_queues name | grep '^delay\\.'``); ``amqp.delayed_queue`` of the config,
  when set, is always looked into.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .._amqp import Link as _Link
from .._amqp import (
    LinkPool,
    UnroutableError,
    basic_nack,
    bind_queue,
    body_bytes,
    browse,
    channel_errors,
    declare_exchange,
    declare_queue,
)
from ..protocol import Signature
from .base import BrokerOps, Message, QueueDepth, Unsupported

T = TypeVar("T")

#: seconds an operation retries on new connections before it fails
BUDGET = 10.0
REASON_HEADER = "x-machinery-compat-reason"


def _reason(msg: Any) -> str:
    headers = (getattr(msg, "properties", None) or {}).get("application_headers") or {}
    value = headers.get(REASON_HEADER, "")
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _passive_count(link: _Link, queue: str) -> int | None:
    ch = link.conn.connection.channel()
    try:
        try:
            ok = ch.queue_declare(queue, passive=True)
        except channel_errors() as e:
            if getattr(e, "code", None) == 404:
                return None
            raise
        return int(ok.message_count)
    finally:
        if ch.is_open:
            ch.close()


def _browse(link: _Link, queue: str, limit: int) -> list[Message]:
    """Up to ``limit`` messages of ``queue``: ``basic.get`` without ack, then all nacked back
    with requeue (on a channel of its own)."""
    if _passive_count(link, queue) is None:
        return []
    ch = link.conn.connection.channel()
    try:
        return [Message(body_bytes(m.body), queue, reason=_reason(m))
                for m in browse(ch, queue, limit)]
    finally:
        if ch.is_open:
            ch.close()


def backend_state_messages(backend: Any, task_uuid: str, limit: int = 1000) -> list[bytes]:
    """The state messages waiting in an AMQP result backend's queue ``<task UUID>``, oldest
    first, browsed (left there for the task's real reader, unlike ``get_state``)."""
    pool = LinkPool(backend.endpoint, "operator command")
    try:
        msgs = pool.run(lambda link: _browse(link, task_uuid, limit), budget=BUDGET,
                        describe=f"browse {task_uuid}")
    finally:
        pool.close()
    return [m.body for m in msgs]


class AMQPOps(BrokerOps):
    kind = "amqp"

    def __init__(self, broker: Any) -> None:
        super().__init__(broker)
        self._pool = LinkPool(broker.endpoint, "operator command")

    def _run(self, op: Callable[[_Link], T], what: str) -> T:
        return self._pool.run(op, budget=BUDGET, describe=what)

    @staticmethod
    @contextlib.contextmanager
    def _channel(link: _Link) -> Any:
        """A plain channel of its own (a passive declare of a missing queue closes it)."""
        ch = link.conn.connection.channel()
        try:
            yield ch
        finally:
            if ch.is_open:
                ch.close()

    def _count(self, link: _Link, queue: str) -> int | None:
        return _passive_count(link, queue)

    def depth(self, queue: str) -> QueueDepth:
        n = self._run(lambda link: self._count(link, queue), f"depth of {queue}")
        return QueueDepth(queue, n or 0)

    def _browse(self, queue: str, limit: int) -> list[Message]:
        return self._run(lambda link: _browse(link, queue, limit), f"browse {queue}")

    def pending(self, queue: str, limit: int) -> list[Message]:
        return self._browse(queue, limit)

    def _delay_queues(self, queues: Sequence[str]) -> list[str]:
        names = list(dict.fromkeys([*queues, *([self.broker.cfg.delayed_queue]
                                               if self.broker.cfg.delayed_queue else [])]))
        return names

    def delayed(self, limit: int, queues: Sequence[str] = ()) -> list[Message]:
        names = self._delay_queues(queues)
        if not names:
            raise Unsupported(
                "RabbitMQ cannot list queues over AMQP: name the delay queues with "
                "--delay-queue NAME (they are delay.<ms>.<exchange>.<routing key>; "
                "rabbitmqctl list_queues name | grep '^delay\\.' lists them)")
        out: list[Message] = []
        for name in names:
            for m in self._browse(name, limit):
                due = None
                try:
                    eta = Signature.from_json(m.body).eta
                    due = eta.unix_ns / 1e9 if eta is not None else None
                except Exception:
                    due = None
                out.append(Message(m.body, m.place, due=due))
        out.sort(key=lambda m: m.due if m.due is not None else 0.0)
        return out[:limit]

    def delayed_count(self, queues: Sequence[str] = ()) -> int | None:
        names = self._delay_queues(queues)
        if not names:
            return None
        return sum(self.depth(n).messages or 0 for n in names)

    def purge(self, queue: str) -> int:
        def op(link: _Link) -> int:
            if self._count(link, queue) is None:
                return 0
            with self._channel(link) as ch:
                return int(ch.queue_purge(queue) or 0)

        return self._run(op, f"purge {queue}")

    def dead_list(self, queue: str, limit: int) -> list[Message]:
        return self._browse(self.dead_place(queue), limit)

    def dead_requeue(self, queue: str, limit: int) -> int:
        dead = self.dead_place(queue)
        cfg = self.broker.cfg
        moved = 0

        def publish(link: _Link, body: bytes, props: dict[str, Any]) -> None:
            try:
                link.publish(body, "", queue, props)
            except UnroutableError:  # no such queue (any more): declare it as a worker does
                declare_exchange(link.channel, cfg.exchange, cfg.exchange_type)
                declare_queue(link.channel, queue, durable=True, auto_delete=False,
                              arguments=self.broker.declare_args)
                bind_queue(link.channel, queue, cfg.exchange, cfg.binding_key,
                           self.broker.binding_args)
                link.publish(body, "", queue, props)

        def op(link: _Link) -> int:
            nonlocal moved
            if self._count(link, dead) is None:
                return moved
            with self._channel(link) as ch:
                while moved < limit:
                    msg = ch.basic_get(dead, no_ack=False)
                    if msg is None:
                        break
                    props = {k: v for k, v in dict(msg.properties).items()
                             if k in ("content_type", "delivery_mode", "application_headers",
                                      "priority", "content_encoding")}
                    headers = dict(props.get("application_headers") or {})
                    headers.pop(REASON_HEADER, None)
                    if headers:
                        props["application_headers"] = headers
                    else:
                        props.pop("application_headers", None)
                    props.setdefault("content_type", "application/json")
                    props.setdefault("delivery_mode", 2)
                    try:
                        publish(link, body_bytes(msg.body), props)
                    except BaseException:
                        with contextlib.suppress(Exception):  # else closing the channel does it
                            basic_nack(ch, msg.delivery_tag, multiple=False, requeue=True)
                        raise
                    ch.basic_ack(msg.delivery_tag, multiple=False)
                    moved += 1
            return moved

        return self._run(op, f"requeue {dead} to {queue}")

    def close(self) -> None:
        self._pool.close()
