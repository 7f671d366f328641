"""Redis broker, with Machinery's exact data layout.

URL forms (Machinery's): ``redis://[password@]host[:port][/db]`` (a lone userinfo is the
*password*), ``redis://user:password@host:port/db``, ``rediss://…`` (TLS),
``redis+socket://[password@]/path/to/redis.sock[:/db]``.

Layout, shared with Go workers and producers:

* a work queue is a plain list named exactly after the routing key; producers ``RPUSH``,
  consumers ``BLPOP``/``LPOP`` (FIFO), elements are the raw Signature JSON;
* tasks with a future ETA wait in the sorted set ``delayed_tasks`` (``redis.delayed_tasks_key``)
  scored in Unix **nanoseconds**; every worker (Go or Python) moves due ones to their queue.
  Python workers move them atomically in batches (a Lua script), so they never move a task
  twice or lose one, even alongside Go workers doing the same;
* undecodable messages are kept in the list ``<queue>.dead`` (raw bytes), never dropped.

Timeouts: ``redis.connect_timeout``, ``read_timeout`` and ``write_timeout`` of the config
(15 s each by default) bound every command (see :mod:`machinery_compat._redis`); a worker's
``BLPOP`` waits its poll period (``redis.normal_tasks_poll_period``) plus the read timeout.
A publish that times out raises :class:`~machinery_compat.exceptions.PublishError`; a fetch,
:class:`~machinery_compat.exceptions.BrokerConnectionError` (the worker logs it and retries).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._redis import MOVE_DELAYED, FastPath, Timeouts, client_for
from ..exceptions import BrokerConnectionError, DecodeError, PublishError
from ..protocol import Signature
from .base import Broker, Delivery

if TYPE_CHECKING:
    from ..config import Config

logger = logging.getLogger(__name__)

DEFAULT_DELAYED_TASKS_KEY = "delayed_tasks"


def _connection_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.ConnectionError, redis.TimeoutError, OSError)


class RedisBroker(Broker):
    schemes = ("redis", "rediss", "redis+socket")

    def __init__(
        self,
        url: str,
        default_queue: str = "machinery_tasks",
        *,
        delayed_tasks_key: str = "",
        client: Any = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        """``timeouts``: of the connections (default: Machinery's, 15 s each); ignored when
        a ``client`` is given."""
        super().__init__(default_queue)
        self.url = url
        self.delayed_tasks_key = delayed_tasks_key or DEFAULT_DELAYED_TASKS_KEY
        self.client = client if client is not None else client_for(url, timeouts)
        self.fast = FastPath(self.client)
        self._move_script = self.client.register_script(MOVE_DELAYED)
        self._errors = _connection_errors()

    @classmethod
    def from_config(cls, config: Config) -> RedisBroker:
        """The broker for ``config.broker``, with ``config.redis``'s key and timeouts."""
        rcfg = config.redis
        return cls(config.broker, config.default_queue,
                   delayed_tasks_key=rcfg.delayed_tasks_key if rcfg else "",
                   timeouts=Timeouts.from_config(config))

    # -- producer -----------------------------------------------------------------------
    def publish_command(self, sig: Signature) -> tuple[Any, ...]:
        """The command that publishes ``sig`` (routing key adjusted): RPUSH, or ZADD for a future ETA."""
        self.adjust_routing_key(sig)
        body = sig.to_json()
        eta = sig.eta
        if eta is not None and eta.unix_ns > time.time_ns():
            return ("ZADD", self.delayed_tasks_key, eta.unix_ns, body)
        return ("RPUSH", sig.routing_key, body)

    def publish(self, sig: Signature) -> None:
        command = self.publish_command(sig)
        try:
            self.fast.execute(command)
        except self._errors as e:
            raise PublishError(f"Publish message error: {e} (task {sig.uuid} {sig.name!r}: "
                               f"the message may not have been queued on {command[1]})") from e

    # -- consumer -----------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        """LPOP from the first non-empty queue (in the order given), else one BLPOP on all."""
        try:
            for queue in queues:
                if max_messages > 1:
                    items = self.fast.call("LPOP", queue, max_messages)
                else:
                    one = self.fast.call("LPOP", queue)
                    items = None if one is None else [one]
                if items:
                    return [Delivery(body, queue) for body in items]
            wait = max(timeout, 0.01)
            popped = self.fast.call_blocking(wait, "BLPOP", *queues, f"{wait:.3f}")
        except self._errors as e:
            raise BrokerConnectionError(f"redis broker {', '.join(queues)}: {e}") from e
        if popped is None:
            return []
        name = popped[0].decode("utf-8", "surrogateescape") if isinstance(popped[0], bytes) else popped[0]
        return [Delivery(popped[1], name)]

    def requeue(self, deliveries: Sequence[Delivery], *, front: bool = False) -> None:
        if not deliveries:
            return
        by_queue: dict[str, list[bytes]] = {}
        for d in deliveries:
            by_queue.setdefault(d.queue, []).append(d.body)
        self.fast.execute(*[("LPUSH", q, *reversed(bodies)) if front else ("RPUSH", q, *bodies)
                            for q, bodies in by_queue.items()])

    def dead_letter(self, delivery: Delivery, reason: str) -> str:
        where = f"{delivery.queue}.dead"
        self.fast.call("RPUSH", where, delivery.body)
        return where

    def move_due_delayed(self, limit: int = 1000) -> int:
        moved: int = self._move_script(
            keys=[self.delayed_tasks_key], args=[time.time_ns(), limit, self.default_queue]
        )
        return moved

    # -- inspection ---------------------------------------------------------------------
    def _decode_all(self, items: list[bytes], where: str) -> list[Signature]:
        out = []
        for raw in items:
            try:
                out.append(Signature.from_json(raw))
            except DecodeError as e:
                logger.warning("undecodable message in %s: %s; raw=%r", where, e, raw[:200])
        return out

    def pending_tasks(self, queue: str | None = None) -> list[Signature]:
        q = queue or self.default_queue
        return self._decode_all(self.client.lrange(q, 0, -1), q)

    def delayed_tasks(self) -> list[Signature]:
        return self._decode_all(
            self.client.zrange(self.delayed_tasks_key, 0, -1), self.delayed_tasks_key
        )

    def close(self) -> None:
        pass
