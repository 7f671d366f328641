"""Result backends, resolved lazily from the URL scheme (``create_backend``).

==================  =======================================  =========================
scheme              module                                   extra
==================  =======================================  =========================
``redis://``,       :mod:`machinery_compat.backends.redis`   ``machinery-compat[redis]``
``rediss://``,
``redis+socket://``
``memory://``,      :mod:`machinery_compat.backends.memory`  (none: in-process, for tests)
``memory://<name>``,
``eager``,
``eager://<name>``
``amqp://``,        :mod:`machinery_compat.backends.amqp`    ``machinery-compat[amqp]``
``amqps://``
``https://``,       :mod:`machinery_compat.backends.dynamodb` ``machinery-compat[aws]``
``http://``
``memcache://``     :mod:`machinery_compat.backends.memcache` ``machinery-compat[memcache]``
``mongodb://``,     :mod:`machinery_compat.backends.mongodb` ``machinery-compat[mongodb]``
``mongodb+srv://``
==================  =======================================  =========================

DynamoDB: Go v1's factory picks it for URLs starting with ``https://dynamodb``; here any
``https://`` or ``http://`` URL does.  The URL only selects the backend (as in Go): the
endpoint, region and table names come from the ``dynamodb`` config section.

Memcache: ``memcache://host1:port1[,host2:port2,...]`` as Go's (keys spread over the servers
the way Go's gomemcache spreads them).

MongoDB: ``mongodb://`` and ``mongodb+srv://`` URLs as Go's driver takes them; the database is
``mongodb.database`` (code only, default ``machinery``), not the URL's path.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..brokers import not_configured_hint, scheme_of
from ..exceptions import ConfigError
from .base import Backend

if TYPE_CHECKING:
    from ..config import Config

logger = logging.getLogger(__name__)

_NOT_YET: dict[str, str] = {}


def create_backend(config: Config) -> Backend:
    """The result backend for ``config.result_backend``."""
    from ..config import DEFAULT_RESULT_BACKEND

    url = config.result_backend
    scheme = scheme_of(url)
    if scheme in ("redis", "rediss", "redis+socket"):
        from .redis import RedisBackend

        return RedisBackend.from_config(config)
    if scheme in ("amqp", "amqps"):
        from .amqp import AMQPBackend

        if url == DEFAULT_RESULT_BACKEND:  # most likely not what the user runs: say so
            logger.warning("result_backend: %s",
                           not_configured_hint("result_backend", url, DEFAULT_RESULT_BACKEND)[2:])
        return AMQPBackend.from_config(config)
    if scheme in ("https", "http"):
        from .dynamodb import DynamoDBBackend

        return DynamoDBBackend.from_config(config)
    if scheme in ("mongodb", "mongodb+srv"):
        from .mongodb import MongoDBBackend

        return MongoDBBackend.from_config(config)
    if scheme == "memcache":
        from .memcache import MemcacheBackend

        return MemcacheBackend.from_config(config)
    if scheme in ("memory", "eager"):
        from .memory import MemoryBackend

        return MemoryBackend(url, config.results_expire_in)
    hint = not_configured_hint("result_backend", url, DEFAULT_RESULT_BACKEND)
    if scheme in _NOT_YET:
        raise ConfigError(f"the {_NOT_YET[scheme]} result backend is not implemented yet "
                          f"({scheme}://){hint}")
    raise ConfigError(f"Factory failed with result backend: {scheme}://… (unknown scheme){hint}")


__all__ = ["Backend", "create_backend"]
