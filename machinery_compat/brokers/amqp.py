"""AMQP 0-9-1 (RabbitMQ) broker, with Go Machinery's topology (§5.1 of the protocol notes).

URL forms: ``amqp://user:password@host:port/vhost`` and ``amqps://…`` (TLS: the config's
``tls_config`` :class:`ssl.SSLContext`, else the system's default context, as Go's
``DialTLS`` with a nil config).  Several URLs joined by ``multiple_broker_separator`` are
tried in order, and again on every reconnection.  Settings come from the config's ``amqp:``
section, the same one a Go worker reads.

What goes over the wire (so Go workers and producers accept it, and the reverse):

* exchange ``amqp.exchange`` of type ``amqp.exchange_type``, durable, not auto-delete;
* routing key: the signature's, else ``amqp.binding_key`` for a direct exchange, else the
  default queue (Go's AMQP ``AdjustRoutingKey``);
* a producer declares the queue named after the routing key (direct exchange; otherwise the
  default queue bound with ``amqp.binding_key``), durable, with ``amqp.queue_declare_args``,
  and binds it with ``amqp.queue_binding_args``; a worker declares the queue it consumes
  the same way and binds it with ``amqp.binding_key`` — including Go's duplication: with the
  default config ``machinery_task`` (the producers' queue) and ``machinery_tasks`` (the
  workers') both receive every default-routed task;
* messages: the raw Signature JSON, ``content_type=application/json``, ``delivery_mode=2``,
  the Signature's Headers as message headers (absent when empty), its Priority as message
  priority (absent when 0); mandatory, publisher confirms on: a nack or a returned message
  raises :class:`~machinery_compat.exceptions.PublishError`;
* a future ETA goes through Go's per-delay queue ``delay.<ms>.<exchange>.<routing key>``
  (``x-dead-letter-exchange``, ``x-dead-letter-routing-key``, ``x-message-ttl`` and
  ``x-expires`` = 2 * ms as 64-bit ``l``), or, with ``amqp.delayed_queue`` set, that one queue
  with a per-message ``expiration``.

Consuming: ``basic.qos(amqp.prefetch_count)``; a message is acked after its task finished
(at-least-once: a worker that dies mid-task leaves it to RabbitMQ to redeliver).  A task this
worker does not know is rejected with requeue (the worker backs off so it does not spin on
it); an undecodable message is published, unchanged, to the durable queue ``<queue>.dead``
and then acked, with a log line carrying its bytes.

Connections: a worker's connection has 10 s heartbeats and reconnects with back-off
(re-declaring everything) when RabbitMQ goes away; messages it held unacked are redelivered
by RabbitMQ.  Producers share a pool of connections (one per publishing thread at most); a
publish is retried on a new connection for up to 20 s (:data:`~machinery_compat._amqp.
PUBLISH_RETRY_BUDGET`) and then raises :class:`~machinery_compat.exceptions.PublishError`.
A retried publish whose first confirm was lost may deliver the task twice (at-least-once).
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._amqp import (
    CONSUMER_HEARTBEAT,
    PUBLISH_RETRY_BUDGET,
    Endpoint,
    Link,
    LinkPool,
    Long,
    UnroutableError,
    amqp_config,
    basic_nack,
    bind_queue,
    body_bytes,
    browse,
    channel_errors,
    close_quietly,
    connect,
    connection_errors,
    declare_exchange,
    declare_queue,
    describe,
    go_table,
    require_kombu,
)
from ..exceptions import BrokerConnectionError, BrokerError, DecodeError, PublishError
from ..protocol import Signature
from .base import Broker, Delivery

if TYPE_CHECKING:
    import kombu

    from ..config import AMQPConfig, Config

logger = logging.getLogger(__name__)

_consumer_ids = itertools.count(1)

#: the pid of this process, updated in a forked child (read on every fetch and settle, where
#: an ``os.getpid()`` system call each time cost ~3% of a worker's time)
_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)

#: An ETA closer than this (ms) is published as due now.  A delay queue expires (x-expires =
#: 2 * delay, as Go declares it) when unused that long, and RabbitMQ drops the messages of an
#: expired queue: with a few milliseconds of delay, the queue can expire before the message's
#: own TTL sends it on (Go loses such tasks).
MIN_DELAY_MS = 100
#: where :meth:`AMQPBroker.requeue_later` holds messages (``<prefix><ms>.<queue>``), and the
#: least ``x-expires`` of such a queue
HANDBACK_PREFIX = "machinery_compat.handback."
HANDBACK_MIN_EXPIRES_MS = 60_000
#: A worker that has not fetched for this long (stopped, or every thread busy) gets its
#: consumers cancelled and its prefetched messages given back, for other workers.
IDLE_CANCEL = 1.0
#: How long a fetch that just started consumers waits, at most, for their first deliveries.
_FIRST_BURST = 1.0
#: How often the consumer's housekeeping thread beats, drains and checks idleness.
_TICK = 0.5
#: one ``basic.ack`` frame: type 1, channel, size 13, class 60, method 80, tag, multiple, end
_ACK_FRAME = struct.Struct(">BHIHHQBB")


class AMQPBroker(Broker):
    schemes = ("amqp", "amqps")

    def __init__(
        self,
        url: str,
        default_queue: str = "machinery_tasks",
        *,
        amqp: AMQPConfig | None = None,
        separator: str = "",
        tls: Any = None,
        publish_budget: float = PUBLISH_RETRY_BUDGET,
    ) -> None:
        from ..config import AMQPConfig

        require_kombu("broker")
        super().__init__(default_queue)
        self.cfg = amqp if amqp is not None else AMQPConfig()
        self.endpoint = Endpoint.from_url(url, separator, tls)
        self.url = url
        self.publish_budget = publish_budget
        self.declare_args = go_table(self.cfg.queue_declare_args)
        self.binding_args = go_table(self.cfg.queue_binding_args)
        self._pool = LinkPool(self.endpoint, "producer")
        self._consumer: _Consumer | None = None
        self._consumer_lock = threading.Lock()
        #: the delay queues this broker published into (RabbitMQ cannot list queues over AMQP)
        self._delay_queues: dict[str, None] = {}

    @classmethod
    def from_config(cls, config: Config) -> AMQPBroker:
        return cls(config.broker, config.default_queue, amqp=amqp_config(config),
                   separator=config.multiple_broker_separator, tls=config.tls_config)

    # -- producer -----------------------------------------------------------------------
    @property
    def is_direct(self) -> bool:
        return self.cfg.exchange_type == "direct"

    def adjust_routing_key(self, sig: Signature) -> None:
        """Go's AMQP ``AdjustRoutingKey``: binding key for a direct exchange, else the default
        queue."""
        if not sig.routing_key:
            sig.routing_key = self.cfg.binding_key if self.is_direct else self.default_queue

    def properties(self, sig: Signature, *, priority: bool = True) -> dict[str, Any]:
        """The message properties Go sets for ``sig``."""
        props: dict[str, Any] = {"content_type": "application/json", "delivery_mode": 2}
        if sig.headers:
            props["application_headers"] = dict(sig.headers)
        if priority and sig.priority:
            props["priority"] = sig.priority & 0xFF
        return props

    def publish(self, sig: Signature) -> None:
        self.adjust_routing_key(sig)
        body = sig.to_json()
        if sig.eta is not None:
            delay_ms = (sig.eta.unix_ns - time.time_ns()) // 1_000_000
            if delay_ms >= MIN_DELAY_MS:
                self._publish_delayed(sig, body, delay_ms)
                return
        if self.is_direct:
            queue, key = sig.routing_key, sig.routing_key
        else:
            queue, key = self.default_queue, self.cfg.binding_key
        props = self.properties(sig)

        def op(link: Link) -> None:
            self._declare_task_queue(link, queue, key)
            try:
                link.publish(body, self.cfg.exchange, sig.routing_key, props)
            except UnroutableError:
                # the queue was deleted behind this cached connection: declare it again, once
                link.declared.discard(("queue", queue, key))
                self._declare_task_queue(link, queue, key)
                link.publish(body, self.cfg.exchange, sig.routing_key, props)

        self._run(op, sig)

    def _run(self, op: Any, sig: Signature) -> None:
        try:
            self._pool.run(op, budget=self.publish_budget,
                           describe=f"publish of task {sig.name}[{sig.uuid}]")
        except PublishError:
            raise
        except BrokerError as e:
            raise PublishError(f"Failed to publish task {sig.name}[{sig.uuid}] to "
                               f"{self.endpoint.describe()}: {e}") from e
        except Exception as e:
            raise PublishError(f"Failed to publish task {sig.name}[{sig.uuid}]: {e}") from e

    def _declare_exchange(self, link: Link) -> None:
        if "exchange" not in link.declared:
            declare_exchange(link.channel, self.cfg.exchange, self.cfg.exchange_type)
            link.declared.add("exchange")

    def _declare_task_queue(self, link: Link, queue: str, key: str) -> None:
        """What Go's producer connection for ``queue`` declares (once per connection)."""
        mark = ("queue", queue, key)
        if mark in link.declared:
            return
        self._declare_exchange(link)
        declare_queue(link.channel, queue, durable=True, auto_delete=False,
                      arguments=self.declare_args)
        bind_queue(link.channel, queue, self.cfg.exchange, key, self.binding_args)
        link.declared.add(mark)

    def delay_queue(self, routing_key: str, delay_ms: int) -> tuple[str, dict[str, Any]]:
        """Name and declare arguments of the queue that holds a task for ``delay_ms``."""
        args: dict[str, Any] = {
            "x-dead-letter-exchange": self.cfg.exchange,
            "x-dead-letter-routing-key": routing_key,
        }
        if self.cfg.delayed_queue:
            return self.cfg.delayed_queue, args
        args["x-message-ttl"] = Long(delay_ms)
        args["x-expires"] = Long(delay_ms * 2)
        return f"delay.{delay_ms}.{self.cfg.exchange}.{routing_key}", args

    def _publish_delayed(self, sig: Signature, body: bytes, delay_ms: int) -> None:
        queue, args = self.delay_queue(sig.routing_key, delay_ms)
        props = self.properties(sig, priority=False)
        if self.cfg.delayed_queue:
            props["expiration"] = str(delay_ms)

        self._delay_queues[queue] = None

        if self.is_direct:
            target, key = sig.routing_key, sig.routing_key
        else:
            target, key = self.default_queue, self.cfg.binding_key

        def op(link: Link) -> None:
            # Unlike Go, also the queue the task is due in, as a plain publish declares it:
            # RabbitMQ would otherwise dead-letter the task into nothing when no worker has
            # declared its queue yet.
            self._declare_task_queue(link, target, key)
            # declared on every publish, as Go does (it re-arms the queue's x-expires)
            self._declare_exchange(link)
            declare_queue(link.channel, queue, durable=True, auto_delete=self.cfg.auto_delete,
                          arguments=args)
            bind_queue(link.channel, queue, self.cfg.exchange, queue, self.binding_args)
            if not self.cfg.delayed_queue:  # re-arm x-expires right before the message enters
                declare_queue(link.channel, queue, durable=True, auto_delete=self.cfg.auto_delete,
                              arguments=args)
            try:
                link.publish(body, self.cfg.exchange, queue, props)
            except UnroutableError:
                # the delay queue expired (x-expires = 2 * delay) between its declaration and
                # this publish: the delay has passed, the task is due now (Go loses it here)
                link.publish(body, self.cfg.exchange, sig.routing_key, self.properties(sig))

        self._run(op, sig)

    # -- consumer -----------------------------------------------------------------------
    def _get_consumer(self) -> _Consumer:
        with self._consumer_lock:
            if self._consumer is None:
                self._consumer = _Consumer(self)
            return self._consumer

    def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        return self._get_consumer().fetch(queues, max_messages, timeout)

    def wait_for_messages(self, timeout: float) -> None:
        """Until the consumer has deliveries buffered or bytes waiting on its connection (at
        most ``timeout`` s); at once when not consuming yet."""
        consumer = self._consumer
        if consumer is not None:
            consumer.wait_for_messages(timeout)

    def ack(self, delivery: Delivery) -> None:
        self._get_consumer().settle(delivery, "ack")

    def requeue(self, deliveries: Sequence[Delivery], *, front: bool = False) -> None:
        """Give messages back for any consumer, Go or Python.

        ``front`` (a stopping worker's unstarted messages): ``basic.nack`` with requeue, which
        puts each back in its own place, near the head.  Otherwise (an unregistered task) the
        bytes and properties are published again at the tail of the queue (default exchange)
        and the delivery acked, so the tasks queued behind it run first instead of the worker
        meeting it again at once (Go nacks it to the head: a hot redelivery loop).  Bytes not
        taken from this broker's consumer are published at the tail either way."""
        consumer = self._get_consumer()
        for d in deliveries:
            tagged = "delivery_tag" in d.extra
            if tagged and front:
                consumer.settle(d, "requeue")
                continue
            self._republish(d)
            if tagged:
                consumer.settle(d, "ack")

    def _republish(self, d: Delivery) -> None:
        props = dict(d.extra.get("properties") or
                     {"content_type": "application/json", "delivery_mode": 2})
        queue = d.queue

        def op(link: Link) -> None:
            try:
                link.publish(d.body, "", queue, props)
            except UnroutableError:  # no such queue yet: declare it as a worker does
                self._declare_exchange(link)
                declare_queue(link.channel, queue, durable=True, auto_delete=False,
                              arguments=self.declare_args)
                bind_queue(link.channel, queue, self.cfg.exchange, self.cfg.binding_key,
                           self.binding_args)
                link.publish(d.body, "", queue, props)

        try:
            self._pool.run(op, budget=self.publish_budget, describe=f"requeue to {queue}")
        except BrokerError as e:
            raise PublishError(f"could not put a message back into {queue}: {e}") from e

    def requeue_later(self, deliveries: Sequence[Delivery], delay: float) -> bool:
        """Hand messages back in about ``delay`` s without holding their deliveries (which
        would hold prefetch slots meanwhile): each is published, bytes and properties
        unchanged, to the queue ``machinery_compat.handback.<ms>.<queue>`` (message TTL
        ``<ms>``, dead-lettered through the default exchange into ``<queue>``), then acked.
        Go never declares or reads these queues; they expire when unused."""
        consumer = self._get_consumer()
        delay_ms = max(1, round(delay * 1000))
        for d in deliveries:
            self._publish_handback(d, delay_ms)
            if "delivery_tag" in d.extra:
                consumer.settle(d, "ack")
        return True

    def _publish_handback(self, d: Delivery, delay_ms: int) -> None:
        props = dict(d.extra.get("properties") or
                     {"content_type": "application/json", "delivery_mode": 2})
        queue = d.queue
        holding = f"{HANDBACK_PREFIX}{delay_ms}.{queue}"
        args: dict[str, Any] = {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue,
            "x-message-ttl": Long(delay_ms),
            # unused for this long, the queue goes (it is re-declared, re-arming this, before
            # every publish; a message in it is dead-lettered long before)
            "x-expires": Long(max(delay_ms * 4, HANDBACK_MIN_EXPIRES_MS)),
        }

        def op(link: Link) -> None:
            declare_queue(link.channel, holding, durable=True, auto_delete=False, arguments=args)
            try:
                link.publish(d.body, "", holding, props)
            except UnroutableError:  # expired between declare and publish: back at once
                link.publish(d.body, "", queue, props)

        try:
            self._pool.run(op, budget=self.publish_budget, describe=f"hand back to {queue}")
        except BrokerError as e:
            raise PublishError(f"could not hand a message back to {queue}: {e}") from e

    def stop_consuming(self, *, idle: bool = True) -> None:
        """The worker stopped fetching: cancel the consumers now and give back what was
        prefetched but not handed out (deliveries the worker holds stay unacked until it
        settles them; the connection stays for that)."""
        with self._consumer_lock:
            consumer = self._consumer
        if consumer is not None:
            consumer.pause()

    def drop(self, delivery: Delivery) -> None:
        """``IgnoreWhenTaskNotRegistered``: Go nacks without requeue."""
        self._get_consumer().settle(delivery, "drop")

    def dead_letter(self, delivery: Delivery, reason: str) -> str:
        """Publish the bytes, unchanged, to the durable queue ``<queue>.dead`` (default
        exchange), then ack the original."""
        where = f"{delivery.queue}.dead"
        self.publish_raw(where, delivery.body, headers={"x-machinery-compat-reason": reason[:1000]})
        if "delivery_tag" in delivery.extra:
            self._get_consumer().settle(delivery, "ack")
        return where

    def publish_raw(self, queue: str, body: bytes, *, headers: dict[str, Any] | None = None) -> None:
        """Put raw bytes into ``queue`` (declared durable, plain) through the default exchange."""
        props: dict[str, Any] = {"content_type": "application/json", "delivery_mode": 2}
        if headers:
            props["application_headers"] = headers

        def op(link: Link) -> None:
            mark = ("plain", queue)
            if mark not in link.declared:
                declare_queue(link.channel, queue, durable=True, auto_delete=False, arguments=None)
                link.declared.add(mark)
            link.publish(body, "", queue, props)

        try:
            self._pool.run(op, budget=self.publish_budget, describe=f"publish to {queue}")
        except BrokerError as e:
            raise PublishError(f"could not put a message into {queue}: {e}") from e

    # -- inspection ---------------------------------------------------------------------
    def pending_tasks(self, queue: str | None = None) -> list[Signature]:
        """Go's ``GetPendingTasks``: ``basic.get`` every message without ack, then give them
        all back (``basic.nack(multiple, requeue)``).  Messages already delivered to a
        consumer are not seen.  Undecodable ones are logged and skipped."""
        q = queue or self.default_queue
        key = self.cfg.binding_key

        def op(link: Link) -> list[Signature]:
            self._declare_task_queue(link, q, key)
            out: list[Signature] = []
            for msg in browse(link.channel, q):
                body = body_bytes(msg.body)
                try:
                    out.append(Signature.from_json(body))
                except DecodeError as e:
                    logger.warning("undecodable message in %s: %s; raw=%r", q, e, body[:200])
            return out

        result: list[Signature] = self._pool.run(op, describe=f"pending tasks of {q}")
        return result

    def delayed_messages(self) -> list[bytes]:
        """The raw bodies waiting in the delay queues this broker published into (in this
        process: RabbitMQ cannot list queues over AMQP), browsed without consuming."""
        names = list(self._delay_queues)

        def op(link: Link) -> list[bytes]:
            out: list[bytes] = []
            for name in names:
                out += _browse(link, name)
            return out

        bodies: list[bytes] = self._pool.run(op, describe="browse delay queues")
        return bodies

    def delayed_tasks(self) -> list[Signature]:
        """The tasks waiting in this process's delay queues (see :meth:`delayed_messages`),
        soonest ETA first.  Go's AMQP broker cannot list them at all."""
        out = []
        for body in self.delayed_messages():
            try:
                out.append(Signature.from_json(body))
            except DecodeError as e:
                logger.warning("undecodable message in a delay queue: %s; raw=%r", e, body[:200])
        return sorted(out, key=lambda s: s.eta.unix_ns if s.eta is not None else 0)

    def close(self) -> None:
        with self._consumer_lock:
            consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()
        self._pool.close()


def _browse(link: Link, queue: str) -> list[bytes]:
    """The bodies ready in ``queue`` (``basic.get`` each, then nack them all back with
    requeue), on a channel of its own; ``[]`` when the queue does not exist (any more)."""
    ch = link.conn.connection.channel()
    try:
        try:
            ch.queue_declare(queue, passive=True)
        except channel_errors() as e:
            if getattr(e, "code", None) == 404:
                return []
            raise
        return [body_bytes(m.body) for m in browse(ch, queue)]
    finally:
        if ch.is_open:
            ch.close()


class _Consumer:
    """The worker side of one broker: one connection, one channel, a consumer per queue.

    py-amqp channels are not thread-safe, so every use of the connection holds ``_io``:
    the fetching thread holds it while it reads frames (never while it waits for the socket
    to become readable), pool threads hold it for the instant an ack/reject takes.  A
    heartbeat thread keeps the connection alive while no fetch runs (all worker threads
    busy with long tasks).  Deliveries carry the connection generation they came on: after
    a reconnection, settling an old one is skipped (RabbitMQ has already requeued it).
    """

    def __init__(self, broker: AMQPBroker) -> None:
        self.broker = broker
        self.cfg = broker.cfg
        self._io = threading.RLock()
        self._conn: kombu.Connection | None = None
        self._channel: Any = None
        self._generation = 0
        self._consumers: dict[str, str] = {}  # consumer tag -> queue
        self._expect: dict[str, int] = {}  # new consumer's queue -> deliveries on their way
        self._buffer: collections.deque[Delivery] = collections.deque()
        self._errors = connection_errors()
        self._channel_errors = channel_errors()
        self._ack_errors: tuple[type[BaseException], ...] = (
            *self._errors, *self._channel_errors, AttributeError)
        self._fetching = False
        self._last_fetch = time.monotonic()
        self._closed = threading.Event()
        self._tag_prefix = f"machinery_compat-{socket.gethostname()}-{os.getpid()}-{next(_consumer_ids)}"
        self._heartbeat: threading.Thread | None = None
        self._pid = os.getpid()
        #: finished deliveries to ack: (generation, tag), appended by any thread, sent by
        #: whichever thread holds ``_io`` (see :meth:`_flush_acks`)
        self._acks: collections.deque[tuple[Any, int]] = collections.deque()
        #: delivery tags of this generation not settled yet (a heap; tags in ``_gone`` are
        #: settled and dropped lazily)
        self._unsettled: list[int] = []
        self._gone: set[int] = set()

    # -- connection ---------------------------------------------------------------------
    def _connect(self) -> None:
        conn = self.broker.endpoint.connection(heartbeat=CONSUMER_HEARTBEAT)
        try:
            connect(conn, attempts=1, what="consumer")
            channel = conn.connection.channel()
            declare_exchange(channel, self.cfg.exchange, self.cfg.exchange_type)
            channel.basic_qos(0, self.cfg.prefetch_count, False)
        except BaseException:
            close_quietly(conn)
            raise
        self._conn, self._channel = conn, channel
        self._generation += 1
        self._consumers = {}
        self._unsettled, self._gone = [], set()
        logger.info("AMQP consumer connected to %s", describe(conn))
        if self._heartbeat is None:
            self._heartbeat = threading.Thread(target=self._heartbeat_loop,
                                               name="mc-amqp-heartbeat", daemon=True)
            self._heartbeat.start()

    def _consume(self, queue: str) -> None:
        """Declare, bind and consume ``queue`` as Go's ``StartConsuming`` does."""
        ch = self._channel
        _, ready, _ = declare_queue(ch, queue, durable=True, auto_delete=False,
                                    arguments=self.broker.declare_args)
        prefetch = self.cfg.prefetch_count
        self._expect[queue] = min(ready, prefetch) if prefetch > 0 else ready
        bind_queue(ch, queue, self.cfg.exchange, self.cfg.binding_key, self.broker.binding_args)
        tag = f"{self._tag_prefix}-{queue}"
        generation = self._generation

        def on_message(msg: Any) -> None:
            heapq.heappush(self._unsettled, msg.delivery_tag)
            self._buffer.append(Delivery(
                body_bytes(msg.body), queue, msg.delivery_tag,
                {"delivery_tag": msg.delivery_tag, "generation": generation,
                 "redelivered": bool(msg.delivery_info.get("redelivered")),
                 "properties": dict(msg.properties)},
            ))

        ch.basic_consume(queue, consumer_tag=tag, no_local=False, no_ack=False, exclusive=False,
                         nowait=False, callback=on_message, arguments=None)
        self._consumers[tag] = queue

    def _broken(self, exc: BaseException) -> BrokerConnectionError:
        """Forget the connection (RabbitMQ requeues what it had delivered on it)."""
        conn, self._conn, self._channel = self._conn, None, None
        dropped = len(self._buffer)
        self._buffer.clear()
        self._consumers = {}
        self._unsettled, self._gone = [], set()
        close_quietly(conn)
        if dropped:
            logger.info("AMQP consumer: %d prefetched message(s) left to RabbitMQ to redeliver",
                        dropped)
        return BrokerConnectionError(f"AMQP consumer connection lost: {exc!r}")

    def _ready(self, queues: Sequence[str]) -> bool:
        """Connected and consuming every queue; True when consumers were just started."""
        if self._conn is None:
            self._connect()
        missing = set(queues) - set(self._consumers.values())
        for q in sorted(missing):
            self._consume(q)
        return bool(missing)

    # -- reading ------------------------------------------------------------------------
    def _sock(self) -> Any:
        conn = self._conn
        if conn is None:
            return None
        transport = getattr(conn.connection, "transport", None)
        return getattr(transport, "sock", None)

    def _pending_bytes(self) -> bool:
        """Bytes py-amqp already holds (partial frame, TLS record) that select() cannot see."""
        transport = getattr(self._conn.connection, "transport", None) if self._conn else None
        if transport is None:
            return False
        if getattr(transport, "_read_buffer", b""):
            return True
        pending = getattr(transport.sock, "pending", None)
        return bool(pending and pending())

    def _pump(self) -> None:
        """Read every frame that has arrived (deliveries land in ``_buffer``) and keep the
        heartbeats going.  Holds ``_io``; never blocks for long."""
        conn = self._conn
        assert conn is not None
        amqp_conn = conn.connection
        transport = amqp_conn.transport
        read_available = getattr(transport, "read_available", None)
        if read_available is not None and transport.can_wait_itself():
            # plain TCP (machinery_compat._amqp): one non-blocking recv brings what has
            # arrived; the frames are handled from the buffer without further system calls
            on_frame = amqp_conn.on_inbound_frame
            take = transport._buffered_frame
            for _ in range(10_000):
                while (frame := take()) is not None:
                    on_frame(frame)
                if not read_available():
                    while (frame := take()) is not None:
                        on_frame(frame)
                    break
            conn.heartbeat_check()
            return
        sock = self._sock()
        for _ in range(10_000):
            if not self._pending_bytes():
                r, _, _ = select.select([sock], [], [], 0)
                if not r:
                    break
            try:
                amqp_conn.blocking_read(timeout=1.0)
            except TimeoutError:
                break
        conn.heartbeat_check()

    def _check_fork(self) -> None:
        """In a forked child: forget the parent's connection (without closing it: the socket
        is the parent's), its deliveries, locks and heartbeat thread."""
        if self._pid == _pid:
            return
        self._pid = _pid
        self._io = threading.RLock()
        self._conn, self._channel = None, None
        self._buffer = collections.deque()
        self._consumers = {}
        self._expect = {}
        self._acks = collections.deque()
        self._unsettled, self._gone = [], set()
        self._generation += 1
        self._heartbeat = None
        self._tag_prefix = f"machinery_compat-{socket.gethostname()}-{os.getpid()}-{next(_consumer_ids)}"

    def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        self._check_fork()
        try:
            return self._fetch(queues, max_messages, timeout)
        finally:
            self._fetching = False
            self._last_fetch = time.monotonic()

    def _fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            with self._holding_io():
                if self._closed.is_set():
                    return []
                self._fetching = True
                if self._acks and self._channel is not None:
                    self._flush_acks()
                try:
                    if self._ready(queues):
                        self._first_burst()
                    if not self._buffer:
                        self._pump()
                except BrokerConnectionError:
                    raise
                except self._errors as e:
                    raise self._broken(e) from e
                except self._channel_errors as e:
                    # e.g. PRECONDITION_FAILED: a queue exists with other arguments
                    self._broken(e)
                    raise BrokerError(f"AMQP consumer of {', '.join(queues)}: {e}") from e
                if self._buffer:
                    self._fetching = False
                    return self._take(queues, max_messages)
                sock = self._sock()
            left = deadline - time.monotonic()
            if left <= 0:
                self._fetching = False
                return []
            try:
                select.select([sock], [], [], min(left, CONSUMER_HEARTBEAT / 4))
            except (OSError, ValueError):  # closed under us by a reconnection: look again
                time.sleep(0.01)

    def wait_for_messages(self, timeout: float) -> None:
        """Until deliveries are buffered or the socket has bytes, at most ``timeout`` s."""
        if self._buffer or self._closed.is_set() or self._pid != _pid:
            return
        sock = self._sock()
        if sock is None or self._pending_bytes():
            return
        with contextlib.suppress(OSError, ValueError):  # closed under us by a reconnection
            select.select([sock], [], [], timeout)

    def _first_burst(self) -> None:
        """Wait (briefly) for what new consumers were about to receive, going by the ready
        counts their queue declarations reported, so the queue order a fetch gives is
        honoured from the first fetch on."""
        deadline = time.monotonic() + _FIRST_BURST
        while True:
            self._pump()
            have = collections.Counter(d.queue for d in self._buffer)
            missing = [q for q, n in self._expect.items() if have[q] < n]
            left = deadline - time.monotonic()
            if not missing or left <= 0:
                break
            select.select([self._sock()], [], [], min(left, 0.05))
        self._expect.clear()

    def _take(self, queues: Sequence[str], n: int) -> list[Delivery]:
        """Up to ``n`` buffered deliveries of the first queue (in the order given) that has
        any, in arrival order: a worker rotating its queue list serves them fairly."""
        present = {d.queue for d in self._buffer}
        queue = next((q for q in queues if q in present), self._buffer[0].queue)
        out: list[Delivery] = []
        rest: collections.deque[Delivery] = collections.deque()
        for d in self._buffer:
            if d.queue == queue and len(out) < n:
                out.append(d)
            else:
                rest.append(d)
        self._buffer = rest
        return out

    # -- settling -----------------------------------------------------------------------
    def settle(self, delivery: Delivery, how: str) -> None:
        """Ack, requeue (nack with requeue) or drop (nack) one delivery.

        An ack is queued and sent by whichever thread holds the connection next, this one
        if it is free (at once, then): acks that meet there go out in one write, and a run
        of consecutive delivery tags as one ``basic.ack(multiple)`` (only tags whose tasks
        finished: the acks still follow the final states).  A nack first sends the acks
        queued before it."""
        tag = delivery.extra.get("delivery_tag")
        if tag is None:
            return
        self._check_fork()
        generation = delivery.extra.get("generation")
        if how == "ack":
            self._acks.append((generation, tag))
            if self._io.acquire(blocking=False):
                try:
                    if self._channel is not None:
                        self._flush_acks()
                finally:
                    self._release_io()
            return
        with self._holding_io():
            if self._channel is None or generation != self._generation:
                logger.info("AMQP: cannot %s message %s from %s: its connection was lost; "
                            "RabbitMQ redelivers it", how, tag, delivery.queue)
                return
            try:
                self._flush_acks()
                if self._channel is None:
                    return
                # Go: delivery.Nack(multiple=false, requeue)
                basic_nack(self._channel, tag, multiple=False, requeue=how == "requeue")
                self._gone.add(tag)
            except (*self._errors, *self._channel_errors) as e:
                logger.warning("AMQP: %s of message %s from %s failed (%s); RabbitMQ "
                               "redelivers it", how, tag, delivery.queue, e)
                self._broken(e)

    @contextlib.contextmanager
    def _holding_io(self) -> Any:
        """``with self._io``, sending the acks queued meanwhile after letting go."""
        self._io.acquire()
        try:
            yield
        finally:
            self._release_io()

    def _release_io(self) -> None:
        """Release ``_io``; then, while acks are queued and ``_io`` is free, send them (an
        ack queued while another thread held ``_io`` is sent by that thread here)."""
        self._io.release()
        while self._acks and self._io.acquire(blocking=False):
            try:
                if self._channel is not None:
                    self._flush_acks()
                else:
                    self._drop_acks()
            finally:
                self._io.release()

    def _drop_acks(self) -> None:
        while self._acks:
            _, tag = self._acks.popleft()
            logger.info("AMQP: cannot ack message %s: its connection was lost; RabbitMQ "
                        "redelivers it", tag)

    def _flush_acks(self) -> None:
        """Send the queued acks (holding ``_io``, connected) in one write: the lowest
        unsettled tags that are all finished as one ``basic.ack(multiple)``, the others one
        by one.  Acks of an earlier connection are skipped (RabbitMQ requeued those)."""
        if not self._acks:
            return
        generation = self._generation
        tags: list[int] = []
        while self._acks:
            gen, tag = self._acks.popleft()
            if gen == generation:
                tags.append(tag)
            else:
                logger.info("AMQP: cannot ack message %s: its connection was lost; RabbitMQ "
                            "redelivers it", tag)
        if not tags:
            return
        tags.sort()
        heap, gone = self._unsettled, self._gone
        last = 0
        run = 0
        for tag in tags:
            while heap and heap[0] in gone:
                gone.discard(heapq.heappop(heap))
            if not heap or heap[0] != tag:
                break
            heapq.heappop(heap)
            last = tag
            run += 1
        methods = []
        if run:
            methods.append((last, run > 1))
        for tag in tags[run:]:
            gone.add(tag)
            methods.append((tag, False))
        ch = self._channel
        try:
            conn = ch.connection
            ch_id = ch.channel_id
            conn.transport.write(b"".join(
                _ACK_FRAME.pack(1, ch_id, 13, 60, 80, tag, multiple, 0xCE)
                for tag, multiple in methods))
            conn.bytes_sent += 1
        except self._ack_errors as e:
            logger.warning("AMQP: acking %d message(s) failed (%s); RabbitMQ redelivers them",
                           len(tags), e)
            self._broken(e)

    # -- heartbeats and shutdown --------------------------------------------------------
    def _pause(self) -> None:
        """Cancel the consumers and give back what was prefetched but not handed out
        (RabbitMQ redelivers it to any consumer); the next fetch consumes again."""
        ch = self._channel
        for tag in list(self._consumers):
            ch.basic_cancel(tag)  # deliveries racing the cancel land in the buffer
        self._consumers = {}
        generation = self._generation
        while self._buffer:
            d = self._buffer.popleft()
            if d.extra.get("generation") == generation:
                basic_nack(ch, d.extra["delivery_tag"], multiple=False, requeue=True)
                self._gone.add(d.extra["delivery_tag"])

    def pause(self) -> None:
        with self._holding_io():
            if self._conn is None or not self._consumers:
                return
            try:
                self._flush_acks()
                if self._channel is None:
                    return
                self._pause()
            except (*self._errors, *self._channel_errors) as e:
                logger.warning("AMQP consumer: cancelling failed (%s); RabbitMQ redelivers "
                               "what it held", e)
                self._broken(e)

    def _heartbeat_loop(self) -> None:
        while not self._closed.wait(_TICK):
            # only when no fetch is waiting: fetch pumps (and beats) on its own
            if self._fetching or not self._io.acquire(timeout=0.1):
                continue
            try:
                if self._conn is not None:
                    self._flush_acks()
                if self._conn is not None:
                    self._pump()
                    if (self._consumers and not self._fetching
                            and time.monotonic() - self._last_fetch > IDLE_CANCEL):
                        self._pause()
            except (*self._errors, *self._channel_errors) as e:
                logger.warning("AMQP consumer heartbeat: %s", e)
                self._broken(e)
            except Exception:
                logger.exception("AMQP consumer heartbeat failed")
            finally:
                self._release_io()

    def close(self) -> None:
        self._check_fork()
        self._closed.set()
        with self._io:
            if self._channel is not None:
                self._flush_acks()  # finished tasks: acked before the connection goes
            conn, self._conn, self._channel = self._conn, None, None
            self._acks.clear()
            self._buffer.clear()
            if conn is not None:
                # unacked deliveries go back to their queues when the connection closes
                close_quietly(conn)
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=2)
