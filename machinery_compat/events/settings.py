"""Event settings: :class:`EventsConfig` (``app.events_config``) and its environment
variables.

======================================  ==========  =============================================
environment variable                    default     meaning
======================================  ==========  =============================================
``MACHINERY_COMPAT_WORKER_EVENTS``      ``1``       Python workers emit task and worker events
``MACHINERY_COMPAT_SEND_EVENTS``        ``0``       producers emit ``task-sent`` for every
                                                    message they publish (Celery's
                                                    ``task_send_sent_event``)
``MACHINERY_COMPAT_EVENTS_MAX_LEN``     ``10000``   events (Redis) or batches (AMQP) kept
======================================  ==========  =============================================

Booleans: ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off`` (any case); anything
else is a :class:`~machinery_compat.ConfigError`.  ``app.events_config`` set in code wins
over the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..exceptions import ConfigError

ENV_WORKER: Final = "MACHINERY_COMPAT_WORKER_EVENTS"
ENV_SEND: Final = "MACHINERY_COMPAT_SEND_EVENTS"
ENV_MAX_LEN: Final = "MACHINERY_COMPAT_EVENTS_MAX_LEN"
DEFAULT_MAX_LEN: Final = 10_000

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    text = environ.get(name)
    if text is None:
        return default
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(f"{name}={text!r}: expected 1/true/yes/on or 0/false/no/off")


@dataclass(frozen=True, slots=True)
class EventsConfig:
    """What a process emits and how much the store keeps."""

    #: Python workers emit task-started/succeeded/failed/retried/dead-lettered and
    #: worker-online/heartbeat/offline (on by default: they cost about 4 % of the drain of a
    #: trivial task, docs/events.md)
    worker_events: bool = True
    #: every message this app publishes gives a task-sent event (producers; off by default)
    send_events: bool = False
    #: about how many events the Redis stream keeps (``XADD MAXLEN ~ max_len // n`` for a
    #: batch of n events: :mod:`.redis_store`); on AMQP how many
    #: batches the history queue keeps (``x-max-length``)
    max_len: int = DEFAULT_MAX_LEN

    def __post_init__(self) -> None:
        if isinstance(self.max_len, bool) or not isinstance(self.max_len, int) or self.max_len < 1:
            raise ConfigError(f"events max_len must be an integer >= 1, not {self.max_len!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EventsConfig:
        env = os.environ if environ is None else environ
        text = env.get(ENV_MAX_LEN, "").strip()
        try:
            max_len = int(text) if text else DEFAULT_MAX_LEN
        except ValueError:
            raise ConfigError(f"{ENV_MAX_LEN}={text!r}: expected an integer") from None
        return cls(worker_events=_bool(env, ENV_WORKER, True),
                   send_events=_bool(env, ENV_SEND, False), max_len=max_len)


def config_for(app: Any) -> EventsConfig:
    """``app.events_config`` when set, else the environment's."""
    own = getattr(app, "_events_config", None)
    if isinstance(own, EventsConfig):
        return own
    return EventsConfig.from_env()
