"""Operator tools behind ``machinery-compat inspect | purge | dead | stuck | status``.

One module per service (:mod:`.redis`, :mod:`.amqp`, :mod:`.sqs`, :mod:`.pubsub`: the broker side, behind
the small interface of :mod:`.base`), :mod:`.signatures` (the opt-in store of sent
signatures that ``stuck --resend`` re-sends), :mod:`.heartbeat` (what Python workers
publish so that ``status`` lists them) and :mod:`.render` (tables and JSON).  See
``docs/operations.md``.
"""

from __future__ import annotations

from typing import Any

from .base import BrokerOps, Message, QueueDepth, Unsupported

__all__ = ["BrokerOps", "Message", "QueueDepth", "Unsupported", "broker_ops"]


def broker_ops(broker: Any) -> BrokerOps:
    """The operator commands for ``broker`` (an app's ``app.broker``)."""
    kinds = {c.__name__ for c in type(broker).__mro__}  # no import of unused clients
    if "RedisBroker" in kinds:
        from .redis import RedisOps

        return RedisOps(broker)
    if "AMQPBroker" in kinds:
        from .amqp import AMQPOps

        return AMQPOps(broker)
    if "SQSBroker" in kinds:
        from .sqs import SQSOps

        return SQSOps(broker)
    if "PubSubBroker" in kinds:
        from .pubsub import PubSubOps

        return PubSubOps(broker)
    raise Unsupported(f"operator commands work on the Redis, AMQP, SQS and Pub/Sub brokers, "
                      f"not on {type(broker).__name__}")
