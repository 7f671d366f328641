"""aio-pika/aiormq publisher of :mod:`machinery_compat.aio`, on Go Machinery's AMQP topology.

Every name, flag and argument comes from the sync :class:`~machinery_compat.brokers.amqp.
AMQPBroker` of the same app (``adjust_routing_key``, ``properties``, ``delay_queue``, its
``declare_args``/``binding_args`` and ``amqp:`` settings); only the I/O differs.  One
connection and one confirm-mode channel per event loop (on aio-pika's AMQP core, aiormq),
declarations made once per connection as the sync producer does; mandatory publishes with
publisher confirms: a nack raises :class:`~machinery_compat.exceptions.PublishError`, a
returned message (its queue deleted meanwhile) re-declares the queue once and publishes again.
A broken connection is replaced and the publish retried for up to
:data:`~machinery_compat._amqp.PUBLISH_RETRY_BUDGET` seconds (at-least-once, as the sync
producer), the URLs of ``multiple_broker_separator`` tried in order.

Two differences on the wire, neither read by Go: aiormq gives every message a random
``message_id`` property (it matches returns to publishes by it), and field-table integers
(``x-message-ttl``, ``x-expires``, YAML ``queue_declare_args``) go out in pamqp's smallest
integer type where Go sends ``l``/``I``; RabbitMQ compares queue arguments by value within
the integer class, so both sides re-declare the same queues without a PRECONDITION_FAILED.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .._amqp import CONFIRM_TIMEOUT, CONNECT_TIMEOUT
from ..brokers.amqp import MIN_DELAY_MS
from ..exceptions import BackendError, ConfigError, PublishError
from ..protocol import Signature

if TYPE_CHECKING:
    from ..brokers.amqp import AMQPBroker

T = TypeVar("T")


def require_aiormq() -> Any:
    try:
        import aiormq
    except ImportError:
        raise ConfigError("the asyncio API on AMQP needs aio-pika: "
                          "pip install 'machinery-compat[aio]'") from None
    return aiormq


class _Unroutable(Exception):
    """RabbitMQ returned a mandatory message (no queue bound for its key)."""


class _Link:
    """One connection + one confirm-mode channel and what it declared."""

    def __init__(self, connection: Any, channel: Any) -> None:
        self.connection = connection
        self.channel = channel
        self.declared: set[Any] = set()

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # a broken connection: nothing more to do
            await self.connection.close()

    async def publish(self, body: bytes, exchange: str, routing_key: str,
                      props: dict[str, Any]) -> None:
        aiormq = require_aiormq()
        properties = aiormq.spec.Basic.Properties(
            content_type=props.get("content_type"), delivery_mode=props.get("delivery_mode"),
            headers=props.get("application_headers"), priority=props.get("priority"),
            expiration=props.get("expiration"))
        try:
            confirm = await self.channel.basic_publish(
                body, exchange=exchange, routing_key=routing_key, properties=properties,
                mandatory=True, timeout=CONFIRM_TIMEOUT)
        except aiormq.exceptions.PublishError as e:
            raise _Unroutable(str(e)) from e
        if not isinstance(confirm, aiormq.spec.Basic.Ack):
            raise PublishError(f"RabbitMQ nacked the message for exchange {exchange!r}, key "
                               f"{routing_key!r} ({type(confirm).__name__})")


class Connector:
    """One aiormq connection + confirm-mode channel to ``endpoint`` (the first of its URLs
    that answers), replaced when broken; :meth:`run` retries an operation on a new one."""

    def __init__(self, endpoint: Any) -> None:
        require_aiormq()
        self.endpoint = endpoint
        self._link: _Link | None = None
        self._lock = asyncio.Lock()

    async def get_link(self) -> _Link:
        async with self._lock:
            link = self._link
            if link is not None and not (link.connection.is_closed or link.channel.is_closed):
                return link
            if link is not None:  # a broken one: replace it
                self._link = None
                await link.close()
            aiormq = require_aiormq()
            errors: list[str] = []
            for url in self.endpoint.urls:
                try:
                    conn = await asyncio.wait_for(
                        aiormq.connect(url, context=self.endpoint.tls_context), CONNECT_TIMEOUT)
                except (OSError, TimeoutError, aiormq.exceptions.AMQPError) as e:
                    errors.append(f"{url.rsplit('@', 1)[-1]}: {e!r}")
                    continue
                channel = await conn.channel(publisher_confirms=True)
                self._link = _Link(conn, channel)
                return self._link
            raise ConnectionError("; ".join(errors))

    async def drop(self, link: _Link) -> None:
        if self._link is link:
            self._link = None
        await link.close()

    async def run(self, op: Callable[[_Link], Awaitable[T]], budget: float,
                  fail: Callable[[BaseException], Exception]) -> T:
        """``op`` on a link, on a fresh one after a connection error, within ``budget``
        seconds; errors retrying cannot help (and the last one) raise ``fail(error)``."""
        aiormq = require_aiormq()
        deadline = time.monotonic() + budget
        delay = 0.1
        while True:
            link: _Link | None = None
            try:
                link = await self.get_link()
                return await op(link)
            except (PublishError, BackendError):
                raise
            except _Unroutable as e:  # returned again after declaring its queue
                raise fail(e) from e
            except (aiormq.exceptions.ChannelPreconditionFailed,
                    aiormq.exceptions.ChannelAccessRefused,
                    aiormq.exceptions.ChannelNotFoundEntity) as e:  # retrying cannot help
                if link is not None:
                    await self.drop(link)
                raise fail(e) from e
            except (OSError, TimeoutError, ConnectionError, aiormq.exceptions.AMQPError,
                    aiormq.exceptions.ChannelInvalidStateError) as e:
                if link is not None:
                    await self.drop(link)
                if time.monotonic() + delay > deadline:
                    raise fail(e) from e
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.close()


class AioAMQPBroker:
    """Publishes as the app's sync AMQP broker ``sync`` would, over aiormq."""

    def __init__(self, sync: AMQPBroker) -> None:
        self.sync = sync
        self._connector = Connector(sync.endpoint)

    async def _run(self, op: Callable[[_Link], Awaitable[None]], sig: Signature) -> None:
        def fail(e: BaseException) -> Exception:
            if isinstance(e, _Unroutable):
                return PublishError(f"Failed to publish task {sig.name}[{sig.uuid}]: {e}")
            return PublishError(f"Failed to publish task {sig.name}[{sig.uuid}] to "
                                f"{self.sync.endpoint.describe()}: {e!r}")

        await self._connector.run(op, self.sync.publish_budget, fail)

    async def _declare_exchange(self, link: _Link) -> None:
        cfg = self.sync.cfg
        if "exchange" not in link.declared and cfg.exchange:
            await link.channel.exchange_declare(cfg.exchange, exchange_type=cfg.exchange_type,
                                                durable=True, auto_delete=False, internal=False)
        link.declared.add("exchange")

    async def _declare_queue(self, link: _Link, queue: str, *, auto_delete: bool,
                             arguments: dict[str, Any]) -> None:
        await link.channel.queue_declare(queue, durable=True, exclusive=False,
                                         auto_delete=auto_delete,
                                         arguments=dict(arguments) if arguments else None)

    async def _bind(self, link: _Link, queue: str, key: str) -> None:
        exchange = self.sync.cfg.exchange
        if exchange:  # the default exchange refuses bindings
            args = self.sync.binding_args
            await link.channel.queue_bind(queue, exchange, key,
                                          arguments=dict(args) if args else None)

    async def _declare_task_queue(self, link: _Link, queue: str, key: str) -> None:
        mark = ("queue", queue, key)
        if mark in link.declared:
            return
        await self._declare_exchange(link)
        await self._declare_queue(link, queue, auto_delete=False,
                                  arguments=self.sync.declare_args)
        await self._bind(link, queue, key)
        link.declared.add(mark)

    def _target(self, sig: Signature) -> tuple[str, str]:
        """The queue a producer declares for ``sig`` and the key binding it (Go's)."""
        if self.sync.is_direct:
            return sig.routing_key, sig.routing_key
        return self.sync.default_queue, self.sync.cfg.binding_key

    async def publish(self, sig: Signature) -> None:
        b = self.sync
        b.adjust_routing_key(sig)
        body = sig.to_json()
        if sig.eta is not None:
            delay_ms = (sig.eta.unix_ns - time.time_ns()) // 1_000_000
            if delay_ms >= MIN_DELAY_MS:
                await self._publish_delayed(sig, body, delay_ms)
                return
        queue, key = self._target(sig)
        props = b.properties(sig)

        async def op(link: _Link) -> None:
            await self._declare_task_queue(link, queue, key)
            try:
                await link.publish(body, b.cfg.exchange, sig.routing_key, props)
            except _Unroutable:  # the queue was deleted behind this connection: once more
                link.declared.discard(("queue", queue, key))
                await self._declare_task_queue(link, queue, key)
                await link.publish(body, b.cfg.exchange, sig.routing_key, props)

        await self._run(op, sig)

    async def _publish_delayed(self, sig: Signature, body: bytes, delay_ms: int) -> None:
        b = self.sync
        queue, args = b.delay_queue(sig.routing_key, delay_ms)
        props = b.properties(sig, priority=False)
        if b.cfg.delayed_queue:
            props["expiration"] = str(delay_ms)
        b._delay_queues[queue] = None
        target, key = self._target(sig)

        async def op(link: _Link) -> None:
            await self._declare_task_queue(link, target, key)
            await self._declare_exchange(link)
            await self._declare_queue(link, queue, auto_delete=b.cfg.auto_delete, arguments=args)
            await self._bind(link, queue, queue)
            if not b.cfg.delayed_queue:  # re-arm x-expires right before the message enters
                await self._declare_queue(link, queue, auto_delete=b.cfg.auto_delete,
                                          arguments=args)
            try:
                await link.publish(body, b.cfg.exchange, queue, props)
            except _Unroutable:  # the delay queue expired meanwhile: the task is due now
                await link.publish(body, b.cfg.exchange, sig.routing_key, b.properties(sig))

        await self._run(op, sig)

    async def close(self) -> None:
        await self._connector.close()
