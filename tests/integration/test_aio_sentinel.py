"""The asyncio API on Redis Sentinel (``redis.master_name``): the session's sentinel set (a
master, a replica, three password-protected sentinels).

* sends from one event loop reach the master the sentinels name, before and after a
  ``SENTINEL FAILOVER`` (the loop's pool asks the sentinels again; with ``wait_replicas: 1``
  every write waited for the replica, so nothing sent before the switch is lost);
* what stays refused: Redis Cluster, Sentinel over TLS.

The behaviour suite's ``both_apis`` tests run through app.aio on the ``redis-sentinel`` kind
too (tests/behaviour/_aio_driver.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from machinery_compat import Machinery
from machinery_compat.config import Config, RedisConfig
from machinery_compat.exceptions import ConfigError, PublishError
from machinery_compat.protocol import PENDING, Signature
from tests.services.redis_cluster_svc import MASTER_NAME, SENTINEL_PASSWORD

QUEUE = "aio_sentinel_tasks"


def _settings(**kw: Any) -> Config:
    return Config(redis=RedisConfig(master_name=MASTER_NAME, sentinel_password=SENTINEL_PASSWORD,
                                    **kw))


def test_sends_follow_the_master_across_a_failover(redis_sentinel: Any) -> None:
    with redis_sentinel.wait_stable().client() as c:
        c.flushdb()
    url = redis_sentinel.url()
    app = Machinery(broker=url, result_backend=url, default_queue=QUEUE,
                    config=_settings(wait_replicas=1))

    async def main() -> tuple[list[str], Any]:
        async with app.aio:
            ids = [(await app.aio.send_task("add", args=[i])).id for i in range(3)]
            new_master = await asyncio.to_thread(redis_sentinel.failover)
            for i in range(3, 6):
                # a write on a connection the switch closed may fail with PublishError, as
                # the sync API's does: the caller sends again (seen passing without it too)
                for attempt in range(2):
                    try:
                        ids.append((await app.aio.send_task("add", args=[i])).id)
                        break
                    except PublishError:
                        if attempt:
                            raise
            states = [await app.aio.AsyncResult(t).state() for t in ids]
            assert states == [PENDING] * 6
            return ids, new_master

    try:
        ids, new_master = asyncio.run(main())
    finally:
        app.close()
    with new_master.client() as c:
        queued = [Signature.from_json(b).uuid for b in c.lrange(QUEUE, 0, -1)]
        assert all(c.get(t) for t in ids)
    assert sorted(queued) == sorted(ids)


def test_cluster_and_sentinel_over_tls_are_refused() -> None:
    cluster = Machinery(broker="redis://127.0.0.1:1,127.0.0.1:2",
                        result_backend="redis://127.0.0.1:1,127.0.0.1:2")
    with pytest.raises(ConfigError, match="does not support Redis Cluster"):
        asyncio.run(cluster.aio.send_task("add", args=[1]))
    tls = Machinery(broker="rediss://127.0.0.1:1", result_backend="rediss://127.0.0.1:1",
                    config=_settings())
    with pytest.raises(ConfigError, match="Sentinel over TLS"):
        asyncio.run(tls.aio.send_task("add", args=[1]))
