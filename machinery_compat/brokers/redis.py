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

Crash-safe consumption (Python workers, on by default)
------------------------------------------------------

Go's Redis worker ``BLPOP`` pops a message and holds it in memory: a worker killed (``kill -9``,
OOM, power loss) loses what it held, and its tasks stay PENDING or STARTED forever.  A
Python worker instead takes each message, atomically, into a list of its own and removes it
from there only once the message is settled (its final state stored, or it was
dead-lettered, handed back, dropped, or pushed back at stop).  Extra keys, all under the
prefix ``machinery_compat:`` in the broker's database (Go never reads or writes them):

* ``machinery_compat:processing:<worker id>:<queue>`` -- list: the messages the worker took
  from ``<queue>`` and has not settled yet (exact bytes, oldest first).  Taken with a Lua
  script (``LPOP`` count + ``RPUSH``, up to the prefetch from the first non-empty queue; one
  message from one queue: ``LMOVE``) or, when every queue is empty,
  ``BLMOVE <queue> <processing> LEFT RIGHT`` (on one of the worker's queues at a time,
  0.1 s each in turn when it consumes several);
* ``machinery_compat:heartbeat:<worker id>`` -- string with a TTL (``redis.heartbeat_ttl``,
  default 5 s), refreshed every fifth of it by a thread of its own (never by a task: a slow
  task does not stop it);
* ``machinery_compat:workers`` -- hash: worker id -> JSON ``{"queues": [...], "host": …,
  "pid": …, "started": …, "heartbeat_ttl": …}``, the registry of workers that may hold
  messages.

The worker id is ``<host>-<pid>-<8 hex digits>`` (new at every start).  Every second or so,
each live Python worker runs one Lua script that, for every registered worker without a
heartbeat key, moves its processing lists back to the **head** of the queues they came from
(original order) and removes it from the registry; atomic, so two workers never both
re-queue one list.  A crashed worker's messages are therefore back in their queue about
``heartbeat_ttl`` + 1 s after the crash, for any worker, Go or Python.

Semantics: at-least-once.  A re-queued message runs again (a task that had started runs a
second time); its ``Headers`` get ``"redeliveries": "<n>"`` (a string, counting re-queues
after crashes; Go ignores it), the rest of its bytes unchanged.  Nothing runs twice when
nothing crashed: messages settle only from their own worker, and a worker re-queues others'
lists only after their heartbeat key expired and only when it has itself reached Redis
without trouble for a whole ``heartbeat_ttl`` (after a Redis outage or restart, every live
worker has refreshed its heartbeat before anyone recovers anything).  A worker process frozen
(SIGSTOP, a debugger, a VM pause) longer than ``heartbeat_ttl`` is taken for dead: its
messages run again elsewhere, and it logs a warning when it finds one gone.  A worker that
stops gracefully pushes back what it took but did not start, and unregisters.

Turn it off with ``redis.crash_safe: false`` in the YAML config (``REDIS_CRASH_SAFE=false``),
``RedisConfig(crash_safe=False)`` or ``app.worker(crash_safe=False)``: the worker then
uses ``LPOP``/``BLPOP`` exactly as before (and as Go does).  On a Redis Cluster the
processing lists carry their queue's hash tag and every step touches one slot
(:mod:`machinery_compat._redis_cluster`).

Timeouts: ``redis.connect_timeout``, ``read_timeout`` and ``write_timeout`` of the config
(15 s each by default) bound every command (see :mod:`machinery_compat._redis`); a worker's
``BLPOP`` waits its poll period (``redis.normal_tasks_poll_period``) plus the read timeout.
A publish that times out raises :class:`~machinery_compat.exceptions.PublishError`; a fetch,
:class:`~machinery_compat.exceptions.BrokerConnectionError` (the worker logs it and retries).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .._redis import MOVE_DELAYED, RECOVER, SETTLE, TAKE, Timeouts, client_for, fast_path
from ..exceptions import BrokerConnectionError, DecodeError, PublishError
from ..protocol import Signature
from .base import REDELIVERIES_HEADER, Broker, Delivery

if TYPE_CHECKING:
    from ..config import Config, RedisConfig

logger = logging.getLogger(__name__)

DEFAULT_DELAYED_TASKS_KEY = "delayed_tasks"
#: every key of crash-safe consumption starts with this
KEY_PREFIX = "machinery_compat:"
#: hash: worker id -> JSON info of every worker that may hold messages
REGISTRY_KEY = KEY_PREFIX + "workers"
#: seconds a worker's heartbeat key lives (refreshed every fifth of it)
DEFAULT_HEARTBEAT_TTL = 5.0
#: a worker on several queues blocks on one of them at a time, this long (seconds)
MULTI_QUEUE_BLOCK = 0.1
#: the most messages one fetch takes
MAX_TAKE = 1000


def processing_key(worker_id: str, queue: str) -> str:
    """The list holding what worker ``worker_id`` took from ``queue`` and has not settled."""
    return f"{KEY_PREFIX}processing:{worker_id}:{queue}"


def heartbeat_key(worker_id: str) -> str:
    """The key that exists (with a TTL) while worker ``worker_id`` is alive."""
    return f"{KEY_PREFIX}heartbeat:{worker_id}"


def new_worker_id() -> str:
    """``<host>-<pid>-<8 hex digits>``: unique per worker start, no ``:`` in it."""
    host = re.sub(r"[^A-Za-z0-9_.-]+", "-", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


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
        ssl_context: ssl.SSLContext | None = None,
        redis: RedisConfig | None = None,
    ) -> None:
        """``timeouts``: of the connections (default: Machinery's, 15 s each); ``ssl_context``:
        of ``rediss://`` connections (Go's ``TLSConfig``); both ignored when a ``client`` is
        given."""
        super().__init__(default_queue)
        self.url = url
        self.delayed_tasks_key = delayed_tasks_key or DEFAULT_DELAYED_TASKS_KEY
        self.client = client if client is not None else client_for(
            url, timeouts, ssl_context=ssl_context, redis=redis)
        self.fast = fast_path(self.client, wait_replicas=redis.wait_replicas if redis else 0,
                              wait_timeout_ms=redis.wait_timeout if redis else 0)
        self._move_script = self.client.register_script(MOVE_DELAYED)
        self._errors = _connection_errors()

    @classmethod
    def from_config(cls, config: Config) -> RedisBroker:
        """The broker for ``config.broker``, with ``config.redis``'s key and timeouts and
        ``config.tls_config``."""
        rcfg = config.redis
        return cls(config.broker, config.default_queue,
                   delayed_tasks_key=rcfg.delayed_tasks_key if rcfg else "",
                   timeouts=Timeouts.from_config(config), ssl_context=config.tls_config,
                   redis=config.effective_redis)

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

    def ack(self, delivery: Delivery) -> None:
        """Nothing for a message ``LPOP``-ed; one a :class:`RedisConsumer` took leaves its
        processing list (``LREM`` of that exact element)."""
        consumer = delivery.tag
        if isinstance(consumer, RedisConsumer) and not delivery.settled:
            consumer.remove(delivery)

    def drop(self, delivery: Delivery) -> None:
        self.ack(delivery)

    def acking_with_next_write(self, delivery: Delivery) -> contextlib.AbstractContextManager[Any]:
        """For a message a :class:`RedisConsumer` took: the ``LREM`` goes in the same atomic
        call (a Lua script) as the thread's next write on this server (the final state, when
        the backend shares it): one round trip, one reply, and the ``LREM`` runs only if the
        write did."""
        consumer = delivery.tag
        if isinstance(consumer, RedisConsumer) and not delivery.settled:
            return consumer.removing_with_next_write(delivery)
        return contextlib.nullcontext()

    def requeue(self, deliveries: Sequence[Delivery], *, front: bool = False) -> None:
        """``RPUSH`` to the tail of each message's queue (``front``: ``LPUSH`` to the head,
        keeping their order); a message a :class:`RedisConsumer` took leaves its processing
        list in the same atomic step."""
        if not deliveries:
            return
        taken: dict[RedisConsumer, list[Delivery]] = {}
        plain: list[Delivery] = []
        for d in deliveries:
            if isinstance(d.tag, RedisConsumer):
                if not d.settled:
                    taken.setdefault(d.tag, []).append(d)
            else:
                plain.append(d)
        for consumer, mine in taken.items():
            consumer.move(list(reversed(mine)) if front else mine, "",
                          "LPUSH" if front else "RPUSH")
        if not plain:
            return
        by_queue: dict[str, list[bytes]] = {}
        for d in plain:
            by_queue.setdefault(d.queue, []).append(d.body)
        with self._translated(f"giving {len(plain)} message(s) back"):
            self.fast.execute(*[("LPUSH", q, *reversed(bodies)) if front
                                else ("RPUSH", q, *bodies) for q, bodies in by_queue.items()])

    def dead_letter(self, delivery: Delivery, reason: str) -> str:
        """``RPUSH`` to ``<queue>.dead`` (out of the processing list, atomically, for a
        message a :class:`RedisConsumer` took)."""
        where = f"{delivery.queue}.dead"
        if isinstance(delivery.tag, RedisConsumer):
            if not delivery.settled:
                delivery.tag.move([delivery], where, "RPUSH")
            return where
        with self._translated(f"dead-lettering a message to {where}"):
            self.fast.call("RPUSH", where, delivery.body)
        return where

    @contextlib.contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        """Connection errors and timeouts as :class:`BrokerConnectionError` (the worker
        retries those until Redis is back)."""
        try:
            yield
        except self._errors as e:
            raise BrokerConnectionError(f"redis broker: {doing}: {e}") from e

    def consumer(self, queues: Sequence[str], *, crash_safe: bool = True,
                 heartbeat_ttl: float | None = None) -> Broker:
        """A started :class:`RedisConsumer` for one worker (``crash_safe``: registered, its
        heartbeat thread running), else this broker (``LPOP``/``BLPOP``, Go's way)."""
        if not crash_safe:
            return self
        if hasattr(self.client, "nodes_manager"):  # Redis Cluster: every step on one slot
            from .._redis_cluster import ClusterConsumer

            cluster = ClusterConsumer(self, queues, heartbeat_ttl=heartbeat_ttl)
            cluster.start()
            return cluster
        consumer = RedisConsumer(self, queues, heartbeat_ttl=heartbeat_ttl)
        consumer.start()
        return consumer

    def move_due_delayed(self, limit: int = 1000) -> int:
        if hasattr(self.client, "nodes_manager"):  # Redis Cluster: ZREM, then RPUSH (Go's way)
            from .._redis_cluster import move_due_delayed

            return move_due_delayed(self, limit)
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


class RedisConsumer(RedisBroker):
    """The crash-safe side of the Redis broker for one worker (see the module docs).

    Shares the broker's connection pool; publishing, delayed tasks and inspection work as on
    :class:`RedisBroker`.  A :class:`Delivery` it fetched has it as ``tag``: any
    :class:`RedisBroker`'s ``ack``/``requeue``/``dead_letter``/``drop`` then settle the message
    out of its processing list.
    """

    def __init__(self, broker: RedisBroker, queues: Sequence[str], *,
                 heartbeat_ttl: float | None = None, worker_id: str | None = None) -> None:
        super().__init__(broker.url, broker.default_queue,
                         delayed_tasks_key=broker.delayed_tasks_key, client=broker.client)
        self.fast.wait = broker.fast.wait
        self.worker_id = worker_id or new_worker_id()
        ttl = heartbeat_ttl if heartbeat_ttl is not None else DEFAULT_HEARTBEAT_TTL
        if ttl < 0.5:
            raise ValueError(f"heartbeat_ttl must be at least 0.5 s, not {ttl}")
        self.heartbeat_ttl = float(ttl)
        #: how often the heartbeat is refreshed and dead workers are looked for
        self.refresh = self.heartbeat_ttl / 5
        self.queues: list[str] = []
        self._keys: dict[str, str] = {}
        self._prefix = processing_key(self.worker_id, "")
        for q in queues:
            self._key(q)
        self._take = self.client.register_script(TAKE)
        self._settle = self.client.register_script(SETTLE)
        self._recover = self.client.register_script(RECOVER)
        self._lock = threading.Lock()
        #: (processing list, body) of every message fetched and not settled yet
        self._held: Counter[tuple[str, bytes]] = Counter()
        self._registered = False
        self._needs_repair = False
        self._started = time.time()
        self._stop = threading.Event()
        self._beat_thread: threading.Thread | None = None
        self.recovered = 0

    def __repr__(self) -> str:
        return f"<RedisConsumer {self.worker_id} queues={','.join(self.queues)}>"

    # -- keys and registration ------------------------------------------------------------
    def _key(self, queue: str) -> str:
        key = self._keys.get(queue)
        if key is None:
            key = self._keys[queue] = self._prefix + queue
            self.queues.append(queue)
            self._registered = False
        return key

    def info(self) -> str:
        """What the registry and the heartbeat key hold for this worker (JSON)."""
        return json.dumps({
            "queues": self.queues, "host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.fromtimestamp(self._started, UTC).isoformat(),
            "heartbeat_ttl": self.heartbeat_ttl,
        })

    def beat(self) -> None:
        """Refresh the heartbeat key and the registry entry (atomically, heartbeat first)."""
        info = self.info()
        self.fast.execute(("MULTI",),
                          ("SET", heartbeat_key(self.worker_id), info,
                           "PX", int(self.heartbeat_ttl * 1000)),
                          ("HSET", REGISTRY_KEY, self.worker_id, info), ("EXEC",))
        self._registered = True

    def start(self) -> None:
        """Register and start the heartbeat thread (a Redis that cannot be reached yet is
        retried by the thread; fetching waits for the registration)."""
        if self._beat_thread is not None:
            return
        with contextlib.suppress(*self._errors):
            self.beat()
        self._beat_thread = threading.Thread(target=self._beat_loop, daemon=True,
                                             name=f"mc-heartbeat-{self.worker_id}")
        self._beat_thread.start()

    def _beat_loop(self) -> None:
        trouble = time.monotonic()  # recovery waits one TTL after the start and any trouble
        failing = False
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.beat()
                if failing:
                    logger.warning("heartbeat of worker %s written again", self.worker_id)
                    failing = False
                if began - trouble >= self.heartbeat_ttl:
                    self.recover_dead()
            except Exception as e:
                trouble = time.monotonic()
                if not failing:
                    failing = True
                    logger.warning("heartbeat of worker %s could not be written: %s (retrying "
                                   "every %gs; its messages stay in its processing lists)",
                                   self.worker_id, e, self.refresh)
            if time.monotonic() - began > self.refresh:
                trouble = time.monotonic()  # slow Redis: others may be late too
            self._stop.wait(self.refresh)

    def recover_dead(self) -> int:
        """Re-queue, to the head of their queues, the messages of every registered worker
        whose heartbeat expired (this one excepted); returns how many."""
        reply = self.fast.evalsha(self._recover, [REGISTRY_KEY],
                                  [KEY_PREFIX, self.worker_id, "", "0", REDELIVERIES_HEADER])
        n = log_recovered(reply, "dead worker")
        self.recovered += n
        return n

    def stop_consuming(self, *, idle: bool = True) -> None:
        """Stop the heartbeat; when ``idle``, push back anything left in this worker's
        processing lists (messages that could not be settled) and unregister.  Otherwise
        (tasks still running) the heartbeat just expires and any worker re-queues what is
        left after ``heartbeat_ttl``."""
        self._stop.set()
        if self._beat_thread is not None:
            self._beat_thread.join(10)
        if not idle:
            return
        try:
            reply = self.fast.evalsha(self._recover, [REGISTRY_KEY],
                                      [KEY_PREFIX, "", self.worker_id, "1", REDELIVERIES_HEADER])
        except Exception as e:
            logger.warning("worker %s could not unregister (%s): its heartbeat expires within "
                           "%gs, then any worker re-queues what it left", self.worker_id, e,
                           self.heartbeat_ttl)
            return
        log_recovered(reply, "stopping worker")

    # -- fetching -----------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        """Take up to ``max_messages`` from the first non-empty queue into this worker's
        processing list (one Lua call; one message from one queue: ``LMOVE``), else wait on
        one ``BLMOVE``."""
        keys = [self._key(q) for q in queues]
        try:
            if not self._registered:
                self.beat()
            if self._needs_repair:
                self._repair()
            n = min(max(max_messages, 1), MAX_TAKE)
            if n == 1 and len(queues) == 1:  # the common case: a native LMOVE, no script
                one = self.fast.call("LMOVE", queues[0], keys[0], "LEFT", "RIGHT")
                if one is not None:
                    return self._taken(queues[0], keys[0], [one])
            else:
                got = self.fast.evalsha(self._take, [*queues, *keys], [n])
                if got:
                    i = int(got[0]) - 1
                    return self._taken(queues[i], keys[i], got[1])
            if len(queues) == 1:
                wait = max(timeout, 0.01)
            else:
                wait = min(max(timeout, 0.01), MULTI_QUEUE_BLOCK)
            one = self.fast.call_blocking(wait, "BLMOVE", queues[0], keys[0], "LEFT", "RIGHT",
                                          f"{wait:.3f}")
        except self._errors as e:
            # the move may have happened with its reply lost: look before the next fetch
            self._needs_repair = True
            raise BrokerConnectionError(f"redis broker {', '.join(queues)}: {e}") from e
        if one is None:
            return []
        return self._taken(queues[0], keys[0], [one])

    def _taken(self, queue: str, key: str, bodies: list[bytes]) -> list[Delivery]:
        with self._lock:
            for body in bodies:
                self._held[(key, body)] += 1
        return [Delivery(body, queue, self) for body in bodies]

    def _repair(self) -> None:
        """After a fetch whose reply was lost: messages in the processing lists that no
        :class:`Delivery` stands for go back to the head of their queue."""
        for queue, key in list(self._keys.items()):
            listed = self.fast.call("LRANGE", key, 0, -1)
            with self._lock:  # snapshot after LRANGE: settled meanwhile = not there (LREM 0)
                held = Counter({body: c for (k, body), c in self._held.items() if k == key})
            orphans = []
            for body in listed:
                if held[body] > 0:
                    held[body] -= 1
                else:
                    orphans.append(body)
            if orphans:
                replies = self.fast.evalsha_many(
                    self._settle, [([key, queue], [body, "LPUSH"]) for body in reversed(orphans)])
                moved = sum(int(r) for r in replies)
                if moved:
                    logger.warning("%d message(s) taken from %s by a fetch whose reply was lost "
                                   "pushed back to its head", moved, queue)
        self._needs_repair = False

    # -- settling (called by RedisBroker's ack/requeue/dead_letter) ---------------------
    def _settled(self, delivery: Delivery, removed: Any) -> None:
        delivery.settled = True
        key = self._keys[delivery.queue]
        with self._lock:
            left = self._held[(key, delivery.body)] - 1
            if left > 0:
                self._held[(key, delivery.body)] = left
            else:
                self._held.pop((key, delivery.body), None)
        if not removed and not delivery.extra.get("unsure"):
            logger.warning("a message of worker %s was no longer in its processing list: "
                           "another worker re-queued it while this one held it (no heartbeat "
                           "for %gs), so it may run twice; raw=%r", self.worker_id,
                           self.heartbeat_ttl, delivery.body[:200])

    def remove(self, delivery: Delivery) -> None:
        """Settle a message this consumer took by removing it from its processing list."""
        key = self._keys[delivery.queue]
        try:
            removed = self.fast.call("LREM", key, 1, delivery.body)
        except self._errors as e:
            delivery.extra["unsure"] = True
            raise BrokerConnectionError(f"redis broker: acknowledging a message of {key}: "
                                        f"{e}") from e
        self._settled(delivery, removed)

    @contextlib.contextmanager
    def removing_with_next_write(self, delivery: Delivery) -> Iterator[None]:
        """:meth:`remove`, piggybacked on the thread's next write on this pool."""
        key = self._keys[delivery.queue]
        with self.fast.piggyback(("LREM", key, 1, delivery.body)) as pb:
            try:
                yield
            except BaseException:
                if pb.replies is None:
                    delivery.extra["unsure"] = True  # the write may have gone through
                raise
        if pb.replies is not None:
            self._settled(delivery, pb.replies[0])

    def move(self, deliveries: Sequence[Delivery], where: str, how: str) -> None:
        """Settle messages this consumer took by moving each, atomically, from its processing
        list to ``where`` (``""``: its own queue) with ``how`` (LPUSH/RPUSH), in this order,
        in one write."""
        calls = [([self._keys[d.queue], where or d.queue], [d.body, how]) for d in deliveries]
        try:
            replies = self.fast.evalsha_many(self._settle, calls)
        except self._errors as e:
            for d in deliveries:
                d.extra["unsure"] = True
            raise BrokerConnectionError(f"redis broker: moving {len(calls)} message(s) out of "
                                        f"the processing lists of {self.worker_id}: {e}") from e
        for d, removed in zip(deliveries, replies, strict=True):
            self._settled(d, removed)


def log_recovered(reply: Any, whose: str) -> int:
    """Log what the recovery script moved ({id, queue, count, …}); returns the total."""
    total = 0
    items = list(reply or ())
    for i in range(0, len(items) - 2, 3):
        wid, queue, count = (_text(items[i]), _text(items[i + 1]), int(items[i + 2]))
        total += count
        logger.warning("re-queued %d message(s) of %s %s to the head of %s (they run again: "
                       "at-least-once)", count, whose, wid, queue)
    return total


def recover_workers(broker: RedisBroker, *, worker_id: str = "", force: bool = False) -> int:
    """Re-queue the processing lists of dead workers now (every registered worker without a
    heartbeat key; only ``worker_id`` if given, ``force``: even if its heartbeat is alive,
    which makes messages a live worker is running run twice).  Returns how many messages."""
    if hasattr(broker.client, "nodes_manager"):  # Redis Cluster: one slot per step
        from .._redis_cluster import recover_cluster

        return recover_cluster(broker, only=worker_id, force=force, whose="worker")
    script = broker.client.register_script(RECOVER)
    reply = broker.fast.evalsha(script, [REGISTRY_KEY], [KEY_PREFIX, "", worker_id,
                                                         "1" if force else "0",
                                                         REDELIVERIES_HEADER])
    return log_recovered(reply, "worker")


def _text(v: Any) -> str:
    return v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else str(v)
