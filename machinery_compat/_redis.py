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
import os
import ssl
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import parse_redis_url
from .exceptions import ConfigError

if TYPE_CHECKING:
    from .config import Config, RedisConfig

try:
    import redis
except ImportError:  # pragma: no cover - exercised only without the extra
    redis = None  # type: ignore[assignment]

_pools: dict[tuple[Any, ...], Any] = {}
_lock = threading.Lock()

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
               ssl_context: ssl.SSLContext | None = None) -> Any:
    """A ``redis.Redis`` on a process-wide pool for ``url`` and ``timeouts`` (bytes replies).

    ``timeouts=None`` means Machinery's defaults (15 s each).

    TLS (``rediss://`` URLs only): the certificate and the host name are verified, against
    the system's CAs unless the URL's ``ssl_*`` options say otherwise
    (:mod:`machinery_compat.config.redis_url`), or with ``ssl_context`` (Go's ``TLSConfig``;
    the URL must then carry no ``ssl_*`` option).  ``ssl_context`` is ignored for
    ``redis://`` URLs, as the AMQP broker ignores ``tls_config`` for ``amqp://``.
    """
    r = require_redis()
    t = timeouts if timeouts is not None else Timeouts()
    tls_context = ssl_context if ssl_context is not None and parse_redis_url(url).tls else None
    if tls_context is not None and parse_redis_url(url).tls_options is not None:
        raise ConfigError("give Redis TLS options either as ssl_* URL parameters or as an "
                          "SSLContext, not both")
    key = (*connection_key(url), ("timeouts", t.connect, t.read, t.write),
           ("ssl_context", id(tls_context)))  # the pool keeps the context: ids stay unique
    with _lock:
        pool = _pools.get(key)
        if pool is None:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

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
            kw.setdefault("health_check_interval", 30)
            kw["socket_timeout"] = t.socket
            kw["socket_connect_timeout"] = t.connect
            kw["retry"] = Retry(NoBackoff(), 0)  # one attempt per call: the timeouts are bounds
            kw["max_connections"] = 512
            pool = r.ConnectionPool(**kw)
            _pools[key] = pool
    return r.Redis(connection_pool=pool)


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


def _after_fork_in_child() -> None:
    """Re-create locks another thread of the parent may have held when it forked."""
    global _lock
    _lock = threading.Lock()
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

#: redsync-compatible release: delete the lock only if it still holds our token.
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
else
  return 0
end
"""


class FastPath:
    """Hot-path commands written straight onto a per-thread connection.

    redis-py's ``Redis``/``Pipeline`` objects cost more Python time per command than the
    round trip itself; producers and workers send a handful of fixed commands per task, so
    they pack them in one write and read the replies here.  Each thread keeps one connection
    checked out of the shared pool; any error drops that connection (the next call takes a
    fresh one) and is re-raised as redis-py raised it.  After a fork, the child never
    touches the connection its parent held: it takes its own.
    """

    def __init__(self, client: Any) -> None:
        self.pool = client.connection_pool
        self._local = threading.local()

    def _conn(self) -> Any:
        held: _Held | None = getattr(self._local, "held", None)
        if held is None or held.pid != os.getpid():
            if held is not None:  # inherited through fork: the parent's socket, forget it
                held.forget()
            held = _Held(self.pool, self.pool.get_connection())
            self._local.held = held  # released to the pool when the thread ends
        return held.conn

    def _drop(self, conn: Any) -> None:
        held: _Held | None = getattr(self._local, "held", None)
        self._local.held = None
        try:
            conn.disconnect()
        finally:
            if held is not None:
                held.release()

    def execute(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send ``commands`` in one write; return their replies (an error reply raises)."""
        conn = self._conn()
        try:
            conn.send_packed_command(conn.pack_commands(commands), check_health=False)
            replies = [conn.read_response(disconnect_on_error=False) for _ in commands]
        except BaseException:
            self._drop(conn)
            raise
        return replies

    def call(self, *args: Any) -> Any:
        return self.execute(args)[0]

    def call_blocking(self, wait: float, *args: Any) -> Any:
        """A blocking command (``BLPOP … wait``): its reply may take ``wait`` seconds, so the
        read waits ``wait`` + the socket timeout instead of timing out spuriously."""
        conn = self._conn()
        try:
            conn.send_packed_command(conn.pack_commands([args]), check_health=False)
            normal = conn.socket_timeout
            sock = conn._sock
            if normal is None or sock is None:
                return conn.read_response(disconnect_on_error=False)
            sock.settimeout(wait + normal)
            try:
                return conn.read_response(disconnect_on_error=False)
            finally:
                if conn._sock is sock:
                    sock.settimeout(normal)
        except BaseException:
            self._drop(conn)
            raise

    def evalsha(self, script: Any, keys: list[Any], args: list[Any]) -> Any:
        """``EVALSHA`` of a registered redis-py Script, loading it once if Redis lost it."""
        r = require_redis()
        try:
            return self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except r.exceptions.NoScriptError:
            script.sha = self.call("SCRIPT", "LOAD", script.script)
            return self.call("EVALSHA", script.sha, len(keys), *keys, *args)

    def close(self) -> None:
        """Give this thread's connection back to the pool."""
        held: _Held | None = getattr(self._local, "held", None)
        self._local.held = None
        if held is not None:
            held.release()


class _Held:
    """One thread's checked-out connection; returned to the pool when the thread ends.

    Only by the process that took it: in a forked child, :meth:`release` (and the
    finalizer, which may run while Python cleans up the parent's other threads in the
    child) just forgets the connection, never sending on, returning or shutting down the
    parent's socket.
    """

    __slots__ = ("conn", "pid", "pool")

    def __init__(self, pool: Any, conn: Any) -> None:
        self.pool = pool
        self.conn = conn
        self.pid = os.getpid()

    def release(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and self.pid == os.getpid():
            self.pool.release(conn)

    def forget(self) -> None:
        self.conn = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.release()
