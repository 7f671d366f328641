"""Task lifecycle events, stats and Prometheus metrics (see ``docs/events.md``).

.. code-block:: python

    for event in app.events(timeout=30):        # a blocking tail; ends after 30 s of quiet
        print(event.type, event.name, event.uuid, event.runtime)

    app.stats()["tasks"]["add"]["succeeded"]    # counts, depths, runtime percentiles

What is seen of whom: **events come from Python workers and producers only** (Go workers and
producers send none).  Queue depths and delayed counts are read from the broker, and task
states from the result backend, so Go's traffic shows there.

Modules: :mod:`.model` (the event), :mod:`.settings` (what is emitted, how much is kept),
:mod:`.emitter` (signal receivers, the buffer and its flusher thread), :mod:`.stores`,
:mod:`.redis_store` (a capped stream), :mod:`.amqp_store` (a fanout exchange),
:mod:`.stats`, :mod:`.metrics` (``worker --metrics-port``).  No client library is imported
until it is used.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from ..exceptions import ConfigError
from .model import TYPES, Event
from .settings import EventsConfig
from .stats import stats
from .stores import describe_none, store_for

__all__ = ["TYPES", "Event", "EventsConfig", "events", "history", "stats"]


def history(app: Any, *, since: float | None = None, limit: int | None = None) -> list[Event]:
    """The events the store keeps, in the order they were written (each process's in the
    order it emitted them), from ``since`` (Unix seconds) on; the newest ``limit``.
    :class:`ConfigError` when the stack keeps none."""
    store = store_for(app)
    if store is None:
        raise ConfigError(describe_none(app))
    try:
        return list(store.history(since, limit))
    finally:
        store.close()


def events(app: Any, *, since: float | None = None, timeout: float | None = None,
           poll: float = 1.0) -> Iterator[Event]:
    """Events as they are written: first those kept from ``since`` (Unix seconds) on, when
    given, then each new one; the iterator ends after ``timeout`` seconds without an event
    (``None``: never; ``0``: once the kept ones are out and nothing new is waiting).  On
    AMQP the tail is a queue of its own, bound when iteration starts.  :class:`ConfigError`
    when the stack keeps no events."""
    store = store_for(app)
    if store is None:
        raise ConfigError(describe_none(app))
    wait = poll if timeout is None else max(min(poll, timeout), 0.001)
    quiet_since = time.monotonic()
    tail = store.follow(since, wait)
    try:
        for event in tail:
            if event is not None:
                quiet_since = time.monotonic()
                yield event
            elif timeout is not None and time.monotonic() - quiet_since >= timeout:
                return
    finally:
        tail.close()
        store.close()
