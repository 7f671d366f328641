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

A store keeps a *batch* of events (one flush of a writer) as one JSON array
(:func:`encode_batch`, :func:`decode_batch`).  Its items are event objects as above, or, for
the two events of every task (``task-started``, ``task-succeeded``), the same event as a
compact array of seven values in this order: ``[type, timestamp, uuid, name, queue,
hostname, runtime]`` (``""`` for a string with nothing to say, ``null`` for no runtime).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

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

_FIELDS: Final = ("uuid", "name", "queue", "hostname", "runtime", "retries", "exception",
                  "reason", "eta")


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
        """The compact JSON object (what ``events --json`` prints)."""
        return _encode(self.to_dict())

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
    def from_compact(cls, data: Sequence[Any], id: str = "") -> Event:
        """An event from its compact array (see the module docs)."""
        if not 2 <= len(data) <= len(_COMPACT):
            raise DecodeError(f"a compact event has 2 to {len(_COMPACT)} values, not "
                              f"{len(data)}", repr(data)[:200])
        return cls.from_dict(dict(zip(_COMPACT, data, strict=False)), id)

    @classmethod
    def from_json(cls, raw: str | bytes, id: str = "") -> Event:
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise DecodeError(f"an event is not JSON: {e}",
                              raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
                              ) from e
        return cls.from_dict(data, id)


#: the keys of a compact event's values, in order
_COMPACT: Final = ("type", "timestamp", "uuid", "name", "queue", "hostname", "runtime")

#: a task thread's event as it waits to be written: the compact array's seven values
Compact = tuple[str, float, str, str, str, str, "float | None"]


def encode_batch(items: Iterable[Event | Compact]) -> bytes:
    """One JSON array (UTF-8) of ``items``: an :class:`Event` as its object, a
    :data:`Compact` tuple as its array, in one call of orjson's encoder (a task thread's
    tuple costs no Python work); what orjson refuses (a string with a lone surrogate, a
    value of an unknown type in ``extra``) is written by ``json``, escaped."""
    data = [item.to_dict() if type(item) is Event else item for item in items]
    try:
        return orjson.dumps(data)
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(data, separators=(",", ":"), default=str).encode()


def decode_item(item: Any, id: str = "") -> Event:
    """One item of a batch: an event object or a compact array."""
    if isinstance(item, list):
        return Event.from_compact(item, id)
    return Event.from_dict(item, id)


def decode_batch(raw: str | bytes, id: str = "") -> tuple[list[Event], list[str]]:
    """The events of a batch (a JSON array, or one event object), and a description of
    each item that is none (the caller logs those and skips them)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:  # json reads what orjson refuses: an escaped lone surrogate (see encode_batch)
            data = json.loads(raw)
        except ValueError as e:
            return [], [f"not JSON: {e}"]
    events: list[Event] = []
    bad: list[str] = []
    for item in data if isinstance(data, list) else [data]:
        try:
            events.append(decode_item(item, id))
        except DecodeError as e:
            bad.append(str(e))
    return events, bad


def clip(text: str) -> str:
    """``text`` cut to :data:`MAX_TEXT` characters (``…`` marks a cut)."""
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "…"
