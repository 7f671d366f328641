"""Machinery's data model: Signature, Arg, TaskState, TaskResult, GroupMeta.

Field names are snake_case versions of the Go fields; JSON keys are the Go names, in
Go's declaration order, always present (no ``omitempty``).  ``None`` vs ``[]`` vs
``{}`` is preserved exactly as Go distinguishes nil and empty slices/maps.

Encoding is Go-identical (:meth:`Signature.to_json`); decoding (:meth:`Signature.from_json`)
is as lenient as Go's (case-insensitive keys, unknown keys ignored) and raises
:class:`~machinery_compat.exceptions.DecodeError` carrying the raw bytes where Go fails.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, TypeVar

from ..exceptions import DecodeError, EncodeError, ProtocolError
from . import fastjson
from .gojson import Number, encode_map, encode_str, encode_value, loads, plain, to_bytes
from .gotime import ZERO_TIME_TEXT, GoTime
from .gotypes import SUPPORTED_TYPES, encode_result_value, encode_typed, infer_type, to_python
from .sublime import FORK_ONLY_FIELDS, SUBLIME, SUBLIME_FIELDS, check_dialect, sublime_json

_T = TypeVar("_T")

# task states
PENDING: Final = "PENDING"
RECEIVED: Final = "RECEIVED"
STARTED: Final = "STARTED"
RETRY: Final = "RETRY"
SUCCESS: Final = "SUCCESS"
FAILURE: Final = "FAILURE"
READY_STATES: Final = frozenset({SUCCESS, FAILURE})
ALL_STATES: Final = (PENDING, RECEIVED, STARTED, RETRY, SUCCESS, FAILURE)

_ZERO_TIME: Final = GoTime.zero()
_INT_MIN: Final = -(1 << 63)
_INT_MAX: Final = (1 << 63) - 1


def _b(v: bool) -> str:
    return "true" if v else "false"


def _encode_typed_value(type_name: str, value: Any) -> str:
    """Typed encoding; a received value that does not fit its type is forwarded as is (Go does)."""
    try:
        return encode_result_value(type_name, value)
    except EncodeError:
        if _is_received(value):
            return encode_value(value)
        raise


def _is_received(value: Any) -> bool:
    t = type(value)
    if value is None or t is str or t is bool or t is Number:
        return True
    if t is list:
        return all(_is_received(v) for v in value)
    if t is dict:
        return all(_is_received(v) for v in value.values())
    return False


# --------------------------------------------------------------------------------------
# field readers with Go's decoding rules
# --------------------------------------------------------------------------------------


def _fold(obj: Any, fields: tuple[str, ...], where: str) -> dict[str, Any]:
    """Map JSON keys onto Go field names the way ``encoding/json`` does (case-insensitive)."""
    if not isinstance(obj, dict):
        raise DecodeError(f"json: cannot unmarshal {_kind(obj)} into Go value of type {where}")
    if all(k in fields for k in obj):
        return obj
    lower = {f.lower(): f for f in fields}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        name = k if k in fields else lower.get(k.lower())
        if name is not None:
            out[name] = v
    return out


def _decode(from_obj: Callable[[Any], _T], raw: bytes | bytearray | memoryview | str) -> _T:
    """Parse ``raw`` and build a model from it; a DecodeError always carries ``raw``."""
    try:
        return from_obj(loads(raw))
    except DecodeError as e:
        e.raw = _raw_bytes(raw)
        raise
    except Exception as e:  # anything else (int digit limit, nesting depth …) is undecodable too
        raise DecodeError(f"{type(e).__name__}: {str(e)[:300]}", _raw_bytes(raw)) from e


def _raw_bytes(raw: bytes | bytearray | memoryview | str) -> bytes:
    return raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, Number):
        return "number " + v.text
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _kind_no_literal(v: Any) -> str:
    """Go names a number stored into a string or bool field without its literal."""
    return "number" if isinstance(v, Number) else _kind(v)


def _str(d: dict[str, Any], key: str, where: str) -> str:
    v = d.get(key)
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    raise DecodeError(f"json: cannot unmarshal {_kind_no_literal(v)} into Go struct field {where}.{key} of type string")


def _bool(d: dict[str, Any], key: str, where: str) -> bool:
    v = d.get(key)
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    raise DecodeError(f"json: cannot unmarshal {_kind_no_literal(v)} into Go struct field {where}.{key} of type bool")


def _int(d: dict[str, Any], key: str, where: str, lo: int = _INT_MIN, hi: int = _INT_MAX,
         go_type: str = "int") -> int:
    v = d.get(key)
    if v is None:
        return 0
    if isinstance(v, Number) and v.is_integer_literal():
        n = int(v.text)
        if lo <= n <= hi:
            return n
    raise DecodeError(
        f"json: cannot unmarshal {_kind(v)} into Go struct field {where}.{key} of type {go_type}"
    )


def _time(d: dict[str, Any], key: str, where: str, nullable: bool) -> GoTime | None:
    v = d.get(key)
    if v is None:
        return None if nullable else GoTime.zero()
    if not isinstance(v, str):
        raise DecodeError(f"json: cannot unmarshal {_kind(v)} into Go struct field {where}.{key} of type time.Time")
    return GoTime.parse(v)


def _fork_eta(d: dict[str, Any]) -> GoTime | None:
    """``ETA`` in a fork message: not a fork field, so the fork ignores any value; kept
    when it is a valid time."""
    try:
        return _time(d, "ETA", "Signature", nullable=True)
    except DecodeError:
        return None


def _fork_time(d: dict[str, Any], key: str) -> GoTime | None:
    """A fork time field (``null`` = unset); a bad value names the field."""
    try:
        return _time(d, key, "Signature", nullable=True)
    except DecodeError as e:
        if "Signature." in str(e):
            raise
        raise DecodeError(f"Signature.{key}: {e}") from None


# --------------------------------------------------------------------------------------
# Arg / TaskResult
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Arg:
    """One typed argument: ``Arg("int32", 5)`` or ``Arg(type="int32", value=5, name="x")``.

    ``value`` is a Python value when built here and the received JSON (numbers as
    :class:`~machinery_compat.protocol.gojson.Number`) when decoded; :attr:`python_value`
    converts with Go's rules.
    """

    type: str
    value: Any
    name: str = ""

    FIELDS: ClassVar[tuple[str, ...]] = ("Name", "Type", "Value")

    @classmethod
    def of(cls, value: Any, type: str | None = None) -> Arg:
        """Wrap a plain value (inferring its Go type) unless it already is an Arg."""
        if isinstance(value, Arg):
            return value
        return cls(type or infer_type(value), value)

    @property
    def python_value(self) -> Any:
        """The value converted with Go's reflection rules (:class:`ArgTypeError` where Go would refuse it)."""
        return to_python(self.type, self.value)

    def validate(self) -> None:
        """Raise :class:`EncodeError` if the value cannot be sent as its Go type."""
        encode_typed(self.type, self.value)

    def to_go_json(self) -> str:
        """This argument as Go's ``encoding/json`` writes a ``tasks.Arg``."""
        return (
            '{"Name":' + encode_str(self.name) + ',"Type":' + encode_str(self.type)
            + ',"Value":' + _encode_typed_value(self.type, self.value) + "}"
        )

    @classmethod
    def from_obj(cls, obj: Any) -> Arg:
        """An Arg from decoded JSON (Go's lenient rules: case-insensitive keys, ``null`` = zero Arg)."""
        if obj is None:  # Go decodes a null element of []Arg as the zero Arg
            return cls("", None)
        d = _fold(obj, cls.FIELDS, "tasks.Arg")
        return cls(_str(d, "Type", "Arg"), d.get("Value"), _str(d, "Name", "Arg"))


_NO_RAW: Final = object()


@dataclass(slots=True)
class TaskResult:
    """One value a task returned: Go type name + value.

    ``value`` is a plain Python value (``int``, ``float``, ``str``, ``bytes``, lists of
    them …) whether the result was built here or read from the wire.  A result read from the
    wire also keeps the value exactly as received (``wire_value``: a JSON number literal, a
    base64 string …), which is what is forwarded and re-encoded, byte for byte, and what
    :attr:`python_value` converts with Go's rules (raising for a value Go could not reflect).
    """

    type: str
    value: Any
    raw: Any = field(default=_NO_RAW, repr=False, compare=False)

    FIELDS: ClassVar[tuple[str, ...]] = ("Type", "Value")

    @property
    def wire_value(self) -> Any:
        """The value as it travels: as received when read from the wire, else ``value``."""
        return self.value if self.raw is _NO_RAW else self.raw

    @property
    def python_value(self) -> Any:
        """The value converted with Go's rules; lenient about stringified values (DynamoDB)
        and other types; :class:`ArgTypeError` for a value Go could not reflect either."""
        if self.type in SUPPORTED_TYPES:
            return to_python(self.type, self.wire_value, lenient=True)
        return plain(self.wire_value)

    def to_go_json(self) -> str:
        """This result as Go's ``encoding/json`` writes a ``tasks.TaskResult``."""
        return ('{"Type":' + encode_str(self.type) + ',"Value":'
                + _encode_typed_value(self.type, self.wire_value) + "}")

    @classmethod
    def from_obj(cls, obj: Any) -> TaskResult:
        """A TaskResult from decoded JSON: ``value`` converted, the received value kept."""
        d = _fold(obj, cls.FIELDS, "tasks.TaskResult")
        type_name, raw = _str(d, "Type", "TaskResult"), d.get("Value")
        result = cls(type_name, None, raw)
        try:
            result.value = result.python_value
        except ProtocolError:  # mistyped: kept as decoded; python_value raises when asked
            result.value = plain(raw)
        return result


def _encode_list(items: list[Any] | None) -> str:
    if items is None:
        return "null"
    return "[" + ",".join([i.to_go_json() for i in items]) + "]"


def _decode_list(v: Any, ctor: Any, where: str) -> list[Any] | None:
    if v is None:
        return None
    if not isinstance(v, list):
        raise DecodeError(f"json: cannot unmarshal {_kind(v)} into Go struct field {where} of type slice")
    return [ctor(i) for i in v]


# --------------------------------------------------------------------------------------
# Signature
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Signature:
    """A Machinery task message (``tasks.Signature``): upstream's 19 fields, then the
    sublime-security fork's (see :mod:`machinery_compat.protocol.sublime`).

    One decoder reads both dialects (the union of the fields, each validated as Go does);
    ``wire_dialect`` says which one :meth:`to_json` writes: ``"upstream"`` (``ETA``, 19
    keys) or ``"sublime"`` (``Delay``, 29 keys).  A decoded message gets ``"sublime"`` when it
    holds any fork-only key, so a re-encode reproduces what was received; the app sets it
    on what it publishes (``wire_dialect`` setting).  The fork fields are kept (and ignored)
    in the upstream dialect.
    """

    uuid: str = ""
    name: str = ""
    routing_key: str = ""
    eta: GoTime | None = None
    group_uuid: str = ""
    group_task_count: int = 0
    args: list[Arg] | None = None
    headers: dict[str, Any] | None = None
    priority: int = 0
    immutable: bool = False
    retry_count: int = 0
    retry_timeout: int = 0
    on_success: list[Signature] | None = None
    on_error: list[Signature] | None = None
    chord_callback: Signature | None = None
    broker_message_group_id: str = ""
    sqs_receipt_handle: str = ""
    stop_task_deletion_on_error: bool = False
    ignore_when_task_not_registered: bool = False
    # -- the sublime-security fork's fields (written in the "sublime" dialect only) --------
    #: ``Delay``: Go ``time.Duration``, nanoseconds, relative to the moment of publishing
    delay: int = 0
    #: ``IngestionTime`` (SQS SentTimestamp / Azure insertion time); ``None`` = null
    ingestion_time: GoTime | None = None
    #: ``FirstReceived`` (SQS ApproximateFirstReceiveTimestamp); ``None`` = null
    first_received: GoTime | None = None
    #: ``ReceivedAt`` (local time of receipt); ``None`` = Go's zero time
    received_at: GoTime | None = None
    #: ``AttemptCount``: attempts so far, 0-based
    attempt_count: int = 0
    #: ``SplitSpan``: the producer did not inject tracing headers
    split_span: bool = False
    sqs_message_id: str = ""
    azure_message_id: str = ""
    azure_pop_receipt: str = ""
    azure_message_content: str = ""
    #: ``NoBackend``: skip result-backend writes for this task
    no_backend: bool = False
    #: which key set :meth:`to_json` writes: ``"upstream"`` or ``"sublime"``
    wire_dialect: str = field(default="upstream", compare=False, repr=False)

    FIELDS: ClassVar[tuple[str, ...]] = (
        "UUID", "Name", "RoutingKey", "ETA", "GroupUUID", "GroupTaskCount", "Args", "Headers",
        "Priority", "Immutable", "RetryCount", "RetryTimeout", "OnSuccess", "OnError",
        "ChordCallback", "BrokerMessageGroupId", "SQSReceiptHandle", "StopTaskDeletionOnError",
        "IgnoreWhenTaskNotRegistered",
    )

    #: the fork's keys, in its order (``wire_dialect="sublime"``)
    SUBLIME_FIELDS: ClassVar[tuple[str, ...]] = SUBLIME_FIELDS
    #: every key the decoder reads: upstream's and the fork's
    ALL_FIELDS: ClassVar[tuple[str, ...]] = (
        *FIELDS, *[f for f in SUBLIME_FIELDS if f in FORK_ONLY_FIELDS])

    # -- encoding -----------------------------------------------------------------------
    def to_go_json(self) -> str:
        """The JSON text Go's ``json.Marshal(signature)`` produces (in :attr:`wire_dialect`)."""
        try:
            if self.wire_dialect == SUBLIME:
                return sublime_json(self)
            args = self.args
            headers = self.headers
            cb = self.chord_callback
            eta = self.eta
            return (
                '{"UUID":' + encode_str(self.uuid)
                + ',"Name":' + encode_str(self.name)
                + ',"RoutingKey":' + encode_str(self.routing_key)
                + ',"ETA":' + ("null" if eta is None else '"' + eta.isoformat() + '"')
                + ',"GroupUUID":' + encode_str(self.group_uuid)
                + ',"GroupTaskCount":' + str(self.group_task_count)
                + ',"Args":' + ("null" if args is None else "[" + ",".join([a.to_go_json() for a in args]) + "]")
                + ',"Headers":' + ("null" if headers is None else encode_map(headers))
                + ',"Priority":' + str(self.priority)
                + ',"Immutable":' + _b(self.immutable)
                + ',"RetryCount":' + str(self.retry_count)
                + ',"RetryTimeout":' + str(self.retry_timeout)
                + ',"OnSuccess":' + _encode_list(self.on_success)
                + ',"OnError":' + _encode_list(self.on_error)
                + ',"ChordCallback":' + ("null" if cb is None else cb.to_go_json())
                + ',"BrokerMessageGroupId":' + encode_str(self.broker_message_group_id)
                + ',"SQSReceiptHandle":' + encode_str(self.sqs_receipt_handle)
                + ',"StopTaskDeletionOnError":' + _b(self.stop_task_deletion_on_error)
                + ',"IgnoreWhenTaskNotRegistered":' + _b(self.ignore_when_task_not_registered)
                + "}"
            )
        except EncodeError as e:
            raise EncodeError(f"task {self.name!r} ({self.uuid}): {e}") from e

    def to_json(self) -> bytes:
        """UTF-8 bytes of :meth:`to_go_json` (what goes on the wire)."""
        return to_bytes(self.to_go_json())

    def validate(self) -> None:
        """Check that Go could encode and decode this signature; :class:`EncodeError` if not."""
        if not 0 <= self.priority <= 255:
            raise EncodeError(f"Priority {self.priority} is outside Go's uint8 range 0..255")
        for n in (self.group_task_count, self.retry_count, self.retry_timeout,
                  self.attempt_count):
            if not _INT_MIN <= n <= _INT_MAX:
                raise EncodeError(f"{n} does not fit Go's int")
        if not _INT_MIN <= self.delay <= _INT_MAX:
            raise EncodeError(f"Delay {self.delay} ns does not fit Go's time.Duration (int64)")
        try:
            check_dialect(self.wire_dialect)
        except ValueError as e:
            raise EncodeError(str(e)) from None
        for a in self.args or ():
            a.validate()
        for s in (*(self.on_success or ()), *(self.on_error or ())):
            s.validate()
        if self.chord_callback is not None:
            self.chord_callback.validate()

    # -- decoding -----------------------------------------------------------------------
    @classmethod
    def from_json(cls, raw: bytes | bytearray | memoryview | str) -> Signature:
        """Decode a message body; :class:`DecodeError` (with ``raw``) where Go would fail.

        The common message (upstream keys spelled exactly, no floats, valid UTF-8) is read
        through :mod:`.fastjson` when orjson is installed, with the same result; anything
        else, and every error, goes through the exact decoder."""
        sig = _fast_from_json(raw)
        return sig if sig is not None else _decode(cls.from_obj, raw)

    @classmethod
    def from_obj(cls, obj: Any) -> Signature:
        """A Signature from decoded JSON, with Go's decoding rules (see :meth:`from_json`)."""
        w = "Signature"
        if type(obj) is dict and all(k in _SIG_FIELDS for k in obj):
            d, fork = obj, False  # upstream keys, exactly spelled: the hot path
        else:
            d = _fold(obj, cls.ALL_FIELDS, "tasks.Signature")
            fork = any(k in FORK_ONLY_FIELDS for k in d)
        headers = d.get("Headers")
        if headers is not None and not isinstance(headers, dict):
            raise DecodeError(f"json: cannot unmarshal {_kind(headers)} into Go struct field Signature.Headers of type tasks.Headers")
        cb = d.get("ChordCallback")
        sig = cls(
            uuid=_str(d, "UUID", w),
            name=_str(d, "Name", w),
            routing_key=_str(d, "RoutingKey", w),
            eta=_fork_eta(d) if fork else _time(d, "ETA", w, nullable=True),
            group_uuid=_str(d, "GroupUUID", w),
            group_task_count=_int(d, "GroupTaskCount", w),
            args=_decode_list(d.get("Args"), Arg.from_obj, "Signature.Args"),
            headers=headers,
            priority=_int(d, "Priority", w, 0, 255, "uint8"),
            immutable=_bool(d, "Immutable", w),
            retry_count=_int(d, "RetryCount", w),
            retry_timeout=_int(d, "RetryTimeout", w),
            on_success=_decode_list(d.get("OnSuccess"), cls._nested, "Signature.OnSuccess"),
            on_error=_decode_list(d.get("OnError"), cls._nested, "Signature.OnError"),
            chord_callback=None if cb is None else cls.from_obj(cb),
            broker_message_group_id=_str(d, "BrokerMessageGroupId", w),
            sqs_receipt_handle=_str(d, "SQSReceiptHandle", w),
            stop_task_deletion_on_error=_bool(d, "StopTaskDeletionOnError", w),
            ignore_when_task_not_registered=_bool(d, "IgnoreWhenTaskNotRegistered", w),
        )
        if fork:
            sig.wire_dialect = SUBLIME
            sig.delay = _int(d, "Delay", w, go_type="time.Duration")
            sig.ingestion_time = _fork_time(d, "IngestionTime")
            sig.first_received = _fork_time(d, "FirstReceived")
            received = _fork_time(d, "ReceivedAt")  # Go's zero time = unset
            sig.received_at = None if received is None or received == _ZERO_TIME else received
            sig.attempt_count = _int(d, "AttemptCount", w)
            sig.split_span = _bool(d, "SplitSpan", w)
            sig.sqs_message_id = _str(d, "SQSMessageID", w)
            sig.azure_message_id = _str(d, "AzureMessageID", w)
            sig.azure_pop_receipt = _str(d, "AzurePopReceipt", w)
            sig.azure_message_content = _str(d, "AzureMessageContent", w)
            sig.no_backend = _bool(d, "NoBackend", w)
        return sig

    @classmethod
    def _nested(cls, obj: Any) -> Signature:
        if obj is None:
            raise DecodeError("null signature inside OnSuccess/OnError (Go would crash on it)")
        return cls.from_obj(obj)

    # -- helpers ------------------------------------------------------------------------
    def copy(self, **changes: Any) -> Signature:
        """A deep copy (nested callbacks and args copied too) with ``changes`` applied."""
        new = dataclasses.replace(
            self,
            args=None if self.args is None else [dataclasses.replace(a) for a in self.args],
            headers=None if self.headers is None else dict(self.headers),
            on_success=None if self.on_success is None else [s.copy() for s in self.on_success],
            on_error=None if self.on_error is None else [s.copy() for s in self.on_error],
            chord_callback=None if self.chord_callback is None else self.chord_callback.copy(),
        )
        for k, v in changes.items():
            setattr(new, k, v)
        return new

    def python_args(self) -> list[Any]:
        """The arguments as Python values (Go's conversion rules; ArgTypeError on mismatch)."""
        return [a.python_value for a in self.args or ()]


#: upstream's keys as a set: the decoder's hot path (a message spelled exactly so)
_SIG_FIELDS: Final = frozenset(Signature.FIELDS)
_ARG_FIELDS: Final = frozenset(Arg.FIELDS)


def _fast_from_json(raw: object) -> Signature | None:
    """The Signature of ``raw`` through :mod:`.fastjson`, or None where the exact decoder
    must decide."""
    obj = fastjson.signature_obj(raw)
    if obj is None:
        return None
    try:
        return _fast_signature(obj, b"-0" in raw)  # type: ignore[operator]
    except Exception:  # fastjson.Unsure, a bad ETA, anything unforeseen: the exact decoder
        return None


def _fast_signature(d: Any, neg_zero: bool) -> Signature:
    """:meth:`Signature.from_obj` of what :func:`.fastjson.signature_obj` parsed (plain ints),
    for the common shape only: upstream keys spelled exactly, every field of its Go type (or
    null), ``Number`` made of the ints kept as literals (argument values, headers).
    :class:`.fastjson.Unsure` for anything else: the exact decoder then decides (and makes
    the error, if any)."""
    if type(d) is not dict or not _SIG_FIELDS.issuperset(d):
        raise fastjson.Unsure
    g = d.get
    eta = g("ETA")
    if eta is not None:
        if type(eta) is not str:
            raise fastjson.Unsure
        eta = GoTime.parse(eta)  # raising: Unsure too (see from_json)
    headers = g("Headers")
    if headers is not None:
        if type(headers) is not dict:
            raise fastjson.Unsure
        headers = fastjson.numbers(headers, neg_zero)
    args = g("Args")
    if args is not None:
        if type(args) is not list:
            raise fastjson.Unsure
        args = [_fast_arg(a, neg_zero) for a in args]
    cb = g("ChordCallback")
    if cb is not None:
        cb = _fast_signature(cb, neg_zero)
    return Signature(
        _fs(g("UUID")), _fs(g("Name")), _fs(g("RoutingKey")), eta, _fs(g("GroupUUID")),
        _fi(g("GroupTaskCount")), args, headers, _fi(g("Priority"), 0, 255), _fb(g("Immutable")),
        _fi(g("RetryCount")), _fi(g("RetryTimeout")), _fast_list(g("OnSuccess"), neg_zero),
        _fast_list(g("OnError"), neg_zero), cb, _fs(g("BrokerMessageGroupId")),
        _fs(g("SQSReceiptHandle")), _fb(g("StopTaskDeletionOnError")),
        _fb(g("IgnoreWhenTaskNotRegistered")),
    )


def _fast_arg(a: Any, neg_zero: bool) -> Arg:
    if a is None:
        return Arg("", None)
    if type(a) is not dict or not _ARG_FIELDS.issuperset(a):
        raise fastjson.Unsure
    return Arg(_fs(a.get("Type")), fastjson.numbers(a.get("Value"), neg_zero), _fs(a.get("Name")))


def _fast_list(v: Any, neg_zero: bool) -> list[Signature] | None:
    if v is None:
        return None
    if type(v) is not list:
        raise fastjson.Unsure
    return [_fast_signature(s, neg_zero) for s in v]  # a null element: Unsure (not a dict)


def _fs(v: Any) -> str:
    if type(v) is str:
        return v
    if v is None:
        return ""
    raise fastjson.Unsure


def _fb(v: Any) -> bool:
    if type(v) is bool:
        return v
    if v is None:
        return False
    raise fastjson.Unsure


def _fi(v: Any, lo: int = _INT_MIN, hi: int = _INT_MAX) -> int:
    if type(v) is int and lo <= v <= hi:
        return v
    if v is None:
        return 0
    raise fastjson.Unsure


# --------------------------------------------------------------------------------------
# TaskState / GroupMeta
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class TaskState:
    """What a result backend stores for a task (``tasks.TaskState``)."""

    task_uuid: str
    state: str
    task_name: str = ""
    results: list[TaskResult] | None = None
    error: str = ""
    created_at: GoTime = field(default_factory=GoTime.zero)
    ttl: int = 0

    FIELDS: ClassVar[tuple[str, ...]] = (
        "TaskUUID", "TaskName", "State", "Results", "Error", "CreatedAt", "TTL",
    )

    def head(self) -> str:
        """JSON up to and including ``"TaskName":`` (for server-side merges)."""
        return '{"TaskUUID":' + encode_str(self.task_uuid) + ',"TaskName":'

    def middle(self) -> str:
        """JSON from ``,"State"`` up to and including ``"CreatedAt":``."""
        return (
            ',"State":' + encode_str(self.state)
            + ',"Results":' + _encode_list(self.results)
            + ',"Error":' + encode_str(self.error)
            + ',"CreatedAt":'
        )

    def tail(self) -> str:
        """The JSON after ``CreatedAt`` (``,"TTL":…}``): the Redis merge script splices the stored name and time in between."""
        return ',"TTL":' + str(self.ttl) + "}"

    def to_go_json(self) -> str:
        """This state as Go's ``encoding/json`` writes a ``tasks.TaskState`` (text)."""
        created = self.created_at
        return (
            self.head() + encode_str(self.task_name) + self.middle()
            + ('"' + ZERO_TIME_TEXT + '"' if created is None else '"' + created.isoformat() + '"')
            + self.tail()
        )

    def to_json(self) -> bytes:
        """This state as Go writes it, UTF-8 bytes."""
        return to_bytes(self.to_go_json())

    @property
    def ready(self) -> bool:
        """SUCCESS or FAILURE (Machinery's "completed")."""
        return self.state in READY_STATES

    def python_results(self) -> list[Any]:
        """The results as Python values (Go's reflection rules; raises where Go's ``AsyncResult`` would)."""
        return [r.python_value for r in self.results or ()]

    @classmethod
    def from_json(cls, raw: bytes | bytearray | memoryview | str) -> TaskState:
        """Decode a stored state as Go would (:class:`DecodeError` with the raw bytes if Go could not)."""
        return _decode(cls.from_obj, raw)

    @classmethod
    def from_obj(cls, obj: Any) -> TaskState:
        """A TaskState from decoded JSON."""
        w = "TaskState"
        d = _fold(obj, cls.FIELDS, "tasks.TaskState")
        created = _time(d, "CreatedAt", w, nullable=False)
        assert created is not None
        return cls(
            task_uuid=_str(d, "TaskUUID", w),
            task_name=_str(d, "TaskName", w),
            state=_str(d, "State", w),
            results=_decode_list(d.get("Results"), TaskResult.from_obj, "TaskState.Results"),
            error=_str(d, "Error", w),
            created_at=created,
            ttl=_int(d, "TTL", w, go_type="int64"),
        )


@dataclass(slots=True)
class GroupMeta:
    """What a result backend stores for a group (``tasks.GroupMeta``)."""

    group_uuid: str
    task_uuids: list[str]
    chord_triggered: bool = False
    lock: bool = False
    created_at: GoTime = field(default_factory=GoTime.zero)
    ttl: int = 0

    FIELDS: ClassVar[tuple[str, ...]] = (
        "GroupUUID", "TaskUUIDs", "ChordTriggered", "Lock", "CreatedAt", "TTL",
    )

    def to_go_json(self) -> str:
        """This group meta as Go's ``encoding/json`` writes a ``tasks.GroupMeta`` (text)."""
        uuids = self.task_uuids
        return (
            '{"GroupUUID":' + encode_str(self.group_uuid)
            + ',"TaskUUIDs":' + ("null" if uuids is None else "[" + ",".join([encode_str(u) for u in uuids]) + "]")
            + ',"ChordTriggered":' + _b(self.chord_triggered)
            + ',"Lock":' + _b(self.lock)
            + ',"CreatedAt":"' + self.created_at.isoformat() + '"'
            + ',"TTL":' + str(self.ttl) + "}"
        )

    def to_json(self) -> bytes:
        """This group meta as Go writes it, UTF-8 bytes."""
        return to_bytes(self.to_go_json())

    @classmethod
    def from_json(cls, raw: bytes | bytearray | memoryview | str) -> GroupMeta:
        """Decode a stored group meta as Go would (:class:`DecodeError` with the raw bytes if not)."""
        return _decode(cls.from_obj, raw)

    @classmethod
    def from_obj(cls, obj: Any) -> GroupMeta:
        """A GroupMeta from decoded JSON."""
        w = "GroupMeta"
        d = _fold(obj, cls.FIELDS, "tasks.GroupMeta")
        uuids = d.get("TaskUUIDs")
        if uuids is not None and not (isinstance(uuids, list) and all(isinstance(u, str) for u in uuids)):
            raise DecodeError("json: cannot unmarshal into Go struct field GroupMeta.TaskUUIDs of type []string")
        created = _time(d, "CreatedAt", w, nullable=False)
        assert created is not None
        return cls(
            group_uuid=_str(d, "GroupUUID", w),
            task_uuids=list(uuids or []),
            chord_triggered=_bool(d, "ChordTriggered", w),
            lock=_bool(d, "Lock", w),
            created_at=created,
            ttl=_int(d, "TTL", w, go_type="int64"),
        )


__all__ = [
    "ALL_STATES",
    "FAILURE",
    "PENDING",
    "READY_STATES",
    "RECEIVED",
    "RETRY",
    "STARTED",
    "SUCCESS",
    "Arg",
    "GroupMeta",
    "ProtocolError",
    "Signature",
    "TaskResult",
    "TaskState",
]
