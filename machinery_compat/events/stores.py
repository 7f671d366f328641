"""Which store an app's events go to (the same choice for writers and readers).

1. a **Redis** broker, else a Redis result backend: the stream of :mod:`.redis_store`, in
   that database;
2. else an **AMQP** broker: the fanout exchange of :mod:`.amqp_store`;
3. else none: workers emit nothing (logged once), ``app.events()`` says so.
"""

from __future__ import annotations

from typing import Any, Protocol

from .settings import config_for


class EventStore(Protocol):
    kind: str

    def write(self, batch: bytes, count: int) -> None: ...

    def history(self, since: float | None = None, limit: int | None = None) -> Any: ...

    def follow(self, since: float | None, poll: float = 1.0) -> Any: ...

    def close(self) -> None: ...


def _names(obj: Any) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__}


def store_for(app: Any, *, create: bool = True) -> EventStore | None:
    """``app``'s event store (``None``: this stack has none).  ``create=False``: only from
    the broker/backend already made (a started worker has made both)."""
    max_len = config_for(app).max_len
    broker = app.broker if create else getattr(app, "_broker", None)
    if broker is not None and "RedisBroker" in _names(broker):
        from .redis_store import RedisEventStore

        return RedisEventStore(broker.client, max_len)
    backend = app.backend if create else getattr(app, "_backend", None)
    if backend is not None and "RedisBackend" in _names(backend):
        from .redis_store import RedisEventStore

        return RedisEventStore(backend.client, max_len)
    if broker is not None and "AMQPBroker" in _names(broker):
        from .amqp_store import AMQPEventStore

        return AMQPEventStore(broker.endpoint, max_len)
    return None


def describe_none(app: Any) -> str:
    return (f"no event store for broker {type(getattr(app, '_broker', None)).__name__} and "
            f"backend {type(getattr(app, '_backend', None)).__name__}: events go to a Redis "
            "broker or backend, or an AMQP broker")
