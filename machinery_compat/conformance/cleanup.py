"""Removing what a conformance run created, and nothing else.

Every name a run makes carries its random prefix (``mcconf-<hex>``):

* Redis (broker, result backend, the Go probe's counters): the keys whose name contains the
  prefix (queues ``<prefix>.go|py|mix``, task states ``task_<prefix>-NNNN``, group metas,
  the ``fail_n_times:key_<prefix>-NNNN`` counters), found with ``SCAN MATCH``, and the
  run's members of Machinery's shared ``delayed_tasks`` sorted set (normally none are left);
* RabbitMQ: the three queues, the run's own exchange ``<prefix>.exchange``, and on an AMQP
  result backend the queue of every task and group UUID the run made.  Machinery's delay
  queues (``delay.<ms>.<prefix>.exchange.<queue>``) cannot be listed over AMQP: they are
  declared with ``x-expires`` = 2 x the delay, so the run waits until they have expired.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger(__name__)


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower()


def redis_urls(urls: Iterable[str | None]) -> list[str]:
    seen: list[str] = []
    for u in urls:
        if u and _scheme(u) in ("redis", "rediss") and u not in seen:
            seen.append(u)
    return seen


def clean_redis(url: str, prefix: str) -> int:
    """Delete the keys holding ``prefix`` and its ``delayed_tasks`` members; how many."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        removed = 0
        keys = list(client.scan_iter(match=f"*{prefix}*", count=500))
        if keys:
            removed += int(client.delete(*keys))
        members = [m for m, _ in client.zscan_iter("delayed_tasks", match=f"*{prefix}*")]
        if members:
            removed += int(client.zrem("delayed_tasks", *members))
        return removed
    finally:
        client.close()


def redis_leftovers(url: str, prefix: str) -> list[str]:
    """What still holds ``prefix`` (keys, ``delayed_tasks`` members): should be nothing."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = [k.decode() for k in client.scan_iter(match=f"*{prefix}*", count=500)]
        keys += [f"delayed_tasks member {m[:60]!r}"
                 for m, _ in client.zscan_iter("delayed_tasks", match=f"*{prefix}*")]
        return keys
    finally:
        client.close()


def clean_amqp(url: str, *, queues: Iterable[str], exchange: str, wait_until: float) -> int:
    """Delete ``queues`` and ``exchange`` (missing ones are fine); first wait until
    ``wait_until`` (``time.time()``) for the run's delay queues to expire."""
    import kombu

    delay = wait_until - time.time()
    if delay > 0:
        time.sleep(delay)
    removed = 0
    with kombu.Connection(url, connect_timeout=10) as conn:
        channel: Any = conn.channel()
        try:
            for q in queues:
                try:
                    channel.queue_delete(q)
                    removed += 1
                except Exception as e:  # the channel is closed by the error: a new one
                    logger.warning("conformance cleanup: cannot delete queue %s: %s", q, e)
                    channel = conn.channel()
                    continue
            try:
                channel.exchange_delete(exchange)
            except Exception as e:
                logger.warning("conformance cleanup: cannot delete exchange %s: %s", exchange, e)
        finally:
            try:
                channel.close()
            except Exception:
                logger.debug("conformance cleanup: channel close failed", exc_info=True)
    return removed
