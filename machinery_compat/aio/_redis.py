"""redis.asyncio plumbing of :mod:`machinery_compat.aio`: the same commands, other I/O.

The sync Redis broker and backend build every command as a tuple (``publish_command``,
``pending_command``, ``init_group_command``); the asyncio API sends those very tuples with
``redis.asyncio``, so the stored bytes are the same by construction.  Several commands go in
one pipeline (no ``MULTI``), in order, as the sync ``FastPath`` writes them.

Connections: one ``redis.asyncio`` pool per event loop, URL form and timeouts (connections
belong to the loop that opened them); the URL is parsed as everywhere else
(:func:`~machinery_compat.config.redis_url.parse_redis_url`: Machinery's forms, ``rediss://``
with its ``ssl_*`` options, ``redis+socket://``) and the topology chosen as Go v2 chooses it
(:func:`~machinery_compat._redis_topology.plan`): ``redis.master_name`` gives a Sentinel
client (``redis.asyncio.sentinel``, the newest-epoch master rule of the sync client);
``redis.wait_replicas`` appends the sync fast path's ``WAIT`` to every write.  Not here:
Redis Cluster, Sentinel over TLS, and a TLS :class:`ssl.SSLContext` from the config
(``tls_config``) — they raise :class:`~machinery_compat.exceptions.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._redis import Timeouts, connection_key, connection_key_hosts, require_redis
from .._redis_topology import newest_master, plan
from ..config.redis_url import parse_redis_url
from ..exceptions import BackendError, ConfigError

if TYPE_CHECKING:
    from ..backends.base import ExceptionRecord
    from ..protocol import TaskState

Command = tuple[Any, ...]


#: the attribute of a client holding the ``WAIT`` appended to each of its writes
_WAIT = "_machinery_compat_wait"


def client_key(url: str, timeouts: Timeouts) -> tuple[Any, ...]:
    """Two URLs with the same key share one client (and one pipeline per send)."""
    key = connection_key_hosts(url) if parse_redis_url(url).multi_host else connection_key(url)
    return (*key, ("timeouts", timeouts.connect, timeouts.read, timeouts.write))


def new_client(url: str, timeouts: Timeouts, *, tls_context: Any = None,
               topology: Any = None) -> Any:
    """A ``redis.asyncio.Redis`` (bytes replies) on a new pool for ``url``."""
    require_redis()
    import redis.asyncio as aredis
    from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    kind = plan(url, topology).kind
    if kind == "cluster":
        raise ConfigError("the asyncio API does not support Redis Cluster (redis.cluster_enabled "
                          "or several addresses without redis.master_name); use the sync API")
    parsed = parse_redis_url(url)
    if kind == "sentinel":
        return _sentinel_client(url, topology, timeouts)
    if parsed.tls and tls_context is not None:
        raise ConfigError("the asyncio API takes Redis TLS options as ssl_* URL parameters "
                          "only, not the config's tls_config SSLContext")
    kw = parsed.to_redis_py_kwargs()
    if kw.get("unix_socket_path"):
        kw["connection_class"] = UnixDomainSocketConnection
        kw["path"] = kw.pop("unix_socket_path")
    if kw.pop("ssl", False):
        kw["connection_class"] = SSLConnection
        kw.setdefault("ssl_cert_reqs", "required")
        kw.setdefault("ssl_check_hostname", True)
    kw.update(socket_timeout=timeouts.socket, socket_connect_timeout=timeouts.connect,
              retry=Retry(NoBackoff(), 0), health_check_interval=30)
    return _with_wait(aredis.Redis(connection_pool=aredis.ConnectionPool(**kw)), topology)


def _with_wait(client: Any, topology: Any) -> Any:
    """``redis.wait_replicas``: every write of ``client`` ends with a ``WAIT`` (as the sync
    ``FastPath``'s), whose short reply fails the write."""
    n = getattr(topology, "wait_replicas", 0) or 0
    if n > 0:
        ms = topology.wait_timeout if topology.wait_timeout > 0 else 1000
        setattr(client, _WAIT, ("WAIT", n, ms))
    return client


def _sentinel_client(url: str, redis: Any, timeouts: Timeouts) -> Any:
    """A ``redis.asyncio.Redis`` on the master ``redis.master_name`` as the sentinels at
    ``url``'s addresses name it — the sync client's rules (:mod:`machinery_compat.
    _redis_topology`): ``redis.sentinel_password`` authenticates to the sentinels, the URL's
    credentials and db are the master's, and the master is the one of the newest
    configuration epoch among the sentinels' answers.  A connection asks when it connects,
    so after a failover the next one reaches the new master."""
    import redis.asyncio as aredis
    from redis.asyncio import sentinel as sentinel_module
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    asentinel: Any = sentinel_module  # redis-py: partly untyped
    parsed = parse_redis_url(url)
    if parsed.tls:
        raise ConfigError("the asyncio API does not support Redis Sentinel over TLS; use the "
                          "sync API")
    topo = plan(parsed, redis)
    socket = {"socket_timeout": timeouts.socket, "socket_connect_timeout": timeouts.connect}
    kw: dict[str, Any] = {**socket, "retry": Retry(NoBackoff(), 0), "health_check_interval": 30}
    if parsed.password:
        kw["password"] = parsed.password
        if parsed.username:
            kw["username"] = parsed.username
    sentinel_kw: dict[str, Any] = {**socket, "retry": Retry(NoBackoff(), 0)}
    if redis.sentinel_password:
        sentinel_kw["password"] = redis.sentinel_password
    manager = _NewestEpochSentinel(list(topo.hosts), sentinel_kwargs=sentinel_kw)
    pool = asentinel.SentinelConnectionPool(topo.master_name, manager, db=parsed.db, **kw)
    return _with_wait(aredis.Redis(connection_pool=pool), redis)


def _newest_epoch_class() -> Any:
    from redis.asyncio import sentinel as asentinel

    mod: Any = asentinel

    class NewestEpochSentinel(mod.Sentinel):  # type: ignore[misc]
        """``discover_master`` asks every sentinel and takes the master of the newest
        configuration epoch, as the sync client's (redis-py takes the first answer)."""

        async def discover_master(self, service_name: str) -> tuple[str, int]:
            import redis

            answers: list[tuple[Any, Any]] = []
            for sentinel in self.sentinels:
                try:
                    answers.append((sentinel, (await sentinel.sentinel_masters()).get(service_name)))
                except (redis.ConnectionError, redis.TimeoutError) as e:
                    answers.append((sentinel, e))
            return newest_master(service_name, answers,
                                 lambda st: self.check_master_state(st, service_name),
                                 mod.MasterNotFoundError)

    return NewestEpochSentinel


def _NewestEpochSentinel(hosts: list[tuple[str, int]], **kwargs: Any) -> Any:
    global _sentinel_class
    if _sentinel_class is None:
        _sentinel_class = _newest_epoch_class()
    return _sentinel_class(hosts, **kwargs)


_sentinel_class: Any = None


async def close_client(client: Any) -> None:
    """Close ``client``'s connections (a Sentinel client's sentinel connections too)."""
    await client.aclose()
    pool = client.connection_pool
    await pool.disconnect()
    manager = getattr(pool, "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        await sentinel.aclose()


async def execute(client: Any, commands: Sequence[Command]) -> list[Any]:
    """Send ``commands`` in one pipelined write (no MULTI); their replies (an error raises).
    With ``redis.wait_replicas`` a ``WAIT`` ends the write; too few replicas raise
    ``redis.ConnectionError``."""
    wait = getattr(client, _WAIT, None)
    if len(commands) == 1 and wait is None:
        return [await client.execute_command(*commands[0])]
    async with client.pipeline(transaction=False) as pipe:
        for c in commands:
            pipe.execute_command(*c)
        if wait is not None:
            pipe.execute_command(*wait)
        replies = list(await pipe.execute())
    if wait is not None:
        acked = replies.pop()
        if int(acked) < wait[1]:
            import redis

            raise redis.ConnectionError(
                f"WAIT: {acked} of {wait[1]} replica(s) acknowledged the write within "
                f"{wait[2]} ms (the master may be changing); retry it")
    return replies


async def read(client: Any, doing: str, *args: Any) -> Any:
    """One read command; connection errors and timeouts become :class:`BackendError`."""
    import redis

    try:
        return await client.execute_command(*args)
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        raise BackendError(f"redis backend: reading {doing}: {e}") from e


class AioRedisBroker:
    """Publishes the sync :class:`~machinery_compat.brokers.redis.RedisBroker`'s commands."""

    def __init__(self, sync: Any, client: Any) -> None:
        self.sync = sync
        self.client = client

    def publish_command(self, sig: Any) -> Command:
        return tuple(self.sync.publish_command(sig))

    async def publish(self, sig: Any) -> None:
        import redis

        from ..exceptions import PublishError

        command = self.publish_command(sig)
        try:
            await execute(self.client, [command])
        except (redis.RedisError, OSError) as e:
            raise PublishError(f"Publish message error: {e} (task {sig.uuid} {sig.name!r}: "
                               f"the message may not have been queued on {command[1]})") from e


class AioRedisBackend:
    """The sync :class:`~machinery_compat.backends.redis.RedisBackend`'s keys and commands,
    sent and read with redis.asyncio."""

    def __init__(self, sync: Any, client: Any) -> None:
        self.sync = sync
        self.client = client

    def pending_command(self, sig: Any) -> Command:
        return tuple(self.sync.pending_command(sig))

    def init_group_command(self, group_uuid: str, task_uuids: Sequence[str]) -> Command:
        return tuple(self.sync.init_group_command(group_uuid, task_uuids))

    async def set_pending(self, sigs: Sequence[Any]) -> None:
        """Go's ``SetStatePending`` for each of ``sigs``, in one pipelined round trip."""
        await execute(self.client, [self.pending_command(s) for s in sigs])

    async def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        await execute(self.client, [self.init_group_command(group_uuid, task_uuids)])

    async def get_state(self, task_uuid: str) -> TaskState | None:
        from ..protocol import TaskState

        raw = await read(self.client, task_uuid, "GET", task_uuid)
        return None if raw is None else TaskState.from_json(raw)

    async def get_exception_record(self, task_uuid: str) -> ExceptionRecord | None:
        from ..backends.base import decode_exception_record, exception_record_key

        key = exception_record_key(task_uuid)
        return decode_exception_record(task_uuid, await read(self.client, key, "GET", key))

    async def get_group_meta(self, group_uuid: str) -> Any:
        from ..protocol import GroupMeta

        raw = await read(self.client, group_uuid, "GET", group_uuid)
        return None if raw is None else GroupMeta.from_json(raw)

    async def purge_state(self, task_uuid: str) -> None:
        from ..backends.base import exception_record_key

        await execute(self.client, [("DEL", task_uuid, exception_record_key(task_uuid))])
