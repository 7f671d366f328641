"""Redis connections and server-side scripts shared by the Redis broker and backend.

One connection pool per distinct server/db/credentials/timeouts within a process, so that a
broker and a backend on the same Redis share it and a producer can pipeline the PENDING
write and the publish into one round trip.

Timeouts
--------

Every connection gets the three timeouts of Machinery's ``redis`` config section
(:class:`Timeouts`, defaults 15 s each; a value <= 0 means no timeout, as in Go):

* ``connect_timeout`` bounds opening a connection (TCP/unix socket connect, TLS);
* redis-py has one socket timeout for reads and writes, so every write of a command and
  every read of a reply (the connection handshake's included) waits at most
  ``max(read_timeout, write_timeout)``;
* a blocking command (the worker's ``BLPOP``) waits its own timeout plus that;
* redis-py's own retries are off: one call is one attempt, and a timeout surfaces at once
  as ``redis.TimeoutError`` (the broker and backend translate it).

So a call on a stalled Redis returns or fails within about ``connect_timeout`` +
``max(read_timeout, write_timeout)`` (a new connection whose handshake stalls: one more
``max(read_timeout, write_timeout)``).

Fork safety
-----------

A process may fork after using Redis (gunicorn ``--preload``, ``multiprocessing`` with
fork, Celery's prefork pool).  In the child:

* a :class:`FastPath` never uses, returns or closes a connection the parent checked out:
  each one remembers the pid that took it, and a child forgets it and takes a fresh one;
* redis-py's pools notice the new pid themselves and start empty; the locks of this
  module's pools and the module lock are re-created (:func:`os.register_at_fork`), in case
  another thread of the parent held one at the moment of the fork.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import select
import socket
import ssl
import struct
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._gil_io import recv_into, send_all
from ._redis_topology import plan, sentinel_pool
from .config import parse_redis_url
from .exceptions import ConfigError

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .config import Config, RedisConfig

try:
    import redis
except ImportError:  # pragma: no cover - exercised only without the extra
    redis = None  # type: ignore[assignment]
try:
    import hiredis
except ImportError:  # pragma: no cover - redis-py's own packer is used then
    hiredis = None  # type: ignore[assignment]

_pools: dict[tuple[Any, ...], Any] = {}
_lock = threading.Lock()
#: one thread-local state per connection pool, shared by every FastPath on that pool (a
#: broker and a backend on one server use one connection per thread, see FastPath.piggyback)
_thread_states: weakref.WeakKeyDictionary[Any, threading.local] = weakref.WeakKeyDictionary()

#: Machinery's default for ``redis.read_timeout``, ``write_timeout`` and ``connect_timeout``.
DEFAULT_TIMEOUT = 15.0


def require_redis() -> Any:
    if redis is None:
        raise ConfigError(
            "the Redis broker/backend needs redis-py: pip install 'machinery-compat[redis]'"
        )
    return redis


def _seconds(value: float) -> float | None:
    """A configured timeout in seconds; <= 0 means none (Go's zero duration)."""
    return float(value) if value > 0 else None


@dataclass(frozen=True)
class Timeouts:
    """Socket timeouts (seconds; ``None``: wait forever) of every connection of a pool."""

    connect: float | None = DEFAULT_TIMEOUT
    read: float | None = DEFAULT_TIMEOUT
    write: float | None = DEFAULT_TIMEOUT

    @classmethod
    def from_redis_config(cls, cfg: RedisConfig) -> Timeouts:
        return cls(_seconds(cfg.connect_timeout), _seconds(cfg.read_timeout),
                   _seconds(cfg.write_timeout))

    @classmethod
    def from_config(cls, config: Config) -> Timeouts:
        """The timeouts of ``config.redis`` (Go's fallback section when it is ``None``)."""
        return cls.from_redis_config(config.effective_redis)

    @property
    def socket(self) -> float | None:
        """redis-py's ``socket_timeout`` (reads and writes): the larger of the two."""
        if self.read is None or self.write is None:
            return None
        return max(self.read, self.write)


def connection_key(url: str) -> tuple[Any, ...]:
    kw = parse_redis_url(url).to_redis_py_kwargs()
    return tuple(sorted((k, str(v)) for k, v in kw.items()))


def client_for(url: str, timeouts: Timeouts | None = None, *,
               ssl_context: ssl.SSLContext | None = None,
               redis: RedisConfig | None = None) -> Any:
    """A ``redis.Redis`` on a process-wide pool for ``url`` and ``timeouts`` (bytes replies).

    ``timeouts=None`` means Machinery's defaults (15 s each).

    ``redis``: the ``redis`` settings choosing the topology as Go v2 does
    (:mod:`machinery_compat._redis_topology`): with ``master_name`` the URL's addresses are
    Sentinels and the pool follows their master; a cluster (``cluster_enabled``, or several
    addresses without ``master_name``) gives the process-wide ``redis.RedisCluster`` of
    :func:`machinery_compat._redis_cluster.cluster_client` (use it through :func:`fast_path`).

    TLS (``rediss://`` URLs only): the certificate and the host name are verified, against
    the system's CAs unless the URL's ``ssl_*`` options say otherwise
    (:mod:`machinery_compat.config.redis_url`), or with ``ssl_context`` (Go's ``TLSConfig``;
    the URL must then carry no ``ssl_*`` option).  ``ssl_context`` is ignored for
    ``redis://`` URLs, as the AMQP broker ignores ``tls_config`` for ``amqp://``.
    """
    r = require_redis()
    t = timeouts if timeouts is not None else Timeouts()
    topology = plan(url, redis).kind
    if topology == "cluster":  # a redis.RedisCluster (machinery_compat._redis_cluster)
        from ._redis_cluster import cluster_client
        from .config.model import RedisConfig

        return cluster_client(url, redis or RedisConfig(), t, ssl_context)
    if topology == "sentinel":
        assert redis is not None
        return r.Redis(connection_pool=_sentinel_pool(url, redis, t))
    tls_context = ssl_context if ssl_context is not None and parse_redis_url(url).tls else None
    if tls_context is not None and parse_redis_url(url).tls_options is not None:
        raise ConfigError("give Redis TLS options either as ssl_* URL parameters or as an "
                          "SSLContext, not both")
    key = (*connection_key(url), ("timeouts", t.connect, t.read, t.write),
           ("ssl_context", id(tls_context)))  # the pool keeps the context: ids stay unique
    with _lock:
        pool = _pools.get(key)
        if pool is None:
            kw = parse_redis_url(url).to_redis_py_kwargs()
            if kw.get("unix_socket_path"):
                kw["connection_class"] = r.UnixDomainSocketConnection
                kw["path"] = kw.pop("unix_socket_path")
                kw.pop("host", None)
                kw.pop("port", None)
            if kw.pop("ssl", False):
                if tls_context is not None:
                    kw["connection_class"] = _context_ssl_connection()
                    kw["mc_ssl_context"] = tls_context
                else:
                    kw["connection_class"] = r.SSLConnection
                    kw.setdefault("ssl_cert_reqs", "required")  # redis-py 5 checks no host name
                    kw.setdefault("ssl_check_hostname", True)
            kw.update(_pool_options(t))
            pool = r.ConnectionPool(**kw)
            _pools[key] = pool
    return r.Redis(connection_pool=pool)


def fast_path(client: Any, *, wait_replicas: int = 0, wait_timeout_ms: int = 0) -> Any:
    """The hot path for ``client``: a :class:`FastPath`, or on a ``redis.RedisCluster`` a
    :class:`machinery_compat._redis_cluster.ClusterPath` (same interface)."""
    if hasattr(client, "nodes_manager"):
        from ._redis_cluster import ClusterPath

        return ClusterPath(client, wait_replicas=wait_replicas, wait_timeout_ms=wait_timeout_ms)
    return FastPath(client, wait_replicas=wait_replicas, wait_timeout_ms=wait_timeout_ms)


def mget_all(client: Any, keys: Sequence[Any]) -> list[Any]:
    """``MGET`` of ``keys``; on a Redis Cluster (which refuses one across slots) split per
    node by redis-py's ``mget_nonatomic``, as go-redis' cluster client does."""
    mget = getattr(client, "mget_nonatomic", None) or client.mget
    return list(mget(list(keys)))


def _pool_options(t: Timeouts) -> dict[str, Any]:
    """What every pool's connections get: the timeouts, one attempt per call (the timeouts
    are the bounds), a health check after 30 s idle, room for 512 connections."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {"health_check_interval": 30, "socket_timeout": t.socket,
            "socket_connect_timeout": t.connect, "retry": Retry(NoBackoff(), 0),
            "max_connections": 512}


def _sentinel_pool(url: str, redis: RedisConfig, t: Timeouts) -> Any:
    """The process-wide Sentinel pool for ``url``, the master name, its password and ``t``."""
    key = ("sentinel", *connection_key_hosts(url), redis.master_name, redis.sentinel_password,
           ("timeouts", t.connect, t.read, t.write))
    with _lock:
        pool = _pools.get(key)
        if pool is None:
            pool = sentinel_pool(url, redis, _pool_options(t))
            _pools[key] = pool
    return pool


def connection_key_hosts(url: str) -> tuple[Any, ...]:
    """A pool key for a URL of one or several addresses (credentials, db, TLS included)."""
    parsed = parse_redis_url(url)
    return (parsed.hosts, parsed.username, parsed.password, parsed.db, parsed.tls,
            parsed.tls_options)


_context_ssl_class: Any = None


def _context_ssl_connection() -> Any:
    """redis-py's ``SSLConnection``, wrapping its socket with a given :class:`ssl.SSLContext`
    (keyword ``mc_ssl_context``) instead of one built from ``ssl_*`` options."""
    global _context_ssl_class
    if _context_ssl_class is None:
        r = require_redis()

        class ContextSSLConnection(r.SSLConnection):  # type: ignore[misc,name-defined]
            def __init__(self, *, mc_ssl_context: ssl.SSLContext, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                self.mc_ssl_context = mc_ssl_context

            def _connect(self) -> Any:
                sock = r.connection.Connection._connect(self)  # TCP only
                try:
                    return self.mc_ssl_context.wrap_socket(sock, server_hostname=self.host)
                except BaseException:
                    sock.close()
                    raise

        _context_ssl_class = ContextSSLConnection
    return _context_ssl_class


_RLOCK_TYPE = type(threading.RLock())


#: the pid of this process, updated in a forked child (FastPath checks it on every call,
#: where an ``os.getpid()`` system call each time was measurable)
_pid = os.getpid()


def _after_fork_in_child() -> None:
    """Re-create locks another thread of the parent may have held when it forked."""
    global _lock, _pid
    _lock = threading.Lock()
    _pid = os.getpid()
    for pool in _pools.values():
        # redis-py resets a pool in a child (pid check), but under the pool's own locks:
        # fresh ones, or a lock held by a parent thread at fork time would block forever.
        for name in ("_fork_lock", "_lock"):
            old = getattr(pool, name, None)
            if old is not None:
                setattr(pool, name,
                        threading.RLock() if isinstance(old, _RLOCK_TYPE) else threading.Lock())


os.register_at_fork(after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------------------------
# Lua scripts
# --------------------------------------------------------------------------------------

#: Write a TaskState keeping TaskName and CreatedAt of the stored one (Machinery §6.1 merge),
#: atomically.  The stored JSON's raw tokens are copied, so the bytes are exactly what Go's
#: GET + decode + re-encode + SET would give.
#: KEYS[1] = task UUID; ARGV = expiry seconds, head, tail, middle[, middle …].  Each middle is
#: one state, written in order with its own SET (RECEIVED then STARTED in one call, as Go's two
#: GET+SET pairs would leave them).  Returns {name, created}.
MERGE_SET = """
local old = redis.call('GET', KEYS[1])
local name = '""'
local created = '"0001-01-01T00:00:00Z"'
if old then
  local ok, st = pcall(cjson.decode, old)
  if ok and type(st) == 'table' then
    local _, e = string.find(old, '"TaskName":"', 1, true)
    if e then
      local i = e + 1
      local n = #old
      while i <= n do
        local c = string.byte(old, i)
        if c == 92 then i = i + 2
        elseif c == 34 then break
        else i = i + 1 end
      end
      name = string.sub(old, e, i)
    else
      for k, v in pairs(st) do
        if string.lower(k) == 'taskname' and type(v) == 'string' then name = cjson.encode(v) end
      end
    end
    local _, ce = string.find(old, '"CreatedAt":"', 1, true)
    if ce then
      local q = string.find(old, '"', ce + 1, true)
      if q then created = string.sub(old, ce, q) end
    else
      for k, v in pairs(st) do
        if string.lower(k) == 'createdat' and type(v) == 'string' then created = '"' .. v .. '"' end
      end
    end
  end
end
for i = 4, #ARGV do
  redis.call('SET', KEYS[1], ARGV[2] .. name .. ARGV[i] .. created .. ARGV[3], 'EX', ARGV[1])
end
return {name, created}
"""

#: Move every due delayed task (score <= now in Unix ns) to the list named by its RoutingKey
#: (the default queue when empty), atomically: a task is moved once, by one process, and
#: cannot be lost between ZREM and RPUSH.  Undecodable members go to ``<default>.dead``.
#: KEYS[1] = delayed-tasks ZSET; ARGV = now_ns, limit, default queue.  Returns moved count.
MOVE_DELAYED = """
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(items) do
  local rk = ARGV[3]
  local ok, sig = pcall(cjson.decode, m)
  if ok and type(sig) == 'table' then
    local v = sig['RoutingKey']
    if v == nil then
      for k, val in pairs(sig) do
        if string.lower(k) == 'routingkey' then v = val end
      end
    end
    if type(v) == 'string' and v ~= '' then rk = v end
  else
    rk = ARGV[3] .. '.dead'
  end
  redis.call('ZREM', KEYS[1], m)
  redis.call('RPUSH', rk, m)
end
return #items
"""

#: Run several plain commands atomically, in one call: ARGV holds, for each, its number of
#: words then the words (``n, cmd, arg, …`` repeated).  Returns their replies.  An error
#: reply stops it there (a script does not roll back; FastPath.piggyback puts the command
#: that may fail, the final state's SET, first: if it fails, nothing after it runs).
EXEC_ALL = """
local out = {}
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  out[#out + 1] = redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return out
"""
EXEC_ALL_SHA = hashlib.sha1(EXEC_ALL.encode()).hexdigest()

#: Crash-safe consumption: take up to ARGV[1] messages from the first non-empty queue of
#: KEYS[1..n] into its processing list KEYS[n+i] (LPOP + RPUSH, atomically: a message is
#: always in one of the two).  Returns {i, {messages…}} or nil when every queue is empty.
TAKE = """
local n = #KEYS / 2
for i = 1, n do
  local items = redis.call('LPOP', KEYS[i], tonumber(ARGV[1]))
  if items then
    redis.call('RPUSH', KEYS[n + i], unpack(items))
    return {i, items}
  end
end
return false
"""

#: Settle one message taken into a processing list: remove it (LREM, one copy) and, only if
#: it was still there, push it to KEYS[2] with ARGV[2] (LPUSH or RPUSH).  Safe to run twice.
#: A push that fails (wrong type) puts the message back into the processing list and fails.
#: KEYS[1] = processing list, KEYS[2] = destination; ARGV[1] = body.  Returns 1 or 0.
SETTLE = """
local n = redis.call('LREM', KEYS[1], 1, ARGV[1])
if n > 0 then
  local r = redis.pcall(ARGV[2], KEYS[2], ARGV[1])
  if type(r) == 'table' and r.err then
    redis.call('RPUSH', KEYS[1], ARGV[1])
    return r
  end
end
return n
"""

#: Re-queue the processing lists of dead workers (no heartbeat key), atomically, so that two
#: workers never both recover one list.  Each message goes back to the HEAD of the queue it
#: was taken from, in its original order, with the redeliveries header (a string, ARGV[5])
#: incremented in its Headers object (the rest of the bytes unchanged; left as it is when the
#: message is not a JSON object with a Headers object or null).  The worker is then removed
#: from the registry.
#: KEYS[1] = registry hash (worker id -> {"queues": [...], ...}); ARGV = key prefix, caller's
#: id (never recovered), only this id ('' = any), '1' = even if its heartbeat is alive,
#: header name.  Returns {id, queue, count, …} for every list that held messages.
RECOVER = r"""
local prefix, me, only, force, header = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local function ws(s, i)
  return string.find(s, '[^ \t\r\n]', i) or (#s + 1)
end
local function str_end(s, i)
  local j = i + 1
  while true do
    local c = string.find(s, '["\\]', j)
    if not c then return nil end
    if string.byte(s, c) == 92 then j = c + 2 else return c + 1 end
  end
end
local function value_end(s, i)
  local b = string.byte(s, i)
  if b == 34 then return str_end(s, i) end
  if b == 123 or b == 91 then
    local depth, j = 0, i
    while true do
      local k = string.find(s, '[][{}"]', j)
      if not k then return nil end
      local c = string.byte(s, k)
      if c == 34 then
        j = str_end(s, k)
        if not j then return nil end
      else
        if c == 123 or c == 91 then depth = depth + 1 else depth = depth - 1 end
        j = k + 1
        if depth == 0 then return j end
      end
    end
  end
  return string.find(s, '[,}%]]', i)
end
-- the members of the object at s[i] == '{': {{raw key, value start, value end}, …}
local function members(s, i)
  local out = {}
  if string.byte(s, i) ~= 123 then return nil end
  local j = ws(s, i + 1)
  if string.byte(s, j) == 125 then return out end
  while true do
    if string.byte(s, j) ~= 34 then return nil end
    local k = str_end(s, j)
    if not k then return nil end
    local key = string.sub(s, j + 1, k - 2)
    j = ws(s, k)
    if string.byte(s, j) ~= 58 then return nil end
    local vs = ws(s, j + 1)
    local ve = value_end(s, vs)
    if not ve then return nil end
    out[#out + 1] = {key, vs, ve}
    j = ws(s, ve)
    local c = string.byte(s, j)
    if c == 125 then return out end
    if c ~= 44 then return nil end
    j = ws(s, j + 1)
  end
end
local function last(list, key)
  local found = nil
  for _, m in ipairs(list) do
    if m[1] == key then found = m end
  end
  return found
end
local function bump(m)
  local ok, sig = pcall(cjson.decode, m)
  if not ok or type(sig) ~= 'table' then return m end
  local top = members(m, ws(m, 1))
  if not top then return m end
  local h = last(top, 'Headers')
  if not h then return m end
  local vs, ve = h[2], h[3]
  local out
  if string.sub(m, vs, vs + 3) == 'null' then
    out = string.sub(m, 1, vs - 1) .. '{"' .. header .. '":"1"}' .. string.sub(m, vs + 4)
  else
    local inner = members(m, vs)
    if not inner then return m end
    local cur = last(inner, header)
    if cur then
      local text = string.sub(m, cur[2], cur[3] - 1)
      local n = tonumber(string.match(text, '^%s*"?%s*(%d+)%s*"?%s*$') or '0') or 0
      out = string.sub(m, 1, cur[2] - 1) .. '"' .. tostring(n + 1) .. '"' .. string.sub(m, cur[3])
    else
      local sep = ','
      if #inner == 0 then sep = '' end
      out = string.sub(m, 1, vs) .. '"' .. header .. '":"1"' .. sep .. string.sub(m, vs + 1)
    end
  end
  local ok2, again = pcall(cjson.decode, out)
  if not ok2 or type(again) ~= 'table' then return m end
  return out
end

local out = {}
local entries = redis.call('HGETALL', KEYS[1])
for e = 1, #entries, 2 do
  local id, info = entries[e], entries[e + 1]
  local hb = prefix .. 'heartbeat:' .. id
  if id ~= me and (only == '' or only == id)
      and (force == '1' or redis.call('EXISTS', hb) == 0) then
    local ok, meta = pcall(cjson.decode, info)
    local queues = {}
    if ok and type(meta) == 'table' and type(meta['queues']) == 'table' then
      queues = meta['queues']
    end
    local complete = true
    for _, q in ipairs(queues) do
      if type(q) == 'string' then
        local pk = prefix .. 'processing:' .. id .. ':' .. q
        local n = 0
        while true do
          local m = redis.call('LINDEX', pk, -1)
          if not m then break end
          local r = redis.pcall('LPUSH', q, bump(m))
          if type(r) == 'table' and r.err then
            complete = false
            break
          end
          redis.call('RPOP', pk)
          n = n + 1
        end
        if n > 0 then
          out[#out + 1] = id
          out[#out + 1] = q
          out[#out + 1] = n
        end
      end
    end
    if complete then
      redis.call('HDEL', KEYS[1], id)
      redis.call('DEL', hb)
    end
  end
end
return out
"""

#: redsync-compatible release: delete the lock only if it still holds our token.
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
else
  return 0
end
"""


def _thread_state(pool: Any) -> threading.local:
    """The thread-local state every FastPath on ``pool`` shares."""
    with _lock:
        state = _thread_states.get(pool)
        if state is None:
            state = _thread_states[pool] = threading.local()
        return state


class Piggyback:
    """Commands to send with, and atomically after, the next write of one thread to one
    server (see :meth:`FastPath.piggyback`).  ``replies`` is ``None`` until they ran."""

    __slots__ = ("commands", "replies")

    def __init__(self, commands: Sequence[tuple[Any, ...]]) -> None:
        self.commands = list(commands)
        self.replies: list[Any] | None = None


class _ThreadCalls:
    """What :class:`FastPath` and the cluster's ``ClusterPath`` share: one piggyback slot per
    thread (``_local``) and ``call``, on top of their own ``execute``."""

    _local: threading.local

    def execute(self, *commands: tuple[Any, ...]) -> list[Any]:
        raise NotImplementedError

    @contextlib.contextmanager
    def piggyback(self, *commands: tuple[Any, ...]) -> Iterator[Piggyback]:
        """Within the block, the next :meth:`execute` this thread makes on this pool (through
        any path on it) also runs ``commands``, after its own: on one Redis in one atomic call
        of the :data:`EXEC_ALL` script (one command, one reply; plain commands only, no
        scripts); on a cluster as another write on each node, only if the first succeeded.
        A failed execute leaves them for the next one (a retry).  After the block,
        ``replies`` tells whether they ran; blocking calls and ``evalsha`` never take them."""
        pb = Piggyback(commands)
        previous = getattr(self._local, "piggyback", None)
        self._local.piggyback = pb
        try:
            yield pb
        finally:
            self._local.piggyback = previous

    def call(self, *args: Any) -> Any:
        return self.execute(args)[0]


class FastPath(_ThreadCalls):
    """Hot-path commands written straight onto a per-thread connection.

    redis-py's ``Redis``/``Pipeline`` objects cost more Python time per command than the
    round trip itself; producers and workers send a handful of fixed commands per task, so
    they pack them in one write and read the replies here.  Each thread keeps one connection
    checked out of the shared pool (every FastPath on the same pool uses the same one, so a
    broker and a backend on one server share it); any error drops that connection (the next
    call takes a fresh one) and is re-raised as redis-py raised it.  After a fork, the child
    never touches the connection its parent held: it takes its own.
    """

    def __init__(self, client: Any, *, wait_replicas: int = 0, wait_timeout_ms: int = 1000) -> None:
        self.pool = client.connection_pool
        self._local = _thread_state(self.pool)
        #: a Sentinel master's pool: a READONLY reply means the master moved (see _execute)
        self.sentinel = hasattr(self.pool, "service_name")
        #: ``WAIT`` appended to every batch (``redis.wait_replicas``), or None
        self.wait: tuple[str, int, int] | None = (
            ("WAIT", wait_replicas, wait_timeout_ms if wait_timeout_ms > 0 else 1000)
            if wait_replicas > 0 else None)

    def _check_wait(self, conn: Any, reply: Any) -> None:
        """The reply of the appended ``WAIT``: fewer replicas than asked is a lost write."""
        assert self.wait is not None
        if isinstance(reply, BaseException):
            raise reply
        if int(reply) < self.wait[1]:
            self._drop(conn)
            raise require_redis().ConnectionError(
                f"WAIT: {reply} of {self.wait[1]} replica(s) acknowledged the write within "
                f"{self.wait[2]} ms (the master may be changing); retry it")

    def _conn(self) -> Any:
        held: _Held | None = getattr(self._local, "held", None)
        now = time.monotonic()
        if held is not None and held.pid == _pid and now - held.used > IDLE_CHECK \
                and _peer_closed(held.conn):
            # idle a while and closed by the server meanwhile (a restart, its timeout, CLIENT
            # KILL): nothing was sent on it, so a new connection is safe
            self._drop(held.conn)
            held = None
        if held is None or held.pid != _pid:
            if held is not None:  # inherited through fork: the parent's socket, forget it
                held.forget()
            held = _Held(self.pool, self.pool.get_connection())
            self._local.held = held  # released to the pool when the thread ends
        held.used = now
        conn = held.conn
        if conn._sock is None and self.sentinel:
            # disconnected (the SwitchWatcher after a failover, an error): connect through
            # the sentinels.  redis-py 8 reconnects a disconnected connection to the address
            # it had (send_packed_command -> connect_check_health), the old master
            conn.connect()
        return conn

    def _drop(self, conn: Any) -> None:
        held: _Held | None = getattr(self._local, "held", None)
        self._local.held = None
        try:
            conn.disconnect()
        finally:
            if held is not None:
                held.release()

    def execute(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send ``commands`` in one write; return their replies (an error reply raises).

        Inside :meth:`piggyback` on this thread (and this pool), the piggybacked commands go
        in the same call, after these, atomically (see :data:`EXEC_ALL`).
        """
        pb: Piggyback | None = getattr(self._local, "piggyback", None)
        if pb is not None and pb.replies is None:
            return self._execute_with(commands, pb)
        return self._execute(commands)

    def execute_then(self, commands: Sequence[tuple[Any, ...]],
                     after: Sequence[tuple[Any, ...]]) -> tuple[list[Any], list[Any]]:
        """:meth:`execute` of ``commands`` (with this thread's piggybacked commands, if any),
        and ``after`` sent behind them in the same write (after them; not atomically with
        them; scripts allowed).  Returns both lists of replies; an error reply of ``after`` is
        returned (the exception object), not raised, so that the outcome of ``commands`` is
        known whatever happened to ``after``."""
        pb: Piggyback | None = getattr(self._local, "piggyback", None)
        with_pb = pb is not None and pb.replies is None
        first: list[tuple[Any, ...]] = list(commands)
        if with_pb:
            assert pb is not None
            words: list[Any] = []
            for c in (*commands, *pb.commands):
                words.append(len(c))
                words.extend(c)
            first = [("EVALSHA", EXEC_ALL_SHA, 0, *words)]
        r = require_redis()
        conn = self._conn()
        batch = [*first, *after, *([self.wait] if self.wait is not None else [])]
        try:
            sock = conn._sock
            if sock is not None and _direct_io(conn, sock):
                replies = _send_and_read(conn, sock, self._pack(conn, batch)[0], len(batch),
                                         raise_errors=False)
            else:
                conn.send_packed_command(self._pack(conn, batch), check_health=False)
                replies = []
                for _ in range(len(batch)):
                    try:
                        replies.append(conn.read_response(disconnect_on_error=False))
                    except r.ResponseError as e:
                        replies.append(e)
        except BaseException:
            self._drop(conn)
            raise
        if self.wait is not None:
            self._check_wait(conn, replies.pop())
        head, tail = replies[:len(first)], replies[len(first):]
        for reply in head:
            if isinstance(reply, r.exceptions.NoScriptError) and with_pb:  # Redis restarted: load it
                self._execute([("SCRIPT", "LOAD", EXEC_ALL)])  # (nothing of ``first`` ran)
                # ``after`` did run (behind the failed call): its own replies, so that a
                # caller does not write again what it wrote (a second RECEIVED/STARTED)
                return self.execute(*commands), tail
            if isinstance(reply, (r.ResponseError, r.ConnectionError)):
                raise reply
        if with_pb:
            assert pb is not None
            results = head[0]
            pb.replies = results[len(commands):]
            return list(results[:len(commands)]), tail
        return head, tail

    @staticmethod
    def _pack(conn: Any, commands: Sequence[tuple[Any, ...]]) -> Any:
        """The commands in Redis's protocol: hiredis's packer straight away when it is
        installed (what redis-py uses too, minus its per-command Python overhead)."""
        if hiredis is not None:
            if len(commands) == 1:
                return [hiredis.pack_command(commands[0])]
            return [b"".join([hiredis.pack_command(c) for c in commands])]
        return conn.pack_commands(commands)

    def _execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        try:
            return self._execute_once(commands)
        except (require_redis().ConnectionError, require_redis().ResponseError) as e:
            if not (self.sentinel and _demoted_master(e)):
                raise
            # a Sentinel master connection reached a replica (the master was demoted, or a
            # sentinel still named the old one): the replica refused every write of the
            # batch, so it is sent again, once, on a new connection to the master the
            # sentinels name now (go-redis' FailoverClient retries READONLY too)
            logger.warning("Redis answered READONLY (%s): sending again to the master the "
                           "sentinels name now", e)
            return self._execute_once(commands)

    def _execute_once(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        if self.wait is not None:
            commands = [*commands, self.wait]
        conn = self._conn()
        try:
            sock = conn._sock
            if sock is not None and _direct_io(conn, sock):
                replies = _send_and_read(conn, sock, self._pack(conn, commands)[0],
                                         len(commands))
            else:
                conn.send_packed_command(self._pack(conn, commands), check_health=False)
                replies = [conn.read_response(disconnect_on_error=False) for _ in commands]
        except BaseException:
            self._drop(conn)
            raise
        if self.wait is not None:
            self._check_wait(conn, replies.pop())
        return replies

    def _execute_with(self, commands: Sequence[tuple[Any, ...]], pb: Piggyback) -> list[Any]:
        """``commands`` then the piggybacked ones in one EXEC_ALL script call: one command,
        one reply, atomic (an OOM on the first write stops it before anything else ran)."""
        words: list[Any] = []
        for c in (*commands, *pb.commands):
            words.append(len(c))
            words.extend(c)
        call = ("EVALSHA", EXEC_ALL_SHA, 0, *words)
        try:
            results = self._execute([call])[0]
        except require_redis().exceptions.NoScriptError:  # Redis restarted: nothing ran
            self._execute([("SCRIPT", "LOAD", EXEC_ALL)])
            results = self._execute([call])[0]
        pb.replies = results[len(commands):]
        return list(results[:len(commands)])

    def call_blocking(self, wait: float, *args: Any) -> Any:
        """A blocking command (``BLPOP … wait``): its reply may take ``wait`` seconds, so the
        read waits ``wait`` + the socket timeout instead of timing out spuriously."""
        conn = self._conn()
        try:
            conn.send_packed_command(self._pack(conn, [args]), check_health=False)
            normal = conn.socket_timeout
            sock = conn._sock
            if normal is None or sock is None:
                return conn.read_response(disconnect_on_error=False)
            # back in redis-py's mode afterwards (the next execute switches to direct I/O
            # again, see _direct_io)
            sock.settimeout(wait + normal)
            try:
                return conn.read_response(disconnect_on_error=False)
            finally:
                if conn._sock is sock:
                    sock.settimeout(normal)
        except BaseException:
            self._drop(conn)
            raise

    def evalsha(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``EVALSHA`` of a registered redis-py Script, loading it once if Redis lost it."""
        return self.evalsha_many(script, [(keys, args)])[0]

    def evalsha_many(self, script: Any, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]
                     ) -> list[Any]:
        """Several ``EVALSHA`` of one script in one write; if Redis lost the script (a
        restart), it is loaded and the whole batch sent again, so the script must be safe to
        run twice with the same arguments."""
        r = require_redis()
        commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for keys, args in calls]
        try:
            return self._execute(commands)
        except r.exceptions.NoScriptError:
            self._execute([("SCRIPT", "LOAD", script.script)])  # same SHA1: same commands
            return self._execute(commands)

    def close(self) -> None:
        """Give this thread's connection back to the pool."""
        held: _Held | None = getattr(self._local, "held", None)
        self._local.held = None
        if held is not None:
            held.release()


#: seconds a thread's connection may sit unused before its next use checks that the server
#: has not closed it
IDLE_CHECK = 1.0


def _peer_closed(conn: Any) -> bool:
    """Whether the server closed ``conn``'s socket (or sent something nobody asked for): it is
    readable between commands.  No socket yet: False (redis-py connects on use)."""
    sock = getattr(conn, "_sock", None)
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class _Held:
    """One thread's checked-out connection; returned to the pool when the thread ends.

    Only by the process that took it: in a forked child, :meth:`release` (and the
    finalizer, which may run while Python cleans up the parent's other threads in the
    child) just forgets the connection, never sending on, returning or shutting down the
    parent's socket.
    """

    __slots__ = ("conn", "pid", "pool", "used")

    def __init__(self, pool: Any, conn: Any) -> None:
        self.pool = pool
        self.conn = conn
        self.pid = os.getpid()
        self.used = time.monotonic()

    def release(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and self.pid == os.getpid():
            _pool_mode(conn)
            self.pool.release(conn)

    def forget(self) -> None:
        self.conn = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.release()


# --------------------------------------------------------------------------------------
# direct socket I/O of a FastPath connection
# --------------------------------------------------------------------------------------

_TIMEVAL = struct.Struct("@ll")


def _hiredis_sentinel() -> Any:
    """What redis-py's hiredis reader returns while a reply is incomplete (None: unknown,
    then the direct I/O is not used)."""
    try:
        from redis._parsers import hiredis as parsers
    except ImportError:
        return None
    return getattr(parsers, "NOT_ENOUGH_DATA", None)


_NOT_ENOUGH_DATA: Any = _hiredis_sentinel() if redis is not None else None


def _demoted_master(e: BaseException) -> bool:
    """Whether ``e`` is a ``READONLY`` reply: as read here, or as redis-py's Sentinel
    connection turns it into "The previous master is now a slave" (nothing was written)."""
    r = require_redis()
    return isinstance(e, r.exceptions.ReadOnlyError) or (
        isinstance(e.__context__, r.exceptions.ReadOnlyError) and "previous master" in str(e))


def _direct_io(conn: Any, sock: Any) -> bool:
    """Whether :func:`_send_and_read` may use ``sock`` (plain TCP or unix socket, hiredis
    parser); switches it to blocking mode with the connection's timeout as the kernel's
    ``SO_RCVTIMEO``/``SO_SNDTIMEO`` the first time.

    A Python socket with a timeout polls before every ``send``/``recv`` (a second system
    call, and a second release of the GIL, which a worker's busy threads make expensive);
    a blocking socket with the kernel's timeouts waits the same at most, in one call.  The
    socket goes back to redis-py's mode when the connection returns to the pool
    (:func:`_pool_mode`)."""
    if hiredis is None or isinstance(sock, ssl.SSLSocket):
        return False
    parser = getattr(conn, "_parser", None)
    if (_NOT_ENOUGH_DATA is None or type(parser).__module__ != "redis._parsers.hiredis"
            or getattr(parser, "_reader", None) is None
            or getattr(parser, "_buffer", None) is None):
        return False
    if sock.gettimeout() is not None:
        timeout = conn.socket_timeout
        sec = float(timeout) if timeout else 0.0
        tv = _TIMEVAL.pack(int(sec), int((sec - int(sec)) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        sock.settimeout(None)
    return True


def _pool_mode(conn: Any) -> None:
    """Put a connection's socket back into redis-py's timeout mode (see :func:`_direct_io`)."""
    sock = getattr(conn, "_sock", None)
    timeout = getattr(conn, "socket_timeout", None)
    if sock is not None and timeout is not None and sock.gettimeout() is None:
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)


def _send_and_read(conn: Any, sock: Any, data: bytes, count: int, *,
                   raise_errors: bool = True) -> list[Any]:
    """Write ``data`` and read ``count`` replies straight through the socket and the
    connection's hiredis reader (what ``send_packed_command`` + ``read_response`` do, minus
    their layers); errors as redis-py raises them (a timeout: ``redis.TimeoutError``)."""
    r = require_redis()
    parser = conn._parser
    reader = parser._reader
    buf = parser._buffer
    missing = _NOT_ENOUGH_DATA
    try:
        send_all(sock, data)
        replies = []
        for _ in range(count):
            reply = reader.gets()
            while reply is missing:
                n = recv_into(sock, buf)
                if n == 0:
                    raise r.ConnectionError("Connection closed by server.")
                reader.feed(buf, 0, n)
                reply = reader.gets()
            replies.append(reply)
    except (TimeoutError, BlockingIOError) as e:
        raise r.TimeoutError("Timeout reading from or writing to socket") from e
    except OSError as e:
        raise r.ConnectionError(f"Error while reading from or writing to socket: {e}") from e
    if not raise_errors:
        return replies
    for reply in replies:
        if isinstance(reply, r.ResponseError):
            raise reply
        if isinstance(reply, r.ConnectionError):
            raise reply
    return replies
