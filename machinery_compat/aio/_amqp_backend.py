"""The AMQP result backend of :mod:`machinery_compat.aio`, on aiormq (§6.4 of the protocol notes).

Go Machinery's layout, as the sync :class:`~machinery_compat.backends.amqp.AMQPBackend` of the
same app writes and reads it — every name and argument comes from that object (``cfg.exchange``,
``queue_args``, the ``.exc`` suffix) and the state bytes from the protocol core
(:func:`~machinery_compat.backends.base.pending_state`); only the I/O is asyncio:

* a PENDING state is published (persistent, ``application/json``, publisher-confirmed) to the
  exchange with routing key = the task UUID, into the queue named the UUID (not durable,
  auto-delete, ``x-message-ttl``/``x-expires``), declared and bound first as Go does;
* :meth:`AioAMQPBackend.get_state` **consumes**: it re-declares the task's queue, takes every
  state waiting in it (``basic.get`` + ack) and returns the newest; what it consumed is
  remembered in the sync backend's per-process memory (:meth:`~machinery_compat.backends.amqp.
  AMQPBackend.newest_state`), so a sync and an async reader of one process see the same state;
  another process reading the same task competes for the messages (one reader per task);
* a Python worker's exception record (``<uuid>.exc``) is peeked: taken without ack and given
  back by one ``basic.nack(multiple, requeue)``;
* groups keep no meta on AMQP (Go's ``InitGroup`` is a no-op there).

One connection with one confirm-mode channel per event loop (not the broker's: the backend URL
is dialled on its own, as Go does); a failed operation is retried on a new connection for up to
the sync backend's ``budget`` seconds, then raises :class:`~machinery_compat.exceptions.
BackendError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..backends.amqp import EXCEPTION_QUEUE_SUFFIX
from ..backends.base import decode_exception_record, pending_state
from ..exceptions import BackendError
from ._amqp import Connector, _Link, _Unroutable, require_aiormq

if TYPE_CHECKING:
    from ..backends.amqp import AMQPBackend
    from ..backends.base import ExceptionRecord
    from ..protocol import GroupMeta, Signature, TaskState

#: at most this many messages taken from one queue per read (the sync backend's bound)
MAX_READ = 10_000
_PROPS = {"content_type": "application/json", "delivery_mode": 2}


class AioAMQPBackend:
    """Reads and writes task states as the app's sync AMQP backend ``sync`` does, over aiormq."""

    def __init__(self, sync: AMQPBackend) -> None:
        self.sync = sync
        self._connector = Connector(sync.endpoint)

    async def _run(self, op: Any, what: str) -> Any:
        def fail(e: BaseException) -> Exception:
            return BackendError(f"AMQP result backend: {what}: {e!r}")

        return await self._connector.run(op, self.sync.budget, fail)

    async def _declare(self, link: _Link, name: str, *, force: bool = False) -> None:
        """Exchange + the per-task queue + its binding (Go's ``Connect``), once per
        connection unless ``force``."""
        cfg = self.sync.cfg
        if "exchange" not in link.declared:
            if cfg.exchange:
                await link.channel.exchange_declare(
                    cfg.exchange, exchange_type=cfg.exchange_type, durable=True,
                    auto_delete=False, internal=False)
            link.declared.add("exchange")
        mark = ("result", name)
        if not force and mark in link.declared:
            return
        await link.channel.queue_declare(name, durable=False, exclusive=False, auto_delete=True,
                                         arguments=dict(self.sync.queue_args))
        if cfg.exchange:  # the default exchange refuses bindings
            await link.channel.queue_bind(name, cfg.exchange, name)
        if len(link.declared) > MAX_READ:
            link.declared.clear()
            link.declared.add("exchange")
        link.declared.add(mark)

    async def _publish(self, name: str, body: bytes, what: str) -> None:
        exchange = self.sync.cfg.exchange

        async def op(link: _Link) -> None:
            await self._declare(link, name)
            try:
                await link.publish(body, exchange, name, _PROPS)
            except _Unroutable:  # the queue expired or was deleted: declare it again
                await self._declare(link, name, force=True)
                await link.publish(body, exchange, name, _PROPS)

        await self._run(op, what)

    # -- writes (the producer's) --------------------------------------------------------
    async def set_pending(self, sigs: Sequence[Signature]) -> None:
        """Go's ``SetStatePending`` for each of ``sigs``, in order."""
        for sig in sigs:
            await self._publish(sig.uuid, pending_state(sig).to_json(),
                                f"state PENDING of {sig.uuid}")

    async def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        """Nothing: Go's AMQP backend keeps no group meta."""

    # -- reads --------------------------------------------------------------------------
    async def get_state(self, task_uuid: str) -> TaskState | None:
        """Consume every state waiting in the task's queue; the newest (or the newest this
        process consumed before, or ``None``)."""

        async def op(link: _Link) -> list[bytes]:
            await self._declare(link, task_uuid, force=True)  # Go re-declares before basic.get
            out: list[bytes] = []
            while len(out) < MAX_READ:
                msg = await link.channel.basic_get(task_uuid, no_ack=False)
                tag = getattr(msg.delivery, "delivery_tag", None)
                if tag is None:  # Basic.GetEmpty
                    break
                await link.channel.basic_ack(tag)
                out.append(bytes(msg.body))
            return out

        bodies: list[bytes] = await self._run(op, f"state of {task_uuid}")
        return self.sync.newest_state(task_uuid, bodies)

    async def get_exception_record(self, task_uuid: str) -> ExceptionRecord | None:
        """The newest record in ``<uuid>.exc``, peeked (the messages stay)."""
        name = task_uuid + EXCEPTION_QUEUE_SUFFIX
        bodies: list[bytes] = await self._run(lambda link: self._peek(link, name),
                                              f"exception record of {task_uuid}")
        return decode_exception_record(task_uuid, bodies[-1]) if bodies else None

    async def _peek(self, link: _Link, name: str) -> list[bytes]:
        aiormq = require_aiormq()
        # a throw-away channel: RabbitMQ closes the channel of a failed passive declare
        channel = await link.connection.channel()
        try:
            try:
                await channel.queue_declare(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return []
            out: list[bytes] = []
            last = None
            try:
                while len(out) < MAX_READ:
                    msg = await channel.basic_get(name, no_ack=False)
                    tag = getattr(msg.delivery, "delivery_tag", None)
                    if tag is None:
                        break
                    last = tag
                    out.append(bytes(msg.body))
            finally:
                if last is not None:
                    await channel.basic_nack(last, multiple=True, requeue=True)
            return out
        finally:
            if not channel.is_closed:
                await channel.close()

    async def get_group_meta(self, group_uuid: str) -> GroupMeta | None:
        return None

    async def purge_state(self, task_uuid: str) -> None:
        """Delete the task's queue and its exception record's."""
        self.sync.forget_consumed(task_uuid)
        names = (task_uuid, task_uuid + EXCEPTION_QUEUE_SUFFIX)

        async def op(link: _Link) -> None:
            for name in names:
                await link.channel.queue_delete(name, if_unused=False, if_empty=False)
                link.declared.discard(("result", name))

        await self._run(op, f"delete {', '.join(names)}")

    async def close(self) -> None:
        await self._connector.close()
