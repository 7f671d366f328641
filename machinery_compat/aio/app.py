"""``AsyncMachinery``: the producer side of an app for asyncio code (``app.aio``).

Every message is built by the sync app's code (``build_signature``, the canvas's
``to_signature(s)``, Go's ``SendTask``/``SendGroup`` stamping in :mod:`machinery_compat.app`)
and every Redis command by the sync broker's and backend's ``*_command`` methods; only the I/O
is asyncio, so the bytes stored and published are the sync API's.  The pre-publish handler,
``before_task_publish``/``after_task_publish`` signals and tracing spans run as they do for a
sync send (they are sync callables, called in the loop).

Stacks: a Redis broker or an AMQP broker, with a Redis or AMQP result backend.  Any other
broker or result backend raises :class:`~machinery_compat.exceptions.ConfigError` on the first
send or read.  Connections are per event loop; ``await
app.aio.close()`` (or ``async with app.aio:``) closes the current loop's.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._redis import Timeouts
from ..app import _stamp, _stamp_group
from ..canvas import Chain, Chord, Group, Sig
from ..config import mask_url
from ..exceptions import BackendError, ConfigError, PublishError
from ..protocol import Signature
from ._redis import (
    AioRedisBackend,
    AioRedisBroker,
    client_key,
    close_client,
    execute,
    new_client,
)
from .result import AioChainResult, AioChordResult, AioGroupResult, AioResult

if TYPE_CHECKING:
    from ..app import Machinery
    from ._amqp import AioAMQPBroker
    from ._amqp_backend import AioAMQPBackend

logger = logging.getLogger(__name__)

_REDIS = ("redis://", "rediss://", "redis+socket://")


class _LoopConnections:
    """What one event loop holds: its redis.asyncio clients, broker and backend."""

    def __init__(self) -> None:
        self.redis: dict[tuple[Any, ...], Any] = {}
        self.broker: AioRedisBroker | AioAMQPBroker | None = None
        self.backend: AioRedisBackend | AioAMQPBackend | None = None


class AsyncMachinery:
    """The asyncio API of ``app`` (get it as ``app.aio``)."""

    def __init__(self, app: Machinery) -> None:
        self.app = app
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopConnections] = (
            weakref.WeakKeyDictionary())
        self._loops_lock = threading.Lock()  # loops of several threads (a web server's)

    # -- connections --------------------------------------------------------------------
    def _here(self) -> _LoopConnections:
        loop = asyncio.get_running_loop()
        with self._loops_lock:
            conns = self._loops.get(loop)
            if conns is None:
                conns = self._loops[loop] = _LoopConnections()
        return conns

    def _redis_client(self, conns: _LoopConnections, url: str) -> Any:
        cfg = self.app.config
        timeouts = Timeouts.from_config(cfg)
        key = client_key(url, timeouts)
        client = conns.redis.get(key)
        if client is None:
            client = conns.redis[key] = new_client(url, timeouts, tls_context=cfg.tls_config,
                                                   topology=cfg.redis)
        return client

    async def _broker(self) -> AioRedisBroker | AioAMQPBroker:
        conns = self._here()
        if conns.broker is None:
            url = self.app.config.broker
            if url.startswith(_REDIS):
                client = self._redis_client(conns, url)  # refuses what it cannot do first
                conns.broker = AioRedisBroker(self.app.broker, client)
            elif url.startswith(("amqp://", "amqps://")):
                from ._amqp import AioAMQPBroker

                conns.broker = AioAMQPBroker(self.app.broker)  # type: ignore[arg-type]
            else:
                raise ConfigError(f"the asyncio API supports Redis and AMQP brokers, not "
                                  f"{mask_url(url)}; use the sync API (app.send_task)")
        return conns.broker

    async def _result_backend(self) -> AioRedisBackend | AioAMQPBackend:
        conns = self._here()
        if conns.backend is None:
            url = self.app.config.result_backend
            if url.startswith(_REDIS):
                client = self._redis_client(conns, url)
                conns.backend = AioRedisBackend(self.app.backend, client)
            elif url.startswith(("amqp://", "amqps://")):
                from ._amqp_backend import AioAMQPBackend

                conns.backend = AioAMQPBackend(self.app.backend)  # type: ignore[arg-type]
            else:
                raise ConfigError(f"the asyncio API supports a Redis or AMQP result backend, "
                                  f"not {mask_url(url)}; use the sync API (app.send_task, "
                                  "AsyncResult.get)")
        return conns.backend

    async def close(self) -> None:
        """Close this loop's connections (new ones are made if the app is used again)."""
        with self._loops_lock:
            conns = self._loops.pop(asyncio.get_running_loop(), None)
        if conns is None:
            return
        if conns.broker is not None and not isinstance(conns.broker, AioRedisBroker):
            await conns.broker.close()
        if conns.backend is not None and not isinstance(conns.backend, AioRedisBackend):
            await conns.backend.close()
        for client in conns.redis.values():
            await close_client(client)

    async def __aenter__(self) -> AsyncMachinery:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- sending ------------------------------------------------------------------------
    async def send_task(self, name: str, args: Sequence[Any] = (),
                        kwargs: Mapping[str, Any] | None = None, **options: Any) -> AioResult:
        """``app.send_task`` for asyncio: same arguments, same message; an :class:`AioResult`."""
        return await self.send_signature(self.app._task_signature(name, args, kwargs, options))

    async def send_signature(self, sig: Signature) -> AioResult:
        """Go's ``SendTask``: id, headers, PENDING state, then publish."""
        sig.validate()
        _stamp(sig)
        app = self.app
        with app._producer_span((sig,), "SendTask"):
            await self._publish_with_pending(sig)
        app._after_publish(sig)
        return AioResult(sig.uuid, self, sig.name)

    def _shared(self, broker: Any, backend: AioRedisBackend | AioAMQPBackend) -> bool:
        return (isinstance(broker, AioRedisBroker) and isinstance(backend, AioRedisBackend)
                and broker.client is backend.client)

    async def _publish_with_pending(self, sig: Signature) -> None:
        app = self.app
        broker, backend = await self._broker(), await self._result_backend()
        if self._shared(broker, backend):
            assert isinstance(broker, AioRedisBroker) and isinstance(backend, AioRedisBackend)
            app._pre_publish(sig)
            app._before_publish(sig)
            try:  # one round trip, PENDING first (the sync fast path's order)
                await execute(backend.client,
                              [backend.pending_command(sig), broker.publish_command(sig)])
            except Exception as e:
                raise PublishError(
                    f"Publish message error: {e} (task {sig.uuid} {sig.name!r}: the PENDING "
                    f"state and the message may not have been stored on "
                    f"{mask_url(app.config.broker)})") from e
            return
        try:
            await backend.set_pending([sig])
        except Exception as e:
            raise BackendError(f"Set state pending error: {e} (task {sig.uuid} {sig.name!r} "
                               "was not published)") from e
        app._pre_publish(sig)
        app._before_publish(sig)
        await broker.publish(sig)

    async def send_chain(self, sigs: Sequence[Signature]) -> AioChainResult:
        """Go's ``SendChain``: send the first step (the rest travel nested in it)."""
        with self.app._producer_span(sigs[:1], "SendChain"):
            await self.send_signature(sigs[0])
        return AioChainResult([AioResult(s.uuid, self, s.name) for s in sigs])

    async def send_group(self, members: Sequence[Signature],
                         send_concurrency: int = 0) -> AioGroupResult:
        """Go's ``SendGroup``: InitGroup, PENDING for every member, then publish them all (one
        round trip when broker and backend are one Redis; else up to ``send_concurrency``
        publishes at a time, 0 = all at once)."""
        group_uuid = _stamp_group(members)
        operation = "SendChord" if members[0].chord_callback is not None else "SendGroup"
        with self.app._producer_span(members, operation):
            await self._send_group(members, group_uuid, send_concurrency)
        return AioGroupResult(group_uuid, [AioResult(m.uuid, self, m.name) for m in members])

    async def _send_group(self, members: Sequence[Signature], group_uuid: str,
                          send_concurrency: int) -> None:
        app = self.app
        broker, backend = await self._broker(), await self._result_backend()
        if self._shared(broker, backend):
            assert isinstance(broker, AioRedisBroker) and isinstance(backend, AioRedisBackend)
            init = backend.init_group_command(group_uuid, [m.uuid for m in members])
            for m in members:
                app._before_publish(m)
            commands = [init, *(backend.pending_command(m) for m in members),
                        *(broker.publish_command(m) for m in members)]
            try:
                await execute(backend.client, commands)
            except Exception as e:
                raise PublishError(f"Publish group {group_uuid} error: {e} (its members may "
                                   f"not all have been stored or sent)") from e
        else:
            try:
                await backend.init_group(group_uuid, [m.uuid for m in members])
            except Exception as e:  # Go ignores this error too, but says nothing
                logger.warning("InitGroup %s failed: %s", group_uuid, e)
            try:
                await backend.set_pending(members)
            except Exception as e:
                raise BackendError(f"Set state pending error: {e} (group {group_uuid} was "
                                   "not published)") from e
            for m in members:
                app._before_publish(m)
            limit = asyncio.Semaphore(send_concurrency if send_concurrency > 0 else len(members))

            async def publish(m: Signature) -> None:
                async with limit:
                    await broker.publish(m)

            await asyncio.gather(*(publish(m) for m in members))
        for m in members:
            app._after_publish(m)

    async def apply_async(self, target: Sig | Chain | Group | Chord, *, send_concurrency: int = 0,
                          **options: Any) -> Any:
        """Send a canvas object (``add.s(1, 2)``, a chain, a group, a chord) as its sync
        ``apply_async(**options)`` would; returns the matching awaitable result."""
        if isinstance(target, Sig):
            return await self.send_signature(target.to_signature(**options))
        if isinstance(target, Chain):
            return await self.send_chain(target.to_signatures(**options))
        if isinstance(target, Group):
            return await self.send_group(target.to_signatures(**options), send_concurrency)
        if isinstance(target, Chord):
            members, callback = target.to_signatures(**options)
            group = await self.send_group(members, send_concurrency)
            return AioChordResult(group, AioResult(callback.uuid, self, callback.name))
        raise TypeError(f"apply_async: a signature, chain, group or chord, not {target!r}")

    def AsyncResult(self, task_id: str) -> AioResult:
        """The awaitable result of the task with this id (sent by anyone, Go or Python)."""
        return AioResult(task_id, self)

    def __repr__(self) -> str:
        return f"<AsyncMachinery of {self.app!r}>"
