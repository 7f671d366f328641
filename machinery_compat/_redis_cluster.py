"""The Redis broker, backend and locks on a Redis Cluster (``redis.cluster_enabled``, v1's
``redis.cluster_mode``, or several addresses without ``redis.master_name``), as Go Machinery
v2's go-redis cluster client works there (docs/scaling.md).

Go never puts two keys of different slots in one command, script or transaction: queues are
bare list names, states are task UUIDs, ``delayed_tasks`` and ``TriggerChordMutex`` are single
keys, all in different slots.  The Python side keeps Go's key names and does the same:

* :class:`ClusterPath`, the :class:`~machinery_compat._redis.FastPath` interface on a
  ``redis.RedisCluster``: the commands of one call go per node in one write each (a
  non-transactional pipeline split by slot; no atomicity across keys, like Go).  Order is
  kept where it matters: a call's queue pushes (``RPUSH``/``LPUSH``/``ZADD``) go out only
  once every earlier command is acknowledged (PENDING is stored before its message is
  queued, as Go's two round trips do), and a ``MULTI``…``EXEC`` group runs one command after
  the other.  ``MOVED``/``ASK``/``READONLY``/``TRYAGAIN``/``CLUSTERDOWN`` replies (a command
  that did not run) refresh the slot map and are retried up to :data:`REDIRECTS` times, then
  raised as ``redis.ConnectionError``; a lost connection is raised as it is (the slot map is
  refreshed before the next call).  With ``redis.wait_replicas`` every node's write ends
  with ``WAIT`` on that node's connection (WAIT counts the replicas of the node it runs on).
* the delayed-task mover (:func:`move_due_delayed`): ``ZRANGEBYSCORE`` of due members, then
  per member ``ZREM`` and, only when that ``ZREM`` removed it, ``RPUSH`` to its queue;
* crash-safe consumption (:class:`ClusterConsumer`): the processing list of ``<queue>`` is
  ``machinery_compat:processing:{<tag>}:<worker>:<queue>``, ``<tag>`` being the part of the
  queue name Redis hashes (:func:`slot_tag`), so both share a slot and ``LMOVE``/``BLMOVE``
  and the take/settle scripts work; recovery is one single-slot script per dead worker's
  list.  A queue whose name cannot give a tag (a ``}`` in the hashed part) is consumed with
  ``LPOP``/``BLPOP`` (Go's way), with a warning at start;
* group member states are read with ``mget_nonatomic``; a state write (``MERGE_SET``) and the
  chord lock are one key each; the periodic lock's holder key carries the lock key's tag.
"""

from __future__ import annotations

import inspect
import json
import logging
import ssl
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._redis import RECOVER, Piggyback, Timeouts, _thread_state, _ThreadCalls, require_redis
from ._redis_topology import build_client
from .brokers.base import REDELIVERIES_HEADER, Delivery
from .brokers.redis import (
    KEY_PREFIX,
    MAX_TAKE,
    MULTI_QUEUE_BLOCK,
    REGISTRY_KEY,
    RedisConsumer,
    heartbeat_key,
    log_recovered,
)
from .config.masking import mask_url
from .exceptions import BrokerConnectionError, ConfigError

if TYPE_CHECKING:
    from .brokers.redis import RedisBroker
    from .config import RedisConfig

logger = logging.getLogger(__name__)

#: how many times a command the cluster redirected (or refused while failing over) is sent
#: again, the slot map refreshed in between
REDIRECTS = 5
#: seconds between those attempts, doubling
REDIRECT_PAUSE = 0.05
#: commands that queue a message: sent only after every earlier command of the call is done
_PUSHES = frozenset({b"RPUSH", b"LPUSH", b"ZADD"})

_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a ``redis.RedisCluster``."""
    return hasattr(client, "nodes_manager")


def cluster_client(url: str, redis: RedisConfig, timeouts: Timeouts,
                   ssl_context: ssl.SSLContext | None = None) -> Any:
    """The process-wide ``redis.RedisCluster`` for ``url`` (startup nodes: every address of
    the URL) and ``timeouts``: a broker and a backend on one cluster share it (and so one
    write per node for a PENDING state and its message)."""
    if ssl_context is not None and url.startswith("rediss"):
        raise ConfigError("Redis Cluster over TLS takes the ssl_* URL options, not an "
                          "SSLContext")
    from ._redis import connection_key_hosts

    key = (*connection_key_hosts(url), ("timeouts", timeouts.connect, timeouts.read,
                                        timeouts.write))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            r = require_redis()
            try:
                client = _build(url, redis, timeouts)
            except r.exceptions.RedisClusterException as e:  # no startup node answered
                raise r.ConnectionError(
                    f"Redis Cluster at {mask_url(url)}: {e} (redis-py reads the slot map "
                    "when the client is built: the cluster must be reachable then)") from e
            _clients[key] = client
    return client


def _build(url: str, redis: RedisConfig, timeouts: Timeouts) -> Any:
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return build_client(
        url, redis, socket_timeout=timeouts.socket, socket_connect_timeout=timeouts.connect,
        max_connections=512, health_check_interval=30,
        # redis-py's own calls (reads, the chord lock, scripts) follow a failover
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 6))


def slot_tag(key: str) -> str | None:
    """The part of ``key`` Redis hashes for its slot, usable inside ``{…}`` so that another
    key shares that slot; None when no tag can (the hashed part holds a ``}``, or is empty)."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key if key and "}" not in key else None


def _word(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    return str(v).encode() if not isinstance(v, str) else v.encode("utf-8", "surrogateescape")


def _redirects() -> tuple[type[BaseException], ...]:
    """The error replies that send a command again (after a new slot map)."""
    e = require_redis().exceptions
    return (e.MovedError, e.AskError, e.ReadOnlyError, e.TryAgainError, e.ClusterDownError)


def _first_key(command: Sequence[Any]) -> Any:
    """The key a command is routed by (None: any node)."""
    name = _word(command[0]).upper()
    if name in (b"EVALSHA", b"EVAL"):
        return command[3] if int(command[2]) > 0 else None
    if name in (b"PING", b"WAIT", b"SCRIPT"):
        return None
    return command[1] if len(command) > 1 else None


class ClusterPath(_ThreadCalls):
    """:class:`~machinery_compat._redis.FastPath`'s interface on a ``redis.RedisCluster``
    (see the module docs).  ``pool`` is the client: a broker and a backend sharing it share
    one path (``app._shared_fast_path``)."""

    def __init__(self, client: Any, *, wait_replicas: int = 0, wait_timeout_ms: int = 1000) -> None:
        self.pool = self.client = client
        #: shared by every ClusterPath on ``client`` (a broker's piggyback reaches the backend's)
        self._local = _thread_state(client)
        self._stale = False
        self.wait: tuple[str, int, int] | None = (
            ("WAIT", wait_replicas, wait_timeout_ms if wait_timeout_ms > 0 else 1000)
            if wait_replicas > 0 else None)

    # -- routing ------------------------------------------------------------------------
    def _node(self, command: Sequence[Any]) -> Any:
        if self._stale:
            self._refresh()
        key = _first_key(command)
        if key is None:
            return self.client.get_default_node()
        return self.client.get_node_from_key(key)

    def _refresh(self) -> None:
        self._stale = False
        manager = self.client.nodes_manager
        try:
            if "disconnect_startup_nodes_pools" in inspect.signature(manager.initialize).parameters:
                # (by default redis-py also drops the connections other threads are using)
                manager.initialize(disconnect_startup_nodes_pools=False)
            else:
                manager.initialize()
        except Exception as e:  # no node answers yet: the next call tries again
            self._stale = True
            raise require_redis().ConnectionError(f"Redis Cluster: slot map: {e}") from e

    def _send(self, groups: dict[Any, list[tuple[int, tuple[Any, ...]]]],
              replies: list[Any]) -> None:
        """One write per node (with ``WAIT`` when asked), then every node's replies into
        ``replies`` at the commands' indexes (error replies as exception objects)."""
        r = require_redis()
        sent: list[tuple[Any, Any, list[tuple[int, tuple[Any, ...]]]]] = []
        try:
            for node, items in groups.items():
                pool = node.redis_connection.connection_pool
                conn = pool.get_connection()
                sent.append((pool, conn, items))
                batch = [c for _, c in items] + ([self.wait] if self.wait is not None else [])
                conn.send_packed_command(conn.pack_commands(batch), check_health=False)
            for _pool, conn, items in sent:
                for i, _ in items:
                    try:
                        replies[i] = conn.read_response(disconnect_on_error=False)
                    except r.ResponseError as e:
                        replies[i] = e
                if self.wait is not None:
                    try:
                        acked = conn.read_response(disconnect_on_error=False)
                    except r.ResponseError as e:
                        # "WAIT cannot be used with replica instances": a failover made this
                        # node a replica; its writes were answered READONLY (or MOVED) and go
                        # again to the new master (see _run), where WAIT answers
                        redirect = _redirects()
                        if any(isinstance(replies[i], redirect) for i, _ in items):
                            continue
                        raise r.ConnectionError(
                            f"WAIT on {conn.host}:{conn.port}: {e} (the master may be "
                            "changing); retry it") from e
                    if int(acked) < self.wait[1]:
                        conn.disconnect()
                        raise r.ConnectionError(
                            f"WAIT: {acked} of {self.wait[1]} replica(s) of "
                            f"{conn.host}:{conn.port} acknowledged the write within "
                            f"{self.wait[2]} ms (the master may be changing); retry it")
        except BaseException:
            self._stale = True
            for _, conn, _ in sent:
                conn.disconnect()
            raise
        finally:
            for pool, conn, _ in sent:
                pool.release(conn)

    def _run(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run one wave (no order among its commands); redirected ones again.  Error replies
        other than redirections are returned as exception objects."""
        r = require_redis()
        redirect = _redirects()
        replies: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        pause = REDIRECT_PAUSE
        for attempt in range(REDIRECTS + 1):
            groups: dict[Any, list[tuple[int, tuple[Any, ...]]]] = {}
            for i in todo:
                groups.setdefault(self._node(commands[i]), []).append((i, commands[i]))
            self._send(groups, replies)
            todo = [i for i in todo if isinstance(replies[i], redirect)]
            if not todo:
                return replies
            self._stale = True
            if attempt < REDIRECTS:
                time.sleep(pause)
                pause *= 2
        raise r.ConnectionError(f"Redis Cluster: {replies[todo[0]]} (the slot moved "
                                f"{REDIRECTS + 1} times in a row)")

    def _waves(self, commands: Sequence[tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
        """``commands`` cut where order matters (see the module docs)."""
        waves: list[list[tuple[Any, ...]]] = []
        current: list[tuple[Any, ...]] = []
        pushing = False
        in_multi = cut = False
        for c in commands:
            name = _word(c[0]).upper()
            if name in (b"MULTI", b"EXEC"):  # a new wave at both ends of the group
                in_multi, cut = name == b"MULTI", True
                continue
            push = name in _PUSHES
            if current and (in_multi or cut or push != pushing):
                waves.append(current)
                current = []
            current.append(c)
            pushing, cut = push, False
        if current:
            waves.append(current)
        return waves

    def _execute(self, commands: Sequence[tuple[Any, ...]], *, raise_errors: bool = True
                 ) -> list[Any]:
        r = require_redis()
        out: list[Any] = []
        for wave in self._waves(commands):
            replies = self._run(wave)
            for reply in replies:
                if raise_errors and isinstance(reply, r.ResponseError):
                    raise reply
            out.extend(replies)
        return out

    # -- FastPath's interface -------------------------------------------------------------
    def execute(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send ``commands`` (see the module docs for the order); their replies (an error
        reply raises, after the commands before it ran).  Commands piggybacked on this
        thread run after them, only if they all succeeded."""
        pb: Piggyback | None = getattr(self._local, "piggyback", None)
        replies = self._execute(commands)
        if pb is not None and pb.replies is None:
            pb.replies = self._execute(pb.commands)
        return replies

    def execute_then(self, commands: Sequence[tuple[Any, ...]],
                     after: Sequence[tuple[Any, ...]]) -> tuple[list[Any], list[Any]]:
        """:meth:`execute` of ``commands``, then ``after`` (their error replies returned)."""
        head = self.execute(*commands)
        r = require_redis()
        try:
            return head, self._evalsha_loaded(after, raise_errors=False)
        except (r.ConnectionError, r.TimeoutError) as e:  # ``commands`` did run
            return head, [e for _ in after]

    def call_blocking(self, wait: float, *args: Any) -> Any:
        """A blocking command on the node of its first key.  A ``BLPOP`` on keys of several
        slots (CROSSSLOT on a cluster) blocks on the first one for at most
        ``MULTI_QUEUE_BLOCK`` seconds (the worker then polls the others with ``LPOP``)."""
        name = _word(args[0]).upper()
        if name == b"BLPOP" and len(args) > 3:
            slots = {self.client.keyslot(k) for k in args[1:-1]}
            if len(slots) > 1:
                wait = min(wait, MULTI_QUEUE_BLOCK)
                args = (args[0], args[1], f"{wait:.3f}")
        node = self._node(args)
        pool = node.redis_connection.connection_pool
        conn = pool.get_connection()
        r = require_redis()
        try:
            conn.send_command(*args, check_health=False)
            normal = conn.socket_timeout
            if normal is not None and conn._sock is not None:
                conn._sock.settimeout(wait + normal)
            try:
                reply = conn.read_response(disconnect_on_error=False)
            finally:
                if conn._sock is not None:
                    conn._sock.settimeout(normal)
        except r.ResponseError as e:
            self._stale = True
            raise r.ConnectionError(f"Redis Cluster: {e}") from e
        except BaseException:
            self._stale = True
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        return reply

    def evalsha(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        return self.evalsha_many(script, [(keys, args)])[0]

    def evalsha_many(self, script: Any, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]
                     ) -> list[Any]:
        """Several ``EVALSHA`` of one script, each routed by its keys (one slot each),
        loading the script on a node that lost it."""
        commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for keys, args in calls]
        return self._evalsha_loaded(commands, raise_errors=True, source=script.script)

    def _evalsha_loaded(self, commands: Sequence[tuple[Any, ...]], *, raise_errors: bool,
                        source: str | None = None) -> list[Any]:
        r = require_redis()
        replies = self._execute(commands, raise_errors=False)
        missing = [i for i, x in enumerate(replies) if isinstance(x, r.exceptions.NoScriptError)]
        if missing and source is not None:  # a node restarted or was promoted: load it there
            for node in self.client.get_primaries():
                node.redis_connection.script_load(source)
            again = self._execute([commands[i] for i in missing], raise_errors=False)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        if raise_errors:
            for reply in replies:
                if isinstance(reply, r.ResponseError):
                    raise reply
        return replies

    def close(self) -> None:
        """Nothing held between calls."""


# --------------------------------------------------------------------------------------
# the delayed-task mover
# --------------------------------------------------------------------------------------

def _routing_key(member: bytes, default_queue: str) -> str:
    """The queue a delayed message goes to (MOVE_DELAYED's rule): its ``RoutingKey`` (any
    case), else the default queue; an undecodable one to ``<default>.dead``."""
    try:
        sig = json.loads(member)
    except (ValueError, UnicodeDecodeError):
        return default_queue + ".dead"
    if not isinstance(sig, dict):
        return default_queue + ".dead"
    value = sig.get("RoutingKey")
    if value is None:
        for k, v in sig.items():
            if k.lower() == "routingkey":
                value = v
    return value if isinstance(value, str) and value else default_queue


def move_due_delayed(broker: RedisBroker, limit: int) -> int:
    """Go's mover on a cluster: the due members (``ZRANGEBYSCORE``), then for each, ``ZREM``
    and, only if that ``ZREM`` removed it (this mover won it), ``RPUSH`` to its queue.

    ``ZREM`` first, like Go (``MULTI``/``ZREM``/``EXEC``, then ``RPUSH``): movers racing for a
    member (every worker runs one, Go's too) push it once, the winner.  The price is Go's own
    window: a mover dying between its ``ZREM`` and its ``RPUSH`` loses that task.  ``RPUSH``
    first would close that window but push a member once per racing mover in the normal
    case.  Returns how many this mover pushed."""
    fast = broker.fast
    due = fast.call("ZRANGEBYSCORE", broker.delayed_tasks_key, "-inf", time.time_ns(),
                    "LIMIT", 0, limit)
    if not due:
        return 0
    removed = fast.execute(*[("ZREM", broker.delayed_tasks_key, m) for m in due])
    won = [m for m, n in zip(due, removed, strict=True) if int(n) == 1]
    if won:
        fast.execute(*[("RPUSH", _routing_key(m, broker.default_queue), m) for m in won])
    return len(won)


# --------------------------------------------------------------------------------------
# crash-safe consumption
# --------------------------------------------------------------------------------------

#: one dead worker's processing list back to the head of its queue (RECOVER's loop, its
#: redeliveries header bump included), on one slot: KEYS[1] processing list, KEYS[2] queue;
#: ARGV[5] the header name.  Returns the count moved, or an error reply when a push failed.
RECOVER_LIST = RECOVER[:RECOVER.index("local out = {}\nlocal entries")] + """
local n = 0
while true do
  local m = redis.call('LINDEX', KEYS[1], -1)
  if not m then break end
  local r = redis.pcall('LPUSH', KEYS[2], bump(m))
  if type(r) == 'table' and r.err then return r end
  redis.call('RPOP', KEYS[1])
  n = n + 1
end
return n
"""


def cluster_processing_key(worker_id: str, queue: str) -> str | None:
    """The processing list of ``queue`` for ``worker_id``, in ``queue``'s slot (None: no tag
    can put a key there, see :func:`slot_tag`)."""
    tag = slot_tag(queue)
    if tag is None:
        return None
    return f"{KEY_PREFIX}processing:{{{tag}}}:{worker_id}:{queue}"


class ClusterConsumer(RedisConsumer):
    """:class:`~machinery_compat.brokers.redis.RedisConsumer` on a cluster: the same keys but
    the processing lists (in their queue's slot), every step on one slot."""

    def __init__(self, broker: RedisBroker, queues: Sequence[str], **kwargs: Any) -> None:
        self._plain: set[str] = set()
        super().__init__(broker, queues, **kwargs)
        self.fast = broker.fast
        self._recover_list = self.client.register_script(RECOVER_LIST)

    def _key(self, queue: str) -> str:
        key = self._keys.get(queue)
        if key is None:
            found = cluster_processing_key(self.worker_id, queue)
            if found is None:
                logger.warning("queue %r: no key can share its Redis Cluster slot (a '}' in "
                               "the hashed part): consumed with LPOP/BLPOP, not crash-safe",
                               queue)
                self._plain.add(queue)
                found = ""
            key = self._keys[queue] = found
            self.queues.append(queue)
            self._registered = False
        return key

    def beat(self) -> None:
        """The heartbeat key, then the registry entry (two slots: two steps)."""
        info = self.info()
        self.fast.execute(("SET", heartbeat_key(self.worker_id), info,
                           "PX", int(self.heartbeat_ttl * 1000)))
        self.fast.execute(("HSET", REGISTRY_KEY, self.worker_id, info))
        self._registered = True

    def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        """Per queue in order: ``LMOVE`` (one message) or the take script (several) into its
        processing list; when every queue is empty, ``BLMOVE`` on the first."""
        keys = [self._key(q) for q in queues]
        n = min(max(max_messages, 1), MAX_TAKE)
        try:
            if not self._registered:
                self.beat()
            if self._needs_repair:
                self._repair()
            for queue, key in zip(queues, keys, strict=True):
                if not key:
                    got = self.fast.call("LPOP", queue, n)
                    if got:
                        return [Delivery(body, queue) for body in got]
                elif n == 1:
                    one = self.fast.call("LMOVE", queue, key, "LEFT", "RIGHT")
                    if one is not None:
                        return self._taken(queue, key, [one])
                else:
                    taken = self.fast.evalsha(self._take, [queue, key], [n])
                    if taken:
                        return self._taken(queue, key, taken[1])
            wait = max(timeout, 0.01) if len(queues) == 1 else min(max(timeout, 0.01),
                                                                   MULTI_QUEUE_BLOCK)
            if not keys[0]:
                popped = self.fast.call_blocking(wait, "BLPOP", queues[0], f"{wait:.3f}")
                return [] if popped is None else [Delivery(popped[1], queues[0])]
            one = self.fast.call_blocking(wait, "BLMOVE", queues[0], keys[0], "LEFT", "RIGHT",
                                          f"{wait:.3f}")
        except self._errors as e:
            self._needs_repair = True
            raise BrokerConnectionError(f"redis broker {', '.join(queues)}: {e}") from e
        if one is None:
            return []
        return self._taken(queues[0], keys[0], [one])

    def _repair(self) -> None:
        saved = self._keys
        self._keys = {q: k for q, k in saved.items() if k}
        try:
            super()._repair()
        finally:
            self._keys = saved

    def move(self, deliveries: Sequence[Delivery], where: str, how: str) -> None:
        """To its own queue: the settle script (one slot).  Elsewhere (``<queue>.dead``,
        another slot): the push, then the ``LREM`` (a crash in between leaves a copy in the
        processing list, re-queued later: a duplicate rather than a loss)."""
        if not where:
            super().move(deliveries, where, how)
            return
        try:
            self.fast.execute(*[(how, where, d.body) for d in deliveries])
            removed = self.fast.execute(*[("LREM", self._keys[d.queue], 1, d.body)
                                          for d in deliveries])
        except self._errors as e:
            for d in deliveries:
                d.extra["unsure"] = True
            raise BrokerConnectionError(f"redis broker: moving {len(deliveries)} message(s) "
                                        f"to {where}: {e}") from e
        for d, n in zip(deliveries, removed, strict=True):
            self._settled(d, n)

    def recover_dead(self) -> int:
        n = recover_cluster(self, me=self.worker_id)
        self.recovered += n
        return n

    def stop_consuming(self, *, idle: bool = True) -> None:
        self._stop.set()
        if self._beat_thread is not None:
            self._beat_thread.join(10)
        if not idle:
            return
        try:
            recover_cluster(self, only=self.worker_id, force=True, whose="stopping worker")
        except Exception as e:
            logger.warning("worker %s could not unregister (%s): its heartbeat expires within "
                           "%gs, then any worker re-queues what it left", self.worker_id, e,
                           self.heartbeat_ttl)


def recover_cluster(broker: RedisBroker, *, me: str = "", only: str = "", force: bool = False,
                    whose: str = "dead worker") -> int:
    """RECOVER on a cluster: the registry, then per worker without a heartbeat (``only``:
    that one; ``force``: heartbeat or not), each processing list back to its queue with one
    single-slot script (atomic per list: two recoverers never both move one), then the
    registry entry and heartbeat removed.  Returns how many messages."""
    script = broker.client.register_script(RECOVER_LIST)
    fast = broker.fast
    entries = fast.call("HGETALL", REGISTRY_KEY) or []
    pairs = entries.items() if isinstance(entries, dict) else zip(  # RESP3 / RESP2
        entries[::2], entries[1::2], strict=True)
    total = 0
    for raw_id, info in list(pairs):
        wid = raw_id.decode("utf-8", "surrogateescape")
        if wid == me or (only and wid != only):
            continue
        if not force and fast.call("EXISTS", heartbeat_key(wid)):
            continue
        try:
            meta = json.loads(info)
        except ValueError:
            meta = {}
        queues = meta.get("queues") if isinstance(meta, dict) else None
        for q in queues if isinstance(queues, list) else []:
            key = cluster_processing_key(wid, q) if isinstance(q, str) else None
            if key is None:
                continue
            reply = fast.evalsha_many(script, [([key, q], [KEY_PREFIX, me, only,
                                                           "1" if force else "0",
                                                           REDELIVERIES_HEADER])])[0]
            total += log_recovered([wid, q, int(reply)], whose) if int(reply) else 0
        fast.execute(("HDEL", REGISTRY_KEY, wid))
        fast.execute(("DEL", heartbeat_key(wid)))
    return total


__all__ = ["ClusterConsumer", "ClusterPath", "cluster_client", "cluster_processing_key",
           "is_cluster", "move_due_delayed", "recover_cluster", "slot_tag"]
