"""The sublime-security Machinery fork's wire dialect (its v1 tree, layout of tags v1.12.12+).

The fork's ``tasks.Signature`` has 29 fields instead of upstream's 19: ``ETA`` became
``Delay`` (Go ``time.Duration``: integer nanoseconds, relative to the moment of publishing)
and ``IngestionTime``, ``FirstReceived``, ``ReceivedAt``, ``AttemptCount``, ``SplitSpan``,
``SQSMessageID``, ``AzureMessageID``, ``AzurePopReceipt``, ``AzureMessageContent`` and
``NoBackend`` were added.  :class:`~machinery_compat.protocol.models.Signature` carries the
union of both field sets; this module has the fork's encoder (:func:`sublime_json`), the
dialect names and the publish-time delay rule (:func:`prepare_publish`).  Pure: no I/O,
the clock is an argument.  The bytes are checked against the fork itself
(``tests/data/golden/sublime*.json``, written by ``interop/sublime-golden.sh``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

from .gojson import encode_map, encode_str
from .gotime import ZERO_TIME_TEXT, GoTime

if TYPE_CHECKING:
    from .models import Signature

WireDialect: TypeAlias = Literal["upstream", "sublime"]

UPSTREAM: Final = "upstream"
SUBLIME: Final = "sublime"
#: The values of the ``wire_dialect`` setting.
DIALECTS: Final[tuple[str, ...]] = (UPSTREAM, SUBLIME)

#: The fork's Signature keys, in the order Go writes them (29).
SUBLIME_FIELDS: Final[tuple[str, ...]] = (
    "UUID", "Name", "RoutingKey", "Delay", "IngestionTime", "FirstReceived", "ReceivedAt",
    "GroupUUID", "GroupTaskCount", "Args", "Headers", "Priority", "Immutable", "RetryCount",
    "AttemptCount", "RetryTimeout", "SplitSpan", "OnSuccess", "OnError", "ChordCallback",
    "BrokerMessageGroupId", "SQSReceiptHandle", "SQSMessageID", "AzureMessageID",
    "AzurePopReceipt", "AzureMessageContent", "NoBackend", "StopTaskDeletionOnError",
    "IgnoreWhenTaskNotRegistered",
)

#: Keys only the fork writes: a message holding any of them is read as the sublime dialect.
FORK_ONLY_FIELDS: Final[frozenset[str]] = frozenset({
    "Delay", "IngestionTime", "FirstReceived", "ReceivedAt", "AttemptCount", "SplitSpan",
    "SQSMessageID", "AzureMessageID", "AzurePopReceipt", "AzureMessageContent", "NoBackend",
})

#: The longest DelaySeconds SQS takes; the fork clamps longer delays to it (with an ERROR log).
SQS_MAX_DELAY_SECONDS: Final = 900
#: The fork's Azure broker caps a publish delay (visibility timeout) at 7 minutes.
AZURE_MAX_DELAY_SECONDS: Final = 420

_NS: Final = 1_000_000_000


def check_dialect(value: object) -> WireDialect:
    """``value`` if it names a wire dialect, else :class:`ValueError` saying which ones exist."""
    if value == UPSTREAM:
        return UPSTREAM
    if value == SUBLIME:
        return SUBLIME
    raise ValueError(
        f"wire_dialect must be 'upstream' (Go Machinery v1/v2) or 'sublime' (the "
        f"sublime-security fork, v1.12.12+), not {value!r}"
    )


def _b(v: bool) -> str:
    return "true" if v else "false"


def _opt_time(t: GoTime | None) -> str:
    return "null" if t is None else '"' + t.isoformat() + '"'


def _list(items: list[Signature] | None) -> str:
    if items is None:
        return "null"
    return "[" + ",".join([sublime_json(s) for s in items]) + "]"


def sublime_json(sig: Signature) -> str:
    """The JSON text the fork's ``json.Marshal(signature)`` produces (nested signatures too).

    ``eta`` is not a fork field and is not written: the fork's delay is ``Delay``, set at
    publish time by :func:`prepare_publish`.
    """
    args = sig.args
    headers = sig.headers
    cb = sig.chord_callback
    received = sig.received_at
    return (
        '{"UUID":' + encode_str(sig.uuid)
        + ',"Name":' + encode_str(sig.name)
        + ',"RoutingKey":' + encode_str(sig.routing_key)
        + ',"Delay":' + str(sig.delay)
        + ',"IngestionTime":' + _opt_time(sig.ingestion_time)
        + ',"FirstReceived":' + _opt_time(sig.first_received)
        + ',"ReceivedAt":"' + (ZERO_TIME_TEXT if received is None else received.isoformat()) + '"'
        + ',"GroupUUID":' + encode_str(sig.group_uuid)
        + ',"GroupTaskCount":' + str(sig.group_task_count)
        + ',"Args":' + ("null" if args is None else "[" + ",".join([a.to_go_json() for a in args]) + "]")
        + ',"Headers":' + ("null" if headers is None else encode_map(headers))
        + ',"Priority":' + str(sig.priority)
        + ',"Immutable":' + _b(sig.immutable)
        + ',"RetryCount":' + str(sig.retry_count)
        + ',"AttemptCount":' + str(sig.attempt_count)
        + ',"RetryTimeout":' + str(sig.retry_timeout)
        + ',"SplitSpan":' + _b(sig.split_span)
        + ',"OnSuccess":' + _list(sig.on_success)
        + ',"OnError":' + _list(sig.on_error)
        + ',"ChordCallback":' + ("null" if cb is None else sublime_json(cb))
        + ',"BrokerMessageGroupId":' + encode_str(sig.broker_message_group_id)
        + ',"SQSReceiptHandle":' + encode_str(sig.sqs_receipt_handle)
        + ',"SQSMessageID":' + encode_str(sig.sqs_message_id)
        + ',"AzureMessageID":' + encode_str(sig.azure_message_id)
        + ',"AzurePopReceipt":' + encode_str(sig.azure_pop_receipt)
        + ',"AzureMessageContent":' + encode_str(sig.azure_message_content)
        + ',"NoBackend":' + _b(sig.no_backend)
        + ',"StopTaskDeletionOnError":' + _b(sig.stop_task_deletion_on_error)
        + ',"IgnoreWhenTaskNotRegistered":' + _b(sig.ignore_when_task_not_registered)
        + "}"
    )


def prepare_publish(sig: Signature, now_ns: int, *, zero_delay: bool) -> None:
    """Make ``sig`` what the fork's ``SendTask`` + broker ``Publish`` put on the wire.

    The delay is relative in the fork: ``Delay`` (ns) counts from the moment of publishing,
    ``now_ns``.  An absolute ``eta`` (what this library's API and retries set) is turned into
    ``Delay`` (it wins over a ``Delay`` already there: a retry's new due time replaces the
    received one, as the fork's retry overwrites ``Delay``), and a ``Delay`` alone into the
    ``eta`` the brokers schedule with, so both say the same.
    ``zero_delay`` (the fork's Redis brokers, v1.12.11+): ``Delay`` is written as 0 and the
    due time lives only in the ZSET score (``eta``), otherwise a fork mover would delay the
    member again.  Other brokers (SQS) keep ``Delay`` in the body.  A non-positive delay
    means "now" (Go's ``Delay > 0`` test).  ``sig`` is marked as the sublime dialect.
    Callbacks (``OnSuccess``, ``OnError``, ``ChordCallback``) with an ``eta`` and no ``Delay``
    get ``Delay = eta - now``: the fork counts it from when the callback is sent.
    """
    sig.wire_dialect = SUBLIME
    eta = sig.eta
    if eta is not None:  # the newest intent (countdown/eta, a retry): it wins over Delay
        delay = eta.unix_ns - now_ns
        if delay <= 0:
            sig.eta, delay = None, 0
    else:
        delay = sig.delay
        if delay > 0:
            sig.eta = GoTime(now_ns + delay)
    sig.delay = 0 if zero_delay else delay
    for nested in (*(sig.on_success or ()), *(sig.on_error or ())):
        _nested_delay(nested, now_ns)
    if sig.chord_callback is not None:
        _nested_delay(sig.chord_callback, now_ns)


def _nested_delay(sig: Signature, now_ns: int) -> None:
    """A callback's absolute ``eta`` as the fork's relative ``Delay`` (counted, by the fork,
    from when the callback is sent), so a sublime encoding does not drop it."""
    eta = sig.eta
    if eta is not None and sig.delay == 0:
        sig.delay = max(eta.unix_ns - now_ns, 0)
    for nested in (*(sig.on_success or ()), *(sig.on_error or ())):
        _nested_delay(nested, now_ns)
    if sig.chord_callback is not None:
        _nested_delay(sig.chord_callback, now_ns)


def sqs_delay_seconds(delay_ns: int) -> int | None:
    """The fork's SQS ``DelaySeconds`` for a non-FIFO queue: whole seconds of ``Delay``,
    clamped to 900 (the fork logs instead of failing); ``None`` when ``Delay`` ≤ 0."""
    if delay_ns <= 0:
        return None
    return min(delay_ns // _NS, SQS_MAX_DELAY_SECONDS)


def fill_sqs_receipt(sig: Signature, *, queue: str, receipt_handle: str, message_id: str,
                     receive_count: int | None, sent_ms: int | None, first_ms: int | None,
                     now: GoTime) -> None:
    """What the fork's SQS consumer writes into a received signature before its task runs
    (``v1/brokers/sqs/sqs.go``): ``ReceivedAt`` = ``now``, ``NoBackend`` when it has no UUID,
    ``SQSReceiptHandle``, ``SQSMessageID``, ``AttemptCount`` = ``ApproximateReceiveCount`` - 1
    (when the attribute came), ``IngestionTime`` = ``SentTimestamp`` and ``FirstReceived`` =
    ``ApproximateFirstReceiveTimestamp`` (milliseconds, UTC; when they came), and
    ``RoutingKey`` = the consumed ``queue``, so retries go back where it was read from."""
    sig.received_at = now
    if not sig.uuid:
        sig.no_backend = True
    sig.sqs_receipt_handle = receipt_handle
    sig.sqs_message_id = message_id
    if receive_count is not None:
        sig.attempt_count = receive_count - 1
    if sent_ms is not None:
        sig.ingestion_time = GoTime(sent_ms * 1_000_000)
    if first_ms is not None:
        sig.first_received = GoTime(first_ms * 1_000_000)
    sig.routing_key = queue


def unknown_task_decision(result: object) -> tuple[bool, float]:
    """``(keep, retry_in seconds)`` from what an unknown-task hook returned (the fork's
    ``UnknownTaskHandler``: ``keep`` false = drop the message; true with ``retry_in`` > 0 =
    hand it back after that long; true with 0 = hand it back).  Accepted: a bool (keep, no
    delay), or a ``(bool, seconds)`` pair with ``seconds`` a finite number ≥ 0 (a
    ``datetime.timedelta`` too); anything else is :class:`ValueError` naming it."""
    if isinstance(result, bool):
        return result, 0.0
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], bool):
        keep, retry_in = result
        if hasattr(retry_in, "total_seconds"):
            retry_in = retry_in.total_seconds()
        if (isinstance(retry_in, (int, float)) and not isinstance(retry_in, bool)
                and math.isfinite(retry_in) and retry_in >= 0):
            return keep, float(retry_in)
    raise ValueError(
        f"an unknown-task hook must return keep (a bool) or (keep, retry_in seconds >= 0), "
        f"not {result!r:.80}")


__all__ = [
    "AZURE_MAX_DELAY_SECONDS",
    "DIALECTS",
    "FORK_ONLY_FIELDS",
    "SQS_MAX_DELAY_SECONDS",
    "SUBLIME",
    "SUBLIME_FIELDS",
    "UPSTREAM",
    "WireDialect",
    "check_dialect",
    "fill_sqs_receipt",
    "prepare_publish",
    "sqs_delay_seconds",
    "sublime_json",
    "unknown_task_decision",
]
