"""Sending options: the ones a Machinery message carries, and what becomes of Celery's.

A Machinery message (Go's ``tasks.Signature``) has a fixed set of fields, so every option
given to ``send_task``, ``apply_async``, ``Sig.set`` or ``@app.task`` is either

* a Machinery field (``queue``, ``countdown``/``eta``, ``priority``, ``headers``, …),
* a Celery option mapped onto one:

  ============== ========================================================================
  ``routing_key`` ``RoutingKey`` (the same field ``queue`` sets; both given must agree)
  ``link``        ``OnSuccess`` callbacks (they get the results appended to their args)
  ``link_error``  ``OnError`` callbacks (they get the error text prepended to their args)
  ``max_retries`` ``RetryCount``
  ``expires``     the header ``expires`` (RFC 3339, UTC): a Python worker does not run a
                  task received after it and stores FAILURE ``task expired at …`` instead;
                  Go workers ignore the header and run it
  ============== ========================================================================

* or refused with :class:`~machinery_compat.UnsupportedOption`, which names the option and
  says why (:data:`REFUSED`) — never silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from .exceptions import UnsupportedOption

#: Options :meth:`Machinery.build_signature` takes as they are.
MACHINERY_OPTIONS: Final = frozenset({
    "countdown", "eta", "queue", "priority", "headers", "task_id", "retry_count",
    "retry_timeout", "immutable", "ignore_when_task_not_registered",
    "broker_message_group_id", "stop_task_deletion_on_error", "on_success", "on_error",
})

#: Celery options mapped onto Machinery fields (see the module docstring).
MAPPED_OPTIONS: Final = frozenset({"routing_key", "link", "link_error", "max_retries", "expires"})

#: The header a Python worker reads an expiry time from (Celery's header name).
EXPIRES_HEADER: Final = "expires"

_NO_CARRIER = "a Machinery message has no field for it, and Go workers would not honour it"

#: Celery options that cannot work here, and why.
REFUSED: Final[Mapping[str, str]] = {
    "time_limit": f"{_NO_CARRIER}; a task running in a worker thread cannot be killed either. "
                  "Bound the work inside the task (e.g. timeouts on its I/O)",
    "soft_time_limit": f"{_NO_CARRIER}; check a deadline inside the task instead",
    "rate_limit": f"{_NO_CARRIER}; limit throughput with the worker's concurrency (-c)",
    "acks_late": "when a message is acknowledged is the broker's rule in Machinery, the same "
                 "for every task, not a per-task option",
    "ignore_result": "Machinery workers (Go and Python) always store task states; they expire "
                     "after results_expire_in seconds (config), so nothing accumulates",
    "serializer": "Machinery messages are always Go-compatible JSON",
    "compression": "Go Machinery workers could not read a compressed message",
    "exchange": "the AMQP exchange is the broker's configuration (amqp.exchange), "
                "the same for every message",
    "kwargs": "Machinery has positional arguments only: pass kwargs= to send_task/apply_async "
              "of a task registered in this app (mapped to positions), or args in order",
    "shadow": "Machinery messages carry the task name only",
    "retry_policy": "publishing is bounded by the broker's configured timeouts instead",
    "retry": "publishing is bounded by the broker's configured timeouts instead",
}


def translate(options: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """``options`` as :meth:`Machinery.build_signature` keywords: mapped, checked, or refused.

    ``where`` names the call in error messages (``"apply_async"``, ``"@app.task"`` …).
    ``None`` values mean "not given" and are dropped.
    """
    out: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        if key in MACHINERY_OPTIONS:
            out[key] = value
        elif key == "max_retries":
            out["retry_count"] = value
        elif key in MAPPED_OPTIONS:
            continue  # below, once every plain option is known
        elif key in REFUSED:
            raise UnsupportedOption(key, where, REFUSED[key])
        else:
            known = sorted(MACHINERY_OPTIONS | MAPPED_OPTIONS)
            raise UnsupportedOption(key, where, f"it is not an option here (known: {', '.join(known)})")
    routing_key = options.get("routing_key")
    if routing_key is not None:
        if out.get("queue") not in (None, routing_key):
            raise UnsupportedOption("routing_key", where, f"queue={out['queue']!r} and "
                                    f"routing_key={routing_key!r} both set Machinery's RoutingKey")
        out["queue"] = routing_key
    for key, field in (("link", "on_success"), ("link_error", "on_error")):
        if options.get(key) is not None:
            out[field] = [*out.get(field, ()), *_as_list(options[key])]
    if options.get("expires") is not None:
        out["headers"] = {**(out.get("headers") or {}),
                          EXPIRES_HEADER: expires_at(options["expires"]).isoformat()}
    return out


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def expires_at(value: Any) -> datetime:
    """Celery's ``expires``: seconds from now, or a datetime (naive = local time); UTC."""
    if isinstance(value, datetime):
        return (value.astimezone() if value.tzinfo is None else value).astimezone(UTC)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.now(UTC) + timedelta(seconds=value)
    raise UnsupportedOption("expires", "apply_async",
                            f"expires must be seconds or a datetime, not {value!r}")


def parse_expires(headers: Mapping[str, Any] | None) -> datetime | None:
    """The expiry time a message's headers carry, or ``None`` (absent or unreadable)."""
    if not headers:
        return None
    raw = headers.get(EXPIRES_HEADER)
    if not isinstance(raw, str):
        return None
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
