"""The interop suite runs on the session's servers, the ones tests/ use (issue #8).

``python -m pytest tests interop/tests`` must start ONE redis-server, ONE RabbitMQ node and
ONE moto server (``tests.services``' session fixtures, registered for every tree by the root
``conftest.py``): interop keeps its own Redis DBs, vhost and queue names on them.  A second
definition of a session fixture (e.g. one imported into a conftest) would start a second
server, and ``session_starts`` would count it.
"""

from __future__ import annotations

import pytest

from interop.tests.conftest import INTEROP_DBS, INTEROP_VHOST, InteropAWS, InteropRabbit
from interop.tests.memcache_tap import MemcacheRecorder
from interop.tests.mongodb_tap import MongoRecorder
from tests import services
from tests.services import MotoServer, RabbitMQServer, RedisServer, redis_svc
from tests.services.ferretdb_svc import FerretDBServer
from tests.services.memcached_svc import MemcachedNodes
from tests.services.pstest_svc import PubSubEmulator

pytestmark = [pytest.mark.interop]


def test_one_server_of_each_kind_per_session(
    redis_server: RedisServer, rabbitmq_server: RabbitMQServer, moto_server: MotoServer,
    interop_redis: RedisServer, interop_rabbitmq: InteropRabbit, interop_aws: InteropAWS,
    memcached_nodes: MemcachedNodes, interop_memcache: MemcacheRecorder,
    ferretdb_server: FerretDBServer, interop_mongodb: MongoRecorder,
    pubsub_emulator: PubSubEmulator,
) -> None:
    # interop's fixtures are derived from the session fixtures, not servers of their own
    assert interop_redis is redis_server
    assert interop_rabbitmq.server is rabbitmq_server
    assert interop_aws.server is moto_server
    assert interop_memcache.nodes == [n.address for n in memcached_nodes.nodes]
    assert interop_mongodb.address == f"{ferretdb_server.host}:{ferretdb_server.port}"
    # ... and each session fixture started its server once in this session, whichever trees
    # (tests/, interop/tests/) used it before
    # (services only tests/ use, e.g. azurite, may have started too: once each as well)
    mine = {"redis_server": redis_server, "rabbitmq_server": rabbitmq_server,
            "moto_server": moto_server, "memcached_nodes": memcached_nodes,
            "ferretdb_server": ferretdb_server, "pubsub_emulator": pubsub_emulator}
    assert {k: services.session_servers.get(k) for k in mine} == mine
    assert set(services.session_starts) == set(services.session_servers)
    assert set(services.session_starts.values()) == {1}, services.session_starts
    # the same processes: one node, one pid, one port each
    for server in (redis_server, rabbitmq_server, moto_server, *memcached_nodes.nodes,
                   ferretdb_server, pubsub_emulator):
        assert server.running and server.pid is not None
    assert interop_rabbitmq.url == rabbitmq_server.url_for(INTEROP_VHOST)
    assert f":{rabbitmq_server.port}/" in interop_rabbitmq.url
    assert interop_aws.endpoint == moto_server.endpoint_url


def test_interop_keeps_to_its_own_dbs_and_vhost(
    redis_server: RedisServer, new_db: object, interop_rabbitmq: InteropRabbit,
) -> None:
    assert callable(new_db)
    dbs = {int(str(new_db()).rsplit("/", 1)[1]) for _ in range(3)}
    assert dbs <= set(INTEROP_DBS)
    assert min(INTEROP_DBS) >= services.SHARED_REDIS_DBS  # tests/ flush 0..15 only
    with redis_server.client() as client:
        assert int(client.config_get("databases")["databases"]) >= max(INTEROP_DBS) + 1
    # what tests/ flush before each test leaves interop's DBs alone
    probe = max(INTEROP_DBS)
    with redis_server.client(db=probe) as client:
        client.set("interop:probe", "1")
        with redis_server.client() as shared:
            shared.eval(redis_svc._FLUSH_SHARED_DBS, 0)
        assert client.get("interop:probe") == b"1"
        client.delete("interop:probe")
    # interop's vhost is traced and is not one tests/' fresh-vhost pool would delete
    assert interop_rabbitmq.vhost == INTEROP_VHOST
    traced = interop_rabbitmq.server.ctl("list_vhosts", "name", "tracing")
    assert any(line.split() == [INTEROP_VHOST, "true"] for line in traced.splitlines()), traced
    for _ in range(30):  # more than a pool refill (25), which deletes the vhosts handed out
        interop_rabbitmq.server.new_vhost()
    assert INTEROP_VHOST in interop_rabbitmq.server.ctl("list_vhosts", "name").split()
