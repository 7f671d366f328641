"""Brokers, resolved lazily from the URL scheme (``create_broker``).

==================  ======================================  =========================
scheme              module                                  extra
==================  ======================================  =========================
``redis://``,       :mod:`machinery_compat.brokers.redis`   ``machinery-compat[redis]``
``rediss://``,
``redis+socket://``
``memory://``,      :mod:`machinery_compat.brokers.memory`  (none: in-process, for tests)
``memory://<name>``
==================  ======================================  =========================

AMQP, SQS and GCP Pub/Sub brokers are not implemented yet (see README).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..exceptions import ConfigError
from .base import Broker, Delivery

if TYPE_CHECKING:
    from ..config import Config

_NOT_YET = {
    "amqp": "AMQP", "amqps": "AMQP", "https": "SQS", "http": "SQS", "gcppubsub": "GCP Pub/Sub",
}


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else url.split(":", 1)[0].lower()


def create_broker(config: Config) -> Broker:
    """The broker for ``config.broker``."""
    url = config.broker
    scheme = scheme_of(url)
    if scheme in ("redis", "rediss", "redis+socket"):
        from .redis import RedisBroker

        redis_cfg = config.redis
        return RedisBroker(
            url,
            config.default_queue,
            delayed_tasks_key=redis_cfg.delayed_tasks_key if redis_cfg else "",
        )
    if scheme == "memory":
        from .memory import MemoryBroker

        return MemoryBroker(url, config.default_queue)
    if scheme in _NOT_YET:
        raise ConfigError(f"the {_NOT_YET[scheme]} broker is not implemented yet ({scheme}://)")
    raise ConfigError(f"Factory failed with broker URL: {scheme}://… (unknown scheme)")


__all__ = ["Broker", "Delivery", "create_broker", "scheme_of"]
