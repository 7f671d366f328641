"""The Redis Cluster and Sentinel test services themselves (tests/services/redis_cluster_svc.py):
the cluster forms with every slot served, a key lives on its slot's master, a manual failover
promotes the replica; the sentinels name the master and promote the replica when it dies.
Also the clients machinery_compat._redis_topology builds, on both."""

from __future__ import annotations

import itertools
import uuid

import pytest
import redis

from machinery_compat._redis_topology import build_client
from machinery_compat.config.model import RedisConfig
from tests.services.redis_cluster_svc import SENTINEL_PASSWORD, RedisClusterNodes, RedisSentinelSet

pytestmark = pytest.mark.slow


def test_cluster_forms_with_every_slot_served(redis_cluster: RedisClusterNodes) -> None:
    table = redis_cluster.topology()
    masters = [r for r in table if r["role"] == "master" and r["slots"]]
    assert len(masters) == 3 and len(table) == 6
    covered = sorted(s for r in masters for s in r["slots"])
    assert covered[0][0] == 0 and covered[-1][1] == 16383
    assert all(b + 1 == c for (_, b), (c, _) in itertools.pairwise(covered))
    for master in masters:  # one replica each
        assert [r["master_id"] for r in table].count(master["id"]) == 1


def test_key_lands_on_its_slots_master(redis_cluster: RedisClusterNodes) -> None:
    key = f"topo-{uuid.uuid4()}"
    with redis_cluster.client() as rc:
        rc.set(key, b"v")
    owner = redis_cluster.master_for(key)
    with owner.client() as c:
        assert c.get(key) == b"v"
    other = next(m for m in redis_cluster.masters() if m is not owner)
    with other.client() as c, pytest.raises(redis.exceptions.MovedError) as moved:
        c.get(key)
    assert str(moved.value).endswith(f":{owner.port}")  # "MOVED <slot> <owner>"


def test_cluster_failover_promotes_the_replica(redis_cluster: RedisClusterNodes) -> None:
    key = f"topo-{uuid.uuid4()}"
    with redis_cluster.client() as rc:
        rc.set(key, b"before")
        old = redis_cluster.master_for(key)
        new = redis_cluster.failover(old)
        assert redis_cluster.master_for(key) is new is not old
        assert rc.get(key) == b"before"  # redis-py follows MOVED to the new master
        rc.set(key, b"after")
    with new.client() as c:
        assert c.get(key) == b"after"


def test_sentinel_names_the_master_and_fails_over(redis_sentinel: RedisSentinelSet) -> None:
    master = redis_sentinel.master()
    with master.client() as c:
        assert c.execute_command("ROLE")[0] == b"master"
    with redis_sentinel.sentinels[0].client() as s:  # the sentinels want their password
        assert s.ping()
    key = f"topo-{uuid.uuid4()}"
    with redis_sentinel.master_client() as mc:
        mc.set(key, b"before")
        assert mc.execute_command("WAIT", 1, 5000) == 1  # the replica has it
    try:
        new = redis_sentinel.kill_master()
        assert new is not master
        with redis_sentinel.master_client() as mc:
            assert mc.get(key) == b"before"  # replicated before the kill
            mc.set(key, b"after")
    finally:
        redis_sentinel.restart_dead()
    assert master.running  # back, as a replica of the new master
    with master.client() as c:
        assert c.execute_command("ROLE")[0] == b"slave"


def test_topology_cluster_client_live(redis_cluster: RedisClusterNodes) -> None:
    client = build_client(redis_cluster.url(1), RedisConfig(cluster_enabled=True))
    try:
        keys = [f"topo-{uuid.uuid4()}" for _ in range(12)]
        for k in keys:
            client.set(k, k)
        assert client.mget_nonatomic(keys) == [k.encode() for k in keys]
        # the keys spread over the masters, and each lives where the cluster says
        owners = {redis_cluster.master_for(k).port for k in keys}
        assert len(owners) > 1
    finally:
        client.close()


def test_topology_sentinel_client_live(redis_sentinel: RedisSentinelSet) -> None:
    cfg = RedisConfig(master_name=redis_sentinel.master_name,
                      sentinel_password=SENTINEL_PASSWORD)
    client = build_client(redis_sentinel.url(), cfg, socket_timeout=2)
    try:
        key = f"topo-{uuid.uuid4()}"
        client.set(key, b"v")
        with redis_sentinel.master().client() as direct:
            assert direct.get(key) == b"v"
    finally:
        client.close()
    wrong = build_client(redis_sentinel.url(), RedisConfig(master_name="mymaster"),
                         socket_timeout=2)
    with pytest.raises(redis.exceptions.RedisError):
        wrong.ping()
    wrong.close()
