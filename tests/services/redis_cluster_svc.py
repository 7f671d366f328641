"""Redis Cluster and Redis Sentinel on this machine, for scale-out and failover tests.

:class:`RedisClusterNodes`: six private ``redis-server`` nodes (``--cluster-enabled yes``, each
with its own dir and ``nodes.conf``) joined by ``redis-cli --cluster create …
--cluster-replicas 1``: three masters, each with one replica.  :meth:`~RedisClusterNodes.
master_for` finds the node serving a key's slot, :meth:`~RedisClusterNodes.failover` promotes
a master's replica (``CLUSTER FAILOVER``), :meth:`~RedisClusterNodes.kill_master` SIGKILLs a
master and waits until its replica took over.

:class:`RedisSentinelSet`: one master, one replica (``--replicaof``) and three sentinels
(``redis-server <conf> --sentinel``, the same binary Debian's ``redis-sentinel`` links to;
each with its own config file, which sentinels rewrite) monitoring ``mymaster`` with quorum 2
and short timeouts.  :meth:`~RedisSentinelSet.kill_master` kills the master and waits until
the sentinels promoted the replica.

Fixtures ``redis_cluster`` and ``redis_sentinel`` (session-wide: formed once).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ._base import (
    LOOPBACK,
    ServiceError,
    ServiceUnavailable,
    _no_retry,
    _ServerProcess,
    _session_service,
    free_port,
    start_or_report,
)

if TYPE_CHECKING:  # imported where used: every module here is a pytest plugin, and a plugin
    # imported by another before pytest registers it could not have its asserts rewritten
    import redis

    from .redis_svc import RedisServer

#: cluster-node-timeout of the cluster nodes (ms): a killed master is failed over after ~2x
CLUSTER_NODE_TIMEOUT_MS = 2000
#: sentinel settings: the master is down after this (ms); a failover may take this long (ms).
#: 2 s, not 1: with two pytest processes and Go workers on two cores a master once went
#: unanswered for a second, and the sentinels failed it over in the middle of a test
SENTINEL_DOWN_AFTER_MS = 2000
SENTINEL_FAILOVER_TIMEOUT_MS = 5000
MASTER_NAME = "mymaster"
#: the sentinels' requirepass in the session fixture (Machinery's redis.sentinel_password)
SENTINEL_PASSWORD = "sentinel-secret"


def _redis_cli() -> str:
    found = shutil.which("redis-cli")
    if found is None:
        raise ServiceUnavailable("redis-cli not found on PATH (apt-get install -y redis-tools)")
    return found


def _wait(check: Any, what: str, timeout: float) -> Any:
    """Poll ``check()`` until it returns something truthy (returned); ServiceError after
    ``timeout`` seconds.  Redis and OS errors count as not yet."""
    import redis

    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            got = check()
            if got:
                return got
            last = got
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise ServiceError(f"{what}: not within {timeout}s (last: {last!r})")


class RedisClusterNodes:
    """Six ``redis-server`` nodes forming a cluster of three masters with a replica each."""

    def __init__(self, masters: int = 3, replicas: int = 1, *,
                 formation_timeout: float = 90.0) -> None:
        from .redis_svc import RedisServer

        self._cli = _redis_cli()
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
                # a replica takes over even when it lost touch with its master for a while
                "--cluster-replica-validity-factor", "0"]
        # the bus port is its own free port (the default, port + 10000, may be taken, or
        # past 65535 for a free port above 55535)
        self.nodes: list[RedisServer] = [
            RedisServer(extra_args=[*args, "--cluster-port", str(free_port())])
            for _ in range(masters * (1 + replicas))]
        self._replicas = replicas
        self.formation_timeout = formation_timeout

    # -- forming -----------------------------------------------------------
    def start(self) -> RedisClusterNodes:
        try:
            self._form()
        except BaseException:
            self.close()
            raise
        return self

    def _form(self) -> None:
        for node in self.nodes:
            node.start()
        out = subprocess.run(
            [self._cli, "--cluster", "create", *self.addrs, "--cluster-replicas",
             str(self._replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=self.formation_timeout, check=False)
        if out.returncode != 0:
            raise ServiceError(f"redis-cli --cluster create failed ({out.returncode}):\n"
                               f"{out.stdout[-3000:]}\n{out.stderr[-2000:]}")
        self.wait_ok()

    def wait_ok(self, timeout: float | None = None) -> None:
        """Until every running node says ``cluster_state:ok``, sees every other running
        node connected, and each master that has slots has a replica in sync."""
        def ok() -> bool:
            running = [n for n in self.nodes if n.running]
            for node in running:
                with node.client(socket_timeout=2, retry=_no_retry()) as c:
                    info = c.execute_command("CLUSTER", "INFO")
                    text = info.decode() if isinstance(info, bytes) else str(info)
                    if "cluster_state:ok" not in text:
                        return False
                    known = int(_field(text, "cluster_known_nodes"))
                    if known < len(running):
                        return False
            table = self.topology()
            masters = [r for r in table if r["role"] == "master" and r["slots"]]
            if len(masters) != len(self.nodes) // (1 + self._replicas):
                return False
            for master in masters:
                replicas = [r for r in table if r["master_id"] == master["id"]
                            and self._node_at(r["port"]).running]
                if len(replicas) < self._replicas or not all(
                        self._replica_in_sync(r["port"]) for r in replicas):
                    return False
            return True

        _wait(ok, "Redis Cluster formed (cluster_state:ok, replicas in sync)",
              timeout or self.formation_timeout)

    def _replica_in_sync(self, port: int) -> bool:
        with self._node_at(port).client(socket_timeout=2, retry=_no_retry()) as c:
            role = c.execute_command("ROLE")
        return _s(role[0]) == "slave" and _s(role[3]) == "connected"

    # -- topology ----------------------------------------------------------
    @property
    def addrs(self) -> list[str]:
        """``host:port`` of every node, in node order."""
        return [f"{n.host}:{n.port}" for n in self.nodes]

    def url(self, count: int | None = None) -> str:
        """Machinery's several-address form: ``redis://h:p1,h:p2,…`` (``count`` nodes; no
        ``/db``: a cluster has DB 0 only, and v1 would take ``/0`` as part of the last
        address)."""
        return "redis://" + ",".join(self.addrs[:count])

    def topology(self) -> list[dict[str, Any]]:
        """``CLUSTER NODES`` as seen by the first running node: one dict per node with
        ``id``, ``port``, ``role`` (master|slave), ``master_id`` ("-" for masters),
        ``slots`` (list of (first, last)) and ``flags``."""
        node = next(n for n in self.nodes if n.running)
        with node.client(socket_timeout=2, retry=_no_retry()) as c:
            raw = c.execute_command("CLUSTER", "NODES")
        text = _s(raw)
        rows = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 8:
                continue
            flags = parts[2].split(",")
            slots = []
            for s in parts[8:]:
                if s.startswith("["):
                    continue  # a slot being migrated
                first, _, last = s.partition("-")
                slots.append((int(first), int(last or first)))
            rows.append({
                "id": parts[0], "port": int(parts[1].split("@")[0].rsplit(":", 1)[1]),
                "role": "master" if "master" in flags else "slave",
                "master_id": parts[3], "flags": flags, "slots": slots})
        return rows

    def _node_at(self, port: int) -> RedisServer:
        for node in self.nodes:
            if node.port == port:
                return node
        raise ServiceError(f"no cluster node on port {port}")

    def keyslot(self, key: str) -> int:
        node = next(n for n in self.nodes if n.running)
        with node.client(socket_timeout=2, retry=_no_retry()) as c:
            return int(c.execute_command("CLUSTER", "KEYSLOT", key))

    def master_for(self, key: str) -> RedisServer:
        """The node currently serving ``key``'s slot (as the cluster's table says)."""
        slot = self.keyslot(key)
        for row in self.topology():
            if row["role"] == "master" and "fail" not in row["flags"] and any(
                    a <= slot <= b for a, b in row["slots"]):
                return self._node_at(row["port"])
        raise ServiceError(f"no master serves slot {slot} of {key!r}")

    def replica_of(self, master: RedisServer) -> RedisServer:
        table = self.topology()
        mid = next(r["id"] for r in table if r["port"] == master.port)
        for row in table:
            if row["master_id"] == mid and self._node_at(row["port"]).running:
                return self._node_at(row["port"])
        raise ServiceError(f"{master!r} has no running replica")

    def masters(self) -> list[RedisServer]:
        return [self._node_at(r["port"]) for r in self.topology()
                if r["role"] == "master" and r["slots"] and "fail" not in r["flags"]]

    # -- failures ----------------------------------------------------------
    def failover(self, master: RedisServer, timeout: float = 30.0) -> RedisServer:
        """``CLUSTER FAILOVER`` on ``master``'s replica (a manual failover: the master hands
        over its slots once the replica caught up); returns the new master."""
        replica = self.replica_of(master)
        with replica.client(socket_timeout=5, retry=_no_retry()) as c:
            c.execute_command("CLUSTER", "FAILOVER")

        def promoted() -> bool:
            with replica.client(socket_timeout=2, retry=_no_retry()) as c:
                return _s(c.execute_command("ROLE")[0]) == "master"

        _wait(promoted, f"replica {replica.port} promoted by CLUSTER FAILOVER", timeout)
        self.wait_ok(timeout)
        return replica

    def kill_master(self, master: RedisServer, timeout: float = 30.0) -> RedisServer:
        """SIGKILL ``master``; wait until its replica serves its slots (returned).  Start the
        old master again with ``node.start()`` (it rejoins as a replica: same port and
        nodes.conf)."""
        replica = self.replica_of(master)
        master.kill()

        def promoted() -> bool:
            with replica.client(socket_timeout=2, retry=_no_retry()) as c:
                if _s(c.execute_command("ROLE")[0]) != "master":
                    return False
                info = c.execute_command("CLUSTER", "INFO")
                return "cluster_state:ok" in (info.decode() if isinstance(info, bytes)
                                              else str(info))

        _wait(promoted, f"replica {replica.port} promoted after master {master.port} died",
              timeout)
        return replica

    def restart_dead(self, timeout: float = 60.0) -> None:
        """Start every stopped node again and wait until the cluster is whole."""
        for node in self.nodes:
            if not node.running:
                node.start()
        self.wait_ok(timeout)

    def client(self, **kwargs: Any) -> redis.RedisCluster:
        """A redis-py ``RedisCluster`` on the first running node; the caller closes it."""
        import redis

        node = next(n for n in self.nodes if n.running)
        return redis.RedisCluster(host=node.host, port=node.port, **kwargs)

    def flushall(self) -> None:
        for node in self.masters():
            with node.client(socket_timeout=5, retry=_no_retry()) as c:
                c.flushall()

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __repr__(self) -> str:
        return f"<RedisClusterNodes {self.addrs if all(n._port for n in self.nodes) else ''}>"


class RedisSentinel(_ServerProcess):
    """One sentinel (``redis-server <conf> --sentinel``) watching ``master_name``."""

    name = "redis-sentinel"

    def __init__(self, master_host: str, master_port: int, *, master_name: str = MASTER_NAME,
                 quorum: int = 2, password: str | None = None, host: str = LOOPBACK,
                 startup_timeout: float = 30.0) -> None:
        binary = shutil.which("redis-sentinel")
        self._command_prefix: list[str]
        if binary is not None:
            self._command_prefix = [binary]
            self._suffix: list[str] = []
        else:
            server = shutil.which("redis-server")
            if server is None:
                raise ServiceUnavailable("redis-server not found on PATH (make bootstrap)")
            self._command_prefix, self._suffix = [server], ["--sentinel"]
        self.host = host
        self._port = None
        self.master_host, self.master_port = master_host, master_port
        self.master_name, self.quorum, self.password = master_name, quorum, password
        self.startup_timeout = startup_timeout

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        if self._dir is None:
            raise ServiceError("no dir yet")
        return self._dir / "sentinel.log"

    @property
    def conf_path(self) -> Path:
        assert self._dir is not None
        return self._dir / "sentinel.conf"

    def _launch(self) -> None:
        if not self.conf_path.exists() or f"port {self._port}\n" not in self.conf_path.read_text():
            lines = [
                f"port {self._port}", f"bind {self.host}", "protected-mode no",
                f"dir {self._dir}",
                f"sentinel monitor {self.master_name} {self.master_host} {self.master_port} "
                f"{self.quorum}",
                f"sentinel down-after-milliseconds {self.master_name} {SENTINEL_DOWN_AFTER_MS}",
                f"sentinel failover-timeout {self.master_name} {SENTINEL_FAILOVER_TIMEOUT_MS}",
                f"sentinel parallel-syncs {self.master_name} 1",
            ]
            if self.password:
                lines.append(f"requirepass {self.password}")
            self.conf_path.write_text("\n".join(lines) + "\n")
        self._spawn([*self._command_prefix, str(self.conf_path), *self._suffix],
                    self._answers, "answer SENTINEL get-master-addr-by-name", cwd=self._dir)

    def client(self, **kwargs: Any) -> redis.Redis:
        import redis

        return redis.Redis(host=self.host, port=self.port, password=self.password,
                           socket_connect_timeout=1, socket_timeout=2, retry=_no_retry(),
                           decode_responses=True, **kwargs)

    def _answers(self) -> bool:
        import redis

        try:
            with self.client() as c:
                return bool(c.execute_command("SENTINEL", "get-master-addr-by-name",
                                              self.master_name))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise OSError(str(exc)) from exc

    def master_addr(self) -> tuple[str, int] | None:
        with self.client() as c:
            got = c.execute_command("SENTINEL", "get-master-addr-by-name", self.master_name)
        return (str(got[0]), int(got[1])) if got else None


class RedisSentinelSet:
    """One master, one replica, three sentinels (quorum 2) watching them as ``mymaster``."""

    def __init__(self, *, sentinels: int = 3, quorum: int = 2,
                 sentinel_password: str | None = None, master_name: str = MASTER_NAME) -> None:
        from .redis_svc import RedisServer

        self.master_name = master_name
        self.sentinel_password = sentinel_password
        self.servers: list[RedisServer] = [RedisServer()]
        self._count, self._quorum = sentinels, quorum
        self.sentinels: list[RedisSentinel] = []

    def start(self) -> RedisSentinelSet:
        try:
            self._form()
        except BaseException:
            self.close()
            raise
        return self

    def _form(self) -> None:
        from .redis_svc import RedisServer

        first = self.servers[0].start()
        if len(self.servers) == 1:
            self.servers.append(RedisServer(extra_args=["--replicaof", first.host,
                                                        str(first.port)]))
        self.servers[1].start()
        self._wait_replica(self.servers[1])
        for _ in range(self._count):
            sentinel = RedisSentinel(first.host, first.port, master_name=self.master_name,
                                     quorum=self._quorum, password=self.sentinel_password)
            self.sentinels.append(sentinel)
            sentinel.start()
        self.wait_stable()

    def _wait_replica(self, server: RedisServer, timeout: float = 30.0) -> None:
        def synced() -> bool:
            with server.client(socket_timeout=2, retry=_no_retry()) as c:
                role = c.execute_command("ROLE")
            return _s(role[0]) == "slave" and _s(role[3]) == "connected"

        _wait(synced, f"replica {server.port} in sync", timeout)

    @property
    def sentinel_addrs(self) -> list[str]:
        return [s.addr for s in self.sentinels]

    def url(self) -> str:
        """The sentinels' addresses in Machinery's several-address form (``redis://a,b,c``;
        with ``redis.master_name`` Go builds a FailoverClient on them)."""
        return "redis://" + ",".join(self.sentinel_addrs)

    def master(self) -> RedisServer:
        """The server every sentinel names as master now (waits for them to agree)."""
        def agreed() -> tuple[str, int] | None:
            seen = {s.master_addr() for s in self.sentinels if s.running}
            return seen.pop() if len(seen) == 1 else None

        _, port = _wait(agreed, "sentinels agree on the master", 30)
        return self._server_at(port)

    def replica(self) -> RedisServer:
        master = self.master()
        return next(s for s in self.servers if s is not master)

    def _server_at(self, port: int) -> RedisServer:
        for server in self.servers:
            if server.port == port:
                return server
        raise ServiceError(f"sentinels name an unknown master port {port}")

    def wait_stable(self, timeout: float = 60.0) -> RedisServer:
        """Until the sentinels agree on a running master, each sees the other sentinels and
        the replica, and the replica is in sync; returns the master."""
        def stable() -> bool:
            master = self.master()
            if not master.running:
                return False
            with master.client(socket_timeout=2, retry=_no_retry()) as c:
                if _s(c.execute_command("ROLE")[0]) != "master":
                    return False
            for s in self.sentinels:
                with s.client() as c:
                    info = c.execute_command("SENTINEL", "MASTER", self.master_name)
                    fields = dict(zip(info[::2], info[1::2], strict=False)) if isinstance(
                        info, list) else info
                    if int(fields["num-other-sentinels"]) < len(self.sentinels) - 1:
                        return False
                    if int(fields["num-slaves"]) < 1 or "s_down" in fields["flags"]:
                        return False
            self._wait_replica(next(x for x in self.servers if x is not master))
            return True

        _wait(stable, "sentinel set stable", timeout)
        return self.master()

    def kill_master(self, timeout: float = 60.0) -> RedisServer:
        """SIGKILL the master; wait until the sentinels promoted the replica (returned)."""
        old = self.master()
        new = next(s for s in self.servers if s is not old)
        old.kill()

        def promoted() -> bool:
            if {s.master_addr() for s in self.sentinels} != {(new.host, new.port)}:
                return False
            with new.client(socket_timeout=2, retry=_no_retry()) as c:
                return _s(c.execute_command("ROLE")[0]) == "master"

        _wait(promoted, f"sentinels promoted {new.port} after {old.port} died", timeout)
        return new

    def failover(self, timeout: float = 60.0) -> RedisServer:
        """``SENTINEL FAILOVER`` (no agreement needed): the replica becomes master."""
        old = self.master()
        new = next(s for s in self.servers if s is not old)
        with self.sentinels[0].client() as c:
            c.execute_command("SENTINEL", "FAILOVER", self.master_name)

        def switched() -> bool:
            return {s.master_addr() for s in self.sentinels} == {(new.host, new.port)}

        _wait(switched, "SENTINEL FAILOVER switched the master", timeout)
        return self.wait_stable(timeout)

    def restart_dead(self, timeout: float = 60.0) -> RedisServer:
        """Start a killed server again (the sentinels make it a replica of the current
        master) and wait until the set is stable; returns the master."""
        for server in self.servers:
            if not server.running:
                server.start()
        return self.wait_stable(timeout)

    def master_client(self, **kwargs: Any) -> redis.Redis:
        """A redis-py client on the master through the sentinels (``Sentinel.master_for``)."""
        from redis.sentinel import Sentinel

        sentinel = Sentinel([(s.host, s.port) for s in self.sentinels],
                            sentinel_kwargs={"password": self.sentinel_password},
                            socket_timeout=2)
        return sentinel.master_for(self.master_name, **kwargs)

    def close(self) -> None:
        for s in self.sentinels:
            s.close()
        for server in self.servers:
            server.close()

    def __repr__(self) -> str:
        return f"<RedisSentinelSet {self.master_name} sentinels={len(self.sentinels)}>"


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _field(info: str, name: str) -> str:
    for line in info.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise ServiceError(f"{name} missing from CLUSTER INFO")


CLUSTER_FIXTURES = frozenset({"redis_cluster", "redis_sentinel"})


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterNodes]:
    """A Redis Cluster (three masters, three replicas) for the session.  Tests that fail
    over or kill nodes call ``restart_dead()`` afterwards; keys are not flushed between
    tests (use unique names)."""
    cluster = start_or_report(RedisClusterNodes)
    with _session_service("redis_cluster", cluster):  # type: ignore[type-var]
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinelSet]:
    """A master, a replica and three sentinels (``mymaster``, quorum 2, sentinels protected
    by :data:`SENTINEL_PASSWORD`) for the session."""
    sentinels = start_or_report(lambda: RedisSentinelSet(sentinel_password=SENTINEL_PASSWORD))
    with _session_service("redis_sentinel", sentinels):  # type: ignore[type-var]
        yield sentinels


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test using ``redis_cluster`` or ``redis_sentinel`` ``redis``."""
    for item in items:
        if CLUSTER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)
