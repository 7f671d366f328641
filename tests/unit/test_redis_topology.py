"""machinery_compat._redis_topology: which client Go's settings call for (pure), and the
Sentinel client it builds (no connection made); the live clients are tested in
tests/integration/test_redis_topologies.py."""

from __future__ import annotations

import pytest

from machinery_compat._redis_topology import Topology, build_client, plan
from machinery_compat.config.model import RedisConfig
from machinery_compat.exceptions import ConfigError

H1, H2 = ("10.0.0.1", 7000), ("10.0.0.2", 7001)


@pytest.mark.parametrize(("url", "cfg", "want"), [
    ("redis://10.0.0.1:7000/3", RedisConfig(), Topology("single", (H1,))),
    # several addresses alone: a cluster client (go-redis NewUniversalClient)
    ("redis://10.0.0.1:7000,10.0.0.2:7001", RedisConfig(), Topology("cluster", (H1, H2))),
    # cluster_enabled: a cluster client even on one seed address
    ("redis://10.0.0.1:7000", RedisConfig(cluster_enabled=True), Topology("cluster", (H1,))),
    # master_name: the addresses are sentinels, even just one
    ("redis://10.0.0.1:7000", RedisConfig(master_name="mymaster"),
     Topology("sentinel", (H1,), "mymaster")),
    ("redis://pw@10.0.0.1:7000,10.0.0.2:7001/2", RedisConfig(master_name="m"),
     Topology("sentinel", (H1, H2), "m")),
    # Machinery checks cluster_enabled first: it wins over master_name
    ("redis://10.0.0.1:7000,10.0.0.2:7001", RedisConfig(cluster_enabled=True, master_name="m"),
     Topology("cluster", (H1, H2))),
    ("redis+socket:///tmp/r.sock", None, Topology("single", ())),
])
def test_plan_follows_gos_order(url: str, cfg: RedisConfig | None, want: Topology) -> None:
    assert plan(url, cfg) == want


@pytest.mark.parametrize(("url", "cfg", "match"), [
    ("redis://10.0.0.1:7000,10.0.0.2:7001/1", RedisConfig(), "DB 0 only"),
    ("redis://10.0.0.1:7000/2", RedisConfig(cluster_enabled=True), "DB 0 only"),
    ("redis+socket:///tmp/r.sock", RedisConfig(master_name="m"), "cannot name"),
])
def test_plan_refuses_what_cannot_work(url: str, cfg: RedisConfig, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        plan(url, cfg)


def test_build_client_leaves_a_single_address_to_the_plain_path() -> None:
    with pytest.raises(ConfigError, match="plain client"):
        build_client("redis://127.0.0.1:1/0", None)


def test_sentinel_client_is_built_without_connecting() -> None:
    client = build_client("redis://u:pw@10.0.0.1:26379,10.0.0.2:26379/4",
                          RedisConfig(master_name="mymaster", sentinel_password="s"),
                          socket_timeout=1)
    pool = client.connection_pool
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 4
    assert pool.connection_kwargs["password"] == "pw"
    assert pool.connection_kwargs["username"] == "u"
    sentinel = pool.sentinel_manager
    assert [(s.connection_pool.connection_kwargs["host"],
             s.connection_pool.connection_kwargs["port"]) for s in sentinel.sentinels] == [
        ("10.0.0.1", 26379), ("10.0.0.2", 26379)]
    assert sentinel.sentinels[0].connection_pool.connection_kwargs["password"] == "s"
    client.close()


def test_client_for_a_cluster_nobody_answers_is_a_connection_error() -> None:
    """A cluster configuration builds a redis-py RedisCluster, which reads the slot map at
    once: no node answering is a clear connection error (the tests on a real cluster are in
    tests/integration/test_redis_cluster.py)."""
    import redis

    from machinery_compat._redis import client_for

    with pytest.raises(redis.ConnectionError, match=r"Redis Cluster at redis://127\.0\.0\.1:1"):
        client_for("redis://127.0.0.1:1", redis=RedisConfig(cluster_enabled=True))


def test_wait_replicas_appends_a_wait_to_every_batch() -> None:
    import redis

    from machinery_compat._redis import FastPath

    client = redis.Redis()  # never connects here
    assert FastPath(client).wait is None
    assert FastPath(client, wait_replicas=1, wait_timeout_ms=250).wait == ("WAIT", 1, 250)
    assert FastPath(client, wait_replicas=2, wait_timeout_ms=0).wait == ("WAIT", 2, 1000)
