"""The event: one compact JSON object per lifecycle step (pure: no I/O).

.. code-block:: json

    {"type": "task-succeeded", "uuid": "task_…", "name": "add", "queue": "machinery_tasks",
     "hostname": "4242@host", "timestamp": 1764812345.123456, "runtime": 0.0012}

Keys with nothing to say are left out.  ``type`` is one of :data:`TYPES`; ``timestamp`` is
Unix seconds (float); ``runtime`` seconds the task function ran (succeeded and failed
events of tasks that ran); ``retries`` the retries the message still allows (its
``RetryCount``) on sent and retried events; ``exception`` the error text of failed events
(the text written as the state's ``Error``, clipped to 1000 characters) and ``reason`` that
of dead-lettered ones; ``eta`` the ISO time of a delayed send or a retry.  Worker events
(``worker-*``) carry ``hostname``, ``pid``, ``queues``, ``concurrency``, ``processed``,
``active`` and, from one heartbeat to the next, ``dropped`` (events the worker could not
keep: see :mod:`machinery_compat.events.emitter`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any, Final

from ..exceptions import DecodeError

SENT: Final = "task-sent"
RECEIVED: Final = "task-received"
STARTED: Final = "task-started"
SUCCEEDED: Final = "task-succeeded"
FAILED: Final = "task-failed"
RETRIED: Final = "task-retried"
DEAD_LETTERED: Final = "task-dead-lettered"
WORKER_ONLINE: Final = "worker-online"
WORKER_HEARTBEAT: Final = "worker-heartbeat"
WORKER_OFFLINE: Final = "worker-offline"

#: every event type, task ones first
TASK_TYPES: Final = (SENT, RECEIVED, STARTED, SUCCEEDED, FAILED, RETRIED, DEAD_LETTERED)
WORKER_TYPES: Final = (WORKER_ONLINE, WORKER_HEARTBEAT, WORKER_OFFLINE)
TYPES: Final = TASK_TYPES + WORKER_TYPES

#: the longest exception / reason text an event keeps
MAX_TEXT: Final = 1000

#: one encoder for all events (``json.dumps`` with options makes one per call)
_encode: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

_esc: Final = encode_basestring


def _number(value: float) -> str:
    """A float as JSON (``repr``, as ``json`` writes it; never NaN or infinite here)."""
    return repr(float(value)) if math.isfinite(value) else "null"


_FIELDS: Final = ("uuid", "name", "queue", "hostname", "runtime", "retries", "exception",
                  "reason", "eta")
_RESERVED: Final = frozenset(("type", "timestamp", *_FIELDS))


@dataclass(slots=True)
class Event:
    """One lifecycle event (see the module docs for the keys).  Treat it as read-only: not
    frozen only because a frozen dataclass costs a task thread several times more to make."""

    type: str
    timestamp: float
    uuid: str = ""
    name: str = ""
    queue: str = ""
    hostname: str = ""
    runtime: float | None = None
    retries: int | None = None
    exception: str = ""
    reason: str = ""
    eta: str = ""
    #: the other keys (worker events' pid, queues, …), as they came
    extra: dict[str, Any] | None = None
    #: where the store keeps it (a Redis stream id), when read back; not part of the JSON
    id: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "timestamp": self.timestamp}
        if self.uuid:
            out["uuid"] = self.uuid
        if self.name:
            out["name"] = self.name
        if self.queue:
            out["queue"] = self.queue
        if self.hostname:
            out["hostname"] = self.hostname
        if self.runtime is not None:
            out["runtime"] = self.runtime
        if self.retries is not None:
            out["retries"] = self.retries
        if self.exception:
            out["exception"] = self.exception
        if self.reason:
            out["reason"] = self.reason
        if self.eta:
            out["eta"] = self.eta
        if self.extra:
            for key, value in self.extra.items():
                out.setdefault(key, value)
        return out

    def to_json(self) -> str:
        """The compact JSON text (built by hand: three times faster than encoding
        :meth:`to_dict`, on the flusher thread that shares the GIL with the tasks)."""
        parts = ['{"type":', _esc(self.type), ',"timestamp":', _number(self.timestamp)]
        if self.uuid:
            parts += [',"uuid":', _esc(self.uuid)]
        if self.name:
            parts += [',"name":', _esc(self.name)]
        if self.queue:
            parts += [',"queue":', _esc(self.queue)]
        if self.hostname:
            parts += [',"hostname":', _esc(self.hostname)]
        if self.runtime is not None:
            parts += [',"runtime":', _number(self.runtime)]
        if self.retries is not None:
            parts += [',"retries":', str(int(self.retries))]
        for key in ("exception", "reason", "eta"):
            value = getattr(self, key)
            if value:
                parts += [',"', key, '":', _esc(value)]
        if self.extra:
            for key, value in self.extra.items():
                if key not in _RESERVED:
                    parts += [",", _esc(str(key)), ":", _encode(value)]
        parts.append("}")
        return "".join(parts)

    @classmethod
    def from_dict(cls, data: Any, id: str = "") -> Event:
        if not isinstance(data, dict):
            raise DecodeError(f"an event is a JSON object, not {type(data).__name__}",
                              repr(data)[:200])
        kind, ts = data.get("type"), data.get("timestamp")
        if not isinstance(kind, str) or not kind:
            raise DecodeError("an event needs a string 'type'", repr(data)[:200])
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            raise DecodeError("an event needs a numeric 'timestamp'", repr(data)[:200])
        known: dict[str, Any] = {}
        for key in _FIELDS:
            value = data.get(key)
            if value is None:
                continue
            if key == "runtime":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise DecodeError("'runtime' must be a number", repr(data)[:200])
                value = float(value)
            elif key == "retries":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise DecodeError("'retries' must be an integer", repr(data)[:200])
            elif not isinstance(value, str):
                raise DecodeError(f"{key!r} must be a string", repr(data)[:200])
            known[key] = value
        extra = {k: v for k, v in data.items() if k not in _FIELDS and k not in ("type", "timestamp")}
        return cls(type=kind, timestamp=float(ts), extra=extra or None, id=id, **known)

    @classmethod
    def from_json(cls, raw: str | bytes, id: str = "") -> Event:
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise DecodeError(f"an event is not JSON: {e}",
                              raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
                              ) from e
        return cls.from_dict(data, id)


def clip(text: str) -> str:
    """``text`` cut to :data:`MAX_TEXT` characters (``…`` marks a cut)."""
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "…"
