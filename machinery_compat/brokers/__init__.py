"""Brokers, resolved lazily from the URL scheme (``create_broker``).

==================  ======================================  =========================
scheme              module                                  extra
==================  ======================================  =========================
``redis://``,       :mod:`machinery_compat.brokers.redis`   ``machinery-compat[redis]``
``rediss://``,
``redis+socket://``
``memory://``,      :mod:`machinery_compat.brokers.memory`  (none: in-process, for tests)
``memory://<name>``
``eager``,          :mod:`machinery_compat.brokers.eager`   (none: runs tasks in the
``eager://<name>``                                          producer's call, for tests)
``amqp://``,        :mod:`machinery_compat.brokers.amqp`    ``machinery-compat[amqp]``
``amqps://``
``https://``,       :mod:`machinery_compat.brokers.sqs`     ``machinery-compat[aws]``
``http://``         (AWS SQS: the URL is the queue URL
                    prefix, ``https://sqs.<region>.
                    amazonaws.com/<account id>``)
``gcppubsub://``    :mod:`machinery_compat.brokers.pubsub`  ``machinery-compat[pubsub]``
                    (``gcppubsub://<project>/
                    <subscription>``, as Go)
``azure://``,       :mod:`machinery_compat.brokers.azure`   ``machinery-compat[azure]``
``azures://``,      (the sublime-security fork's Azure
URL containing      Storage Queues broker; ``azure://
``queue.core.       <account>:<key>@<host>:<port>`` for
windows``           emulators)
==================  ======================================  =========================
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..exceptions import ConfigError
from .base import Broker, Delivery

if TYPE_CHECKING:
    from ..app import Machinery
    from ..config import Config

logger = logging.getLogger(__name__)

_NOT_YET: dict[str, str] = {}


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else url.split(":", 1)[0].lower()


def not_configured_hint(key: str, url: str, default: str) -> str:
    """What to add to a "not implemented"/"unknown" error about ``config.<key>``: when the
    value is empty or Machinery's built-in default, say so and how to set it."""
    how = (f"set it with `{key}: redis://localhost:6379/0` in the YAML file, the "
           f"{key.upper()} environment variable, or Machinery({key}=...)")
    if not url:
        return f"; no {key} is configured: {how}"
    if url == default:
        from ..config import mask_url

        return (f"; {mask_url(url)} is Machinery's default {key}, used because the "
                f"configuration does not set one: {how}")
    return ""


def create_broker(config: Config, *, app: Machinery | None = None) -> Broker:
    """The broker for ``config.broker`` (``app``: the app it serves; the eager broker needs it)."""
    from ..config import DEFAULT_BROKER

    url = config.broker
    scheme = scheme_of(url)
    if scheme in ("redis", "rediss", "redis+socket"):
        from .redis import RedisBroker

        return RedisBroker.from_config(config)
    if scheme in ("amqp", "amqps"):
        from .amqp import AMQPBroker

        if url == DEFAULT_BROKER:  # most likely not what the user runs: say where it came from
            logger.warning("broker: %s", not_configured_hint("broker", url, DEFAULT_BROKER)[2:])
        return AMQPBroker.from_config(config)
    if scheme in ("azure", "azures") or "queue.core.windows" in url:
        # (the sublime-security fork's rule: a URL containing queue.core.windows, before SQS)
        from .azure import AzureBroker

        return AzureBroker.from_config(config)
    if scheme in ("https", "http"):
        from .sqs import SQSBroker

        return SQSBroker.from_config(config)
    if scheme == "gcppubsub":
        from .pubsub import PubSubBroker

        return PubSubBroker.from_config(config)
    if scheme == "memory":
        from .memory import MemoryBroker

        return MemoryBroker(url, config.default_queue)
    if scheme == "eager":
        from .eager import EagerBroker

        if app is None:
            raise ConfigError("the eager broker runs tasks through an app's worker: "
                              "use Machinery(broker='eager://') (worker is not assigned in eager-mode)")
        return EagerBroker(app, url, config.default_queue)
    hint = not_configured_hint("broker", url, DEFAULT_BROKER)
    if scheme in _NOT_YET:
        raise ConfigError(f"the {_NOT_YET[scheme]} broker is not implemented yet ({scheme}://){hint}")
    raise ConfigError(f"Factory failed with broker URL: {scheme}://… (unknown scheme){hint}")


__all__ = ["Broker", "Delivery", "create_broker", "not_configured_hint", "scheme_of"]
