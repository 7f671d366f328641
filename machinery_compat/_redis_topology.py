"""Which redis-py client a Redis URL and ``redis`` settings call for, chosen as Go Machinery v2
chooses its go-redis client (see docs/scaling.md), and building it.

Go's order (``NewGR`` of the broker, backend and lock):

1. ``redis.cluster_enabled`` (v1: ``redis.cluster_mode``) -> a cluster client on the URL's
   addresses (one seed address is enough);
2. else ``redis.master_name`` -> a Sentinel failover client: the URL's addresses are the
   sentinels', ``redis.sentinel_password`` authenticates to them, the URL's credentials and
   db are the master's;
3. else several addresses (``redis://h1:p1,h2:p2``) -> a cluster client;
4. else one address -> a plain client (not handled here: :func:`plan` says ``single``).

A Redis Cluster has DB 0 only: a URL naming another db is refused (:class:`ConfigError`),
where Go would silently use DB 0.

The broker, the backend and the periodic lock (``_redis.client_for``) use Sentinel through
:func:`sentinel_pool`, and a cluster through :func:`build_client`'s ``RedisCluster`` with
the cluster-safe steps of :mod:`machinery_compat._redis_cluster` (docs/scaling.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .config.model import RedisConfig
from .config.redis_url import RedisURL, parse_redis_url
from .exceptions import ConfigError

logger = logging.getLogger(__name__)

Kind = Literal["single", "cluster", "sentinel"]


@dataclass(frozen=True)
class Topology:
    """What :func:`plan` decided: the client ``kind`` and the addresses it starts from."""

    kind: Kind
    hosts: tuple[tuple[str, int], ...]
    master_name: str = ""


def plan(url: str | RedisURL, redis: RedisConfig | None) -> Topology:
    """The client Go would build for ``url`` with the ``redis`` settings (pure)."""
    cfg = redis or RedisConfig()
    parsed = url if isinstance(url, RedisURL) else parse_redis_url(
        url, cluster=cfg.cluster_enabled)
    if parsed.socket_path is not None:
        if cfg.cluster_enabled or cfg.master_name:
            raise ConfigError("a redis+socket:// URL cannot name a cluster or sentinels")
        return Topology("single", ())
    if cfg.cluster_enabled or (parsed.multi_host and not cfg.master_name):
        if parsed.db != 0:
            raise ConfigError(f"a Redis Cluster has DB 0 only; the URL names db {parsed.db}")
        return Topology("cluster", parsed.hosts)
    if cfg.master_name:
        return Topology("sentinel", parsed.hosts, cfg.master_name)
    return Topology("single", parsed.hosts)


def sentinel_pool(url: str, redis: RedisConfig, conn_kwargs: dict[str, Any]) -> Any:
    """A redis-py ``SentinelConnectionPool`` on ``redis.master_name`` as the sentinels at
    ``url``'s addresses name it (``redis.sentinel_password`` authenticates to them; the URL's
    credentials and db are the master's).  ``conn_kwargs`` (timeouts, retry, pool size...) go
    to the master's connections; the sentinels get the same socket timeouts.  A connection
    asks the sentinels for the master when it connects, so after a failover the next
    connection reaches the new master (and one still on the old master, now a replica, fails
    with ``READONLY`` and is dropped)."""
    from redis import sentinel as sentinel_module

    sentinel_mod: Any = sentinel_module  # redis-py: partly untyped
    parsed = parse_redis_url(url, cluster=redis.cluster_enabled)
    topo = plan(parsed, redis)
    if topo.kind != "sentinel":
        raise ConfigError(f"{topo.kind} topology: no redis.master_name for Sentinel")
    kwargs = dict(conn_kwargs)
    if parsed.password:
        kwargs["password"] = parsed.password
        if parsed.username:
            kwargs["username"] = parsed.username
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # one attempt per call: redis-py's default retry sleeps with jitter drawn from the global
    # random module, also from the never-ending SwitchWatcher thread
    sentinel_kwargs: dict[str, Any] = {
        "retry": Retry(NoBackoff(), 0),
        **{k: v for k, v in kwargs.items() if k in ("socket_timeout", "socket_connect_timeout")}}
    if redis.sentinel_password:
        sentinel_kwargs["password"] = redis.sentinel_password
    if parsed.tls:
        tls = {"ssl": True, **(parsed.tls_options.to_redis_py_kwargs()
                               if parsed.tls_options is not None else {})}
        sentinel_kwargs.update(tls)
        kwargs.update({k: v for k, v in tls.items() if k != "ssl"})
        kwargs["connection_class"] = sentinel_mod.SentinelManagedSSLConnection
    manager = _newest_epoch_sentinel()(list(topo.hosts), sentinel_kwargs=sentinel_kwargs)
    pool = sentinel_mod.SentinelConnectionPool(topo.master_name, manager, db=parsed.db, **kwargs)
    SwitchWatcher(topo.hosts, sentinel_kwargs, topo.master_name, pool).start()
    return pool


_sentinel_class: Any = None


def newest_master(service_name: str, answers: Sequence[tuple[Any, Any]],
                  usable: Callable[[dict[str, Any]], bool],
                  not_found: type[Exception]) -> tuple[str, int]:
    """Sentinel's own rule, for the sync and the asyncio client: of every sentinel's answer
    (``(sentinel, its masters()[service_name] or None or the error)``), the usable master
    of the newest configuration epoch; ``not_found`` naming every error if there is none."""
    best: tuple[int, str, int] | None = None
    errors = []
    for sentinel, state in answers:
        if isinstance(state, BaseException):
            errors.append(f"{sentinel} - {state!r}")
        elif state and usable(state):
            epoch = int(state.get("config-epoch", 0))
            if best is None or epoch > best[0]:
                best = (epoch, state["ip"], int(state["port"]))
    if best is None:
        raise not_found(f"No master found for {service_name!r}"
                        + (f" : {', '.join(errors)}" if errors else ""))
    return best[1], best[2]


def _newest_epoch_sentinel() -> Any:
    """redis-py's ``Sentinel`` whose ``discover_master`` asks every sentinel and takes the
    master of the newest configuration epoch (Sentinel's own rule), where redis-py takes the
    first sentinel's answer: right after a failover the sentinels that did not run it still
    name the old master for a second or two, and connections made then would write to a
    master about to be demoted (and resynced: the writes lost)."""
    global _sentinel_class
    if _sentinel_class is None:
        from redis import sentinel as sentinel_module

        mod: Any = sentinel_module

        class NewestEpochSentinel(mod.Sentinel):  # type: ignore[misc]
            def discover_master(self, service_name: str) -> tuple[str, int]:
                answers: list[tuple[Any, Any]] = []
                for sentinel in self.sentinels:
                    try:
                        answers.append((sentinel, sentinel.sentinel_masters().get(service_name)))
                    except (mod.ConnectionError, mod.TimeoutError) as e:
                        answers.append((sentinel, e))
                return newest_master(service_name, answers,
                                     lambda st: self.check_master_state(st, service_name),
                                     mod.MasterNotFoundError)

        _sentinel_class = NewestEpochSentinel
    return _sentinel_class


class SwitchWatcher(threading.Thread):
    """Follows ``+switch-master`` for one master name, as go-redis' FailoverClient does: when
    the sentinels announce a new master, every connection of ``pool`` (idle or in use) is
    closed, so the next command connects to the new master instead of writing on to the old
    one.  Without it a thread's connection stays on the old master until that one is turned
    into a replica (seconds later, after a ``SENTINEL FAILOVER``) and its full resync throws
    away everything written there meanwhile.  One daemon thread per pool; it tries the
    sentinels in turn and resubscribes after an error."""

    def __init__(self, hosts: tuple[tuple[str, int], ...], sentinel_kwargs: dict[str, Any],
                 master_name: str, pool: Any) -> None:
        super().__init__(name=f"mc-sentinel-{master_name}", daemon=True)
        self.hosts, self.sentinel_kwargs = hosts, sentinel_kwargs
        self.master_name, self.pool = master_name, pool
        self.switches = 0

    def run(self) -> None:
        import redis as redis_module

        r: Any = redis_module
        pause = 1.0
        while True:
            for host, port in self.hosts:
                try:
                    self._follow(r.Redis(host=host, port=port, **{
                        **self.sentinel_kwargs, "socket_timeout": None}))
                    pause = 1.0
                except Exception as e:  # that sentinel is gone: the next one
                    logger.debug("sentinel %s:%s: %s", host, port, e)
            time.sleep(pause)  # none answered: try again, less and less often (<= 30 s)
            pause = min(pause * 2, 30.0)

    def _follow(self, sentinel: Any) -> None:
        pubsub = sentinel.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe("+switch-master")
            for message in pubsub.listen():
                data = message.get("data")
                words = data.split() if isinstance(data, bytes) else []
                if words and words[0].decode(errors="replace") == self.master_name:
                    self.switches += 1
                    logger.warning("Redis master %s moved to %s:%s: reconnecting",
                                   self.master_name, words[3].decode(), words[4].decode())
                    self.pool.disconnect(inuse_connections=True)
        finally:
            pubsub.close()


def build_client(url: str, redis: RedisConfig | None, **kwargs: Any) -> Any:
    """A ``redis.RedisCluster`` or a Sentinel master client (``Sentinel(...).master_for``)
    for ``url``; ``kwargs`` go to the connections (timeouts, ``decode_responses``...).  For a
    ``single`` topology it raises :class:`ConfigError` (use the plain client path)."""
    cfg = redis or RedisConfig()
    parsed = parse_redis_url(url, cluster=cfg.cluster_enabled)
    topo = plan(parsed, cfg)
    auth: dict[str, Any] = {}
    if parsed.password:
        auth["password"] = parsed.password
        if parsed.username:
            auth["username"] = parsed.username
    if parsed.tls:
        auth["ssl"] = True
        if parsed.tls_options is not None:
            auth.update(parsed.tls_options.to_redis_py_kwargs())
    if topo.kind == "cluster":
        from redis import cluster as cluster_module

        cluster: Any = cluster_module  # redis-py: partly untyped
        nodes = [cluster.ClusterNode(host, port) for host, port in topo.hosts]
        return cluster.RedisCluster(startup_nodes=nodes, **auth, **kwargs)
    if topo.kind == "sentinel":
        from redis import sentinel as sentinel_module

        sentinel_mod: Any = sentinel_module
        sentinel_kwargs: dict[str, Any] = {
            k: v for k, v in kwargs.items() if k.startswith("socket_")}
        if cfg.sentinel_password:
            sentinel_kwargs["password"] = cfg.sentinel_password
        if parsed.tls:
            sentinel_kwargs.update({k: v for k, v in auth.items() if k.startswith("ssl")})
        sentinel = sentinel_mod.Sentinel(list(topo.hosts), sentinel_kwargs=sentinel_kwargs, **kwargs)
        return sentinel.master_for(topo.master_name, db=parsed.db, **auth)
    raise ConfigError("one address without cluster_enabled or master_name: a plain client")
