"""Machinery's 29 argument type names, both ways.

* :func:`encode_typed` writes a Python value as the JSON a Go reader accepts for a Go
  type name, refusing what Go would silently wrap (300 as ``int8``) or not carry at all.
* :func:`to_python` turns a received typed value into the natural Python value, with
  Go's rules (``strconv`` parsing, narrow integers wrapped as Go's conversion does) and
  Go's error texts (``"1 is not int64"``).
* :func:`infer_type` picks a Go type for a plain Python value; :func:`type_from_hint`
  reads one from a type hint (``int`` → ``int64``, ``Annotated[int, GoType("int32")]``).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..exceptions import ArgTypeError, EncodeError
from .gojson import (
    Number,
    encode_float32,
    encode_float64,
    encode_str,
    encode_value,
    go_format,
    round_float32,
)

INT_BITS: Final = {"int": 64, "int8": 8, "int16": 16, "int32": 32, "int64": 64}
UINT_BITS: Final = {"uint": 64, "uint8": 8, "uint16": 16, "uint32": 32, "uint64": 64}
FLOAT_TYPES: Final = frozenset({"float32", "float64"})
SCALAR_TYPES: Final = frozenset(
    ["bool", "string", *INT_BITS, *UINT_BITS, *FLOAT_TYPES]
)
SLICE_TYPES: Final = frozenset([f"[]{t}" for t in SCALAR_TYPES] + ["[]byte"])
#: Every type name Machinery's ``reflect.go`` accepts (29).
SUPPORTED_TYPES: Final = SCALAR_TYPES | SLICE_TYPES
BYTES_TYPES: Final = frozenset({"[]byte", "[]uint8"})

INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1
UINT64_MAX: Final = (1 << 64) - 1

_INT_LITERAL = re.compile(r"[+-]?\d+\Z", re.ASCII)


@dataclass(frozen=True, slots=True)
class GoType:
    """Marks a Go type name in a type hint: ``Annotated[int, GoType("int32")]``."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in SUPPORTED_TYPES:
            raise EncodeError(unsupported_type_message(self.name))


#: What the Go type names are, in a sentence (error messages; the README lists them all).
TYPES_IN_BRIEF: Final = (
    "Machinery's types are Go's: bool, int, int8…int64, uint, uint8…uint64, float32, float64, "
    "string, []byte and slices of these (e.g. []int64, []string); see the README's Types table"
)


def unsupported_type_message(type_name: str, *, hint: bool = True) -> str:
    """Go's ``ErrUnsupportedType`` text; with ``hint``, followed by what the types are."""
    text = f"{type_name} is not one of supported types"
    return f"{text} ({TYPES_IN_BRIEF})" if hint else text


def element_type(type_name: str) -> str:
    el = type_name[2:]
    return "uint8" if el == "byte" else el


# --------------------------------------------------------------------------------------
# Python value -> JSON for a Go type (send side: strict, no silent wrap-around)
# --------------------------------------------------------------------------------------


def _int_range(type_name: str) -> tuple[int, int]:
    if type_name in INT_BITS:
        bits = INT_BITS[type_name]
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    bits = UINT_BITS[type_name]
    return 0, (1 << bits) - 1


def _encode_scalar(type_name: str, value: Any) -> str:
    if type(value) is Number:
        return _encode_number(type_name, value)
    if type_name == "string":
        if isinstance(value, str):
            return encode_str(value)
    elif type_name == "bool":
        if isinstance(value, bool):
            return "true" if value else "false"
    elif type_name in INT_BITS or type_name in UINT_BITS:
        if isinstance(value, int) and not isinstance(value, bool):
            lo, hi = _int_range(type_name)
            if not lo <= value <= hi:
                raise EncodeError(
                    f"{value} is out of range for Go type {type_name} ({lo}..{hi}); "
                    "Go would silently wrap it around"
                )
            return str(int(value))
    elif type_name in FLOAT_TYPES:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            f = float(value)
            if math.isnan(f) or math.isinf(f):
                raise EncodeError(f"{value!r} cannot be sent as {type_name}: Go cannot encode NaN/Inf")
            if type_name == "float32":
                if math.isinf(round_float32(f)):  # Go's float32(x) would be +/-Inf
                    raise EncodeError(f"{value!r} is out of range for Go type float32")
                return encode_float32(f)
            return encode_float64(f)
    else:
        raise EncodeError(unsupported_type_message(type_name))
    raise EncodeError(
        f"{value!r} ({type(value).__name__}) cannot be sent as Go type {type_name}"
    )


def _encode_number(type_name: str, value: Number) -> str:
    # A literal received from elsewhere: forwarded verbatim if it is valid for the type.
    if type_name in FLOAT_TYPES:
        return value.text
    if type_name in INT_BITS or type_name in UINT_BITS:
        if not value.is_integer_literal():
            raise EncodeError(f"{value.text} cannot be sent as Go type {type_name}")
        return value.text
    raise EncodeError(f"{value.text} (number) cannot be sent as Go type {type_name}")


def encode_typed(type_name: str, value: Any) -> str:
    """The JSON for ``value`` as Go type ``type_name``; :class:`EncodeError` if Go can't take it."""
    if type_name in SCALAR_TYPES:
        return _encode_scalar(type_name, value)
    if type_name in SLICE_TYPES:
        if value is None:
            return "null"
        if type_name in BYTES_TYPES:
            if isinstance(value, (bytes, bytearray, memoryview)):
                return '"' + base64.b64encode(bytes(value)).decode("ascii") + '"'
            if isinstance(value, str):  # already base64 text (e.g. forwarded)
                return encode_str(value)
        if isinstance(value, (list, tuple)):
            el = element_type(type_name)
            return "[" + ",".join([_encode_scalar(el, v) for v in value]) + "]"
        raise EncodeError(
            f"{value!r} ({type(value).__name__}) cannot be sent as Go type {type_name}: "
            "slice types need a list (or bytes for []byte)"
        )
    # Unknown type name: only values that were received (and are forwarded) may pass.
    raise EncodeError(unsupported_type_message(type_name))


def encode_result_value(type_name: str, value: Any) -> str:
    """Like :func:`encode_typed` but any other Go type name gets a generic encoding.

    Results may carry type names Go readers cannot reflect (``map[string]interface {}``);
    their values are written as plain JSON.
    """
    if type_name in SUPPORTED_TYPES:
        return encode_typed(type_name, value)
    return encode_value(value)


# --------------------------------------------------------------------------------------
# received value -> Python (receive side: Go's rules and error texts)
# --------------------------------------------------------------------------------------


def _wrap(value: int, bits: int, signed: bool) -> int:
    value &= (1 << bits) - 1
    if signed and value >= 1 << (bits - 1):
        value -= 1 << bits
    return value


def _go_quote_excerpt(text: str) -> str:
    """``text`` as Go prints it in a strconv error, cut short when it is huge (the error text
    becomes the stored FAILURE; Go would print it all)."""
    return text if len(text) <= 100 else f"{text[:40]}…({len(text)} characters)…{text[-20:]}"


def _scalar_to_python(type_name: str, value: Any, lenient: bool) -> Any:
    if type_name in INT_BITS or type_name in UINT_BITS:
        signed = type_name in INT_BITS
        if type(value) is Number:
            text = value.text
        elif lenient and isinstance(value, int) and not isinstance(value, bool):
            text = str(value)
        elif lenient and isinstance(value, str) and _INT_LITERAL.match(value):
            text = value
        else:
            raise ArgTypeError(f"{go_format(value)} is not {type_name}")
        fn = "strconv.ParseInt" if signed else "strconv.ParseUint"
        if not _INT_LITERAL.match(text) or (not signed and text.startswith(("-", "+"))):
            raise ArgTypeError(f'{fn}: parsing "{text}": invalid syntax')
        # 64-bit values have at most 20 digits; a longer literal is out of range without
        # parsing it (Python refuses int() of more than 4,300 digits anyway)
        digits = len(text.lstrip("+-").lstrip("0"))
        n = int(text) if digits <= 20 else (1 << 65 if not text.startswith("-") else -(1 << 65))
        if (signed and not INT64_MIN <= n <= INT64_MAX) or (not signed and n > UINT64_MAX):
            raise ArgTypeError(f'{fn}: parsing "{_go_quote_excerpt(text)}": value out of range')
        bits = (INT_BITS if signed else UINT_BITS)[type_name]
        return _wrap(n, bits, signed) if bits < 64 else n
    if type_name in FLOAT_TYPES:
        if type(value) is Number:
            text = value.text
        elif lenient and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            text = str(value)
        else:
            raise ArgTypeError(f"{go_format(value)} is not {type_name}")
        try:
            f = float(text)
        except ValueError:
            raise ArgTypeError(f'strconv.ParseFloat: parsing "{text}": invalid syntax') from None
        if math.isinf(f):
            raise ArgTypeError(f'strconv.ParseFloat: parsing "{text}": value out of range')
        return round_float32(f) if type_name == "float32" else f
    if type_name == "string":
        if isinstance(value, str):
            return value
        if lenient and type(value) is Number:
            return value.text
        raise ArgTypeError(f"{go_format(value)} is not string")
    if type_name == "bool":
        if isinstance(value, bool):
            return value
        if lenient and isinstance(value, str) and value in ("true", "false"):
            return value == "true"
        raise ArgTypeError(f"{go_format(value)} is not bool")
    raise ArgTypeError(unsupported_type_message(type_name, hint=False))


def to_python(type_name: str, value: Any, *, lenient: bool = False) -> Any:
    """A received typed value as a Python value, following Go's ``reflect.go``.

    ``lenient=True`` additionally accepts values some backends stringify (DynamoDB writes
    ``"2"`` for an ``int64``) and plain Python numbers.
    """
    if type_name in SCALAR_TYPES:
        return _scalar_to_python(type_name, value, lenient)
    if type_name in SLICE_TYPES:
        if type_name in BYTES_TYPES:
            if value is None:
                return b""
            if isinstance(value, str):
                try:
                    return base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError) as e:
                    raise ArgTypeError(f"illegal base64 data in {value!r}: {e}") from None
            if isinstance(value, (bytes, bytearray)):
                return bytes(value)
            if isinstance(value, list):
                return bytes(_scalar_to_python("uint8", v, lenient) for v in value)
            raise ArgTypeError(f"{go_format(value)} is not []uint8")
        if value is None:
            return []
        if not isinstance(value, list):
            raise ArgTypeError(
                f"{go_format(value)} is not {type_name} (slice types need a JSON array)"
            )
        el = element_type(type_name)
        return [_scalar_to_python(el, v, lenient) for v in value]
    raise ArgTypeError(unsupported_type_message(type_name, hint=False))


# --------------------------------------------------------------------------------------
# inference and hints
# --------------------------------------------------------------------------------------

_SCALAR_INFER: Final = {bool: "bool", int: "int64", float: "float64", str: "string"}


def infer_type(value: Any) -> str:
    """The Go type name a plain Python value is sent as.

    ``bool``→``bool``, ``int``→``int64`` (``uint64`` above int64's range), ``float``→
    ``float64``, ``str``→``string``, ``bytes``→``[]byte``, homogeneous list → ``[]T``
    (ints mixed with floats → ``[]float64``).  Anything else: :class:`EncodeError`.
    """
    t = type(value)
    if t is int:
        return "uint64" if value > INT64_MAX else "int64"
    name = _SCALAR_INFER.get(t)
    if name is not None:
        return name
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "[]byte"
    if isinstance(value, (list, tuple)):
        if not value:
            raise EncodeError(
                "cannot infer a Go type for an empty list; pass Arg('[]int64', []) "
                "or annotate the parameter"
            )
        kinds = {type(v) for v in value}
        if kinds == {bool}:
            return "[]bool"
        if kinds == {int}:
            return "[]uint64" if max(value) > INT64_MAX else "[]int64"
        if kinds <= {int, float}:
            return "[]float64"
        if kinds == {str}:
            return "[]string"
        raise EncodeError(
            f"cannot infer a Go type for list of {sorted(k.__name__ for k in kinds)}; "
            "Machinery only carries homogeneous lists of bool, ints, floats or strings"
        )
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    raise EncodeError(
        f"cannot infer a Go type for {type(value).__name__} value {value!r}: "
        f"{_what_to_send(value)}"
    )


def _what_to_send(value: Any) -> str:
    """Advice for a value Machinery cannot carry as it is."""
    import datetime as dt
    import decimal
    import uuid

    if value is None:
        return ("Machinery has no null argument; leave it out (and give the parameter a "
                "default) or send a value such as an empty string")
    if isinstance(value, dict):
        return ("Machinery has no map arguments; send it as JSON in a string "
                "(json.dumps(value), json.loads in the task)")
    if isinstance(value, (set, frozenset)):
        return "send a list instead (sorted(value))"
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return ("Machinery has no time arguments; send value.isoformat() as a string, or a "
                "Unix time as int64/float64")
    if isinstance(value, dt.timedelta):
        return "send value.total_seconds() as a float64"
    if isinstance(value, decimal.Decimal):
        return "send str(value) (exact) or float(value)"
    if isinstance(value, uuid.UUID):
        return "send str(value)"
    return (f"convert it to bool, int, float, str, bytes or a list of one of them, or pass "
            f"Arg('<go type>', value); {TYPES_IN_BRIEF}")


def result_type(value: Any) -> str:
    """The Go type name a Python task result is written with.

    Like :func:`infer_type`, but values Go cannot carry get the name Go's reflection would
    print for the equivalent value (``map[string]interface {}``, ``[]interface {}``), so
    Python readers still get them back.
    """
    try:
        return infer_type(value)
    except EncodeError:
        if isinstance(value, dict):
            return "map[string]interface {}"
        if isinstance(value, (list, tuple)):
            return "[]interface {}"
        if value is None:
            return "<nil>"
        raise


_HINT_SCALARS: Final = {bool: "bool", int: "int64", float: "float64", str: "string",
                        bytes: "[]byte", bytearray: "[]byte"}


def type_from_hint(hint: Any) -> str | None:
    """A Go type name for a type hint, or ``None`` when the hint does not pin one."""
    if hint is None or hint is type(None):
        return None
    if typing.get_origin(hint) is typing.Annotated:
        for meta in hint.__metadata__:
            if isinstance(meta, GoType):
                return meta.name
            if isinstance(meta, str) and meta in SUPPORTED_TYPES:
                return meta
        return type_from_hint(typing.get_args(hint)[0])
    if isinstance(hint, GoType):
        return hint.name
    if isinstance(hint, str) and hint in SUPPORTED_TYPES:
        return hint
    scalar = _HINT_SCALARS.get(hint)
    if scalar is not None:
        return scalar
    origin = typing.get_origin(hint)
    if origin in (list, Sequence, tuple) or origin is typing.Sequence:
        args = typing.get_args(hint)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return None
        if args:
            inner = type_from_hint(args[0])
            if inner in SCALAR_TYPES:
                return "[]" + inner
    return None


def result_types_from_hint(hint: Any) -> list[str | None] | None:
    """Per-result Go types from a return annotation, or ``None`` if unknown.

    ``-> int`` gives ``["int64"]``; ``-> tuple[int, str]`` gives ``["int64", "string"]``;
    ``-> None`` gives ``[]`` (no results, like a Go task returning only ``error``).
    """
    if hint is None or hint is type(None):
        return []
    if hint is typing.Any or hint is object:
        return None
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if not (len(args) == 2 and args[1] is Ellipsis):
            return [type_from_hint(a) for a in args]
    if isinstance(hint, types.UnionType) or origin is typing.Union:
        return None
    t = type_from_hint(hint)
    return [t] if t is not None else None
