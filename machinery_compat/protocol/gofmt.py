"""Go's ``fmt`` ``%v`` rendering of result values, and its inverse where there is one.

Go Machinery's DynamoDB result backend stores every result value as the *string*
``fmt.Sprintf("%v", value)`` (protocol notes §6.5), whatever its type:

==================================  ===========================================
Go value (Machinery type)           ``%v``
==================================  ===========================================
``int64(2)``, ``uint8(255)``        ``2``, ``255``
``float64(0.5)``, ``1e6``, ``1e-5`` ``0.5``, ``1e+06``, ``1e-05`` (``%g``, shortest digits,
                                    exponent form from 1e+06 up and below 1e-04)
``float32(0.1)``                    ``0.1`` (shortest digits of the 32-bit value)
±Inf, NaN, ``-0.0``                 ``+Inf``, ``-Inf``, ``NaN``, ``-0``
``true``                            ``true``
``"a b"`` (string)                  ``a b`` (as it is, no quotes)
``[]int64{1, 2}``, ``[]string{}``   ``[1 2]``, ``[]``
``[]byte("hi")`` (``[]uint8``)      ``[104 105]``
``map[string]interface{}``          ``map[a:1 b:[2 3]]`` (keys sorted)
``nil``                             ``<nil>``
``time.Time``                       ``2024-05-01 12:34:56.123456789 +0000 UTC``
==================================  ===========================================

:func:`sprint_typed` renders a Python value the way Go renders the Go value of the given
Machinery type; :func:`sprint` renders by the Python value's own kind.  :func:`parse_typed`
turns such a string back into a Python value, using the type name:

* every scalar type round-trips exactly (``int*``/``uint*`` → ``int``, ``float64`` →
  ``float``, ``float32`` → the 32-bit value as a ``float``, ``bool``, ``string``);
* ``[]byte``/``[]uint8`` → ``bytes``, other slices of numbers and bools → ``list``;
* ``[]string`` round-trips only when no element contains a space and no element is empty
  while being the only one (``%v`` separates elements with spaces and writes ``[]`` for both
  an empty slice and ``[""]``);
* maps, ``[]interface {}``, ``time.Time``, named and pointer types do not round-trip: the
  string is returned as it is (``"map[a:1]"``); ``<nil>`` typed ``<nil>`` becomes ``None``.

Pure: standard library only, no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

from ..exceptions import ProtocolError
from .gojson import Number, _shortest32, round_float32
from .gotime import GoTime
from .gotypes import (
    BYTES_TYPES,
    FLOAT_TYPES,
    INT_BITS,
    SCALAR_TYPES,
    SLICE_TYPES,
    UINT_BITS,
    element_type,
    to_python,
)

#: Go's ``%v`` of a nil interface, pointer, map or function.
NIL: Final = "<nil>"

_INT_TEXT = re.compile(r"[+-]?\d+\Z", re.ASCII)
_FLOAT_TEXT = re.compile(
    r"[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|Inf|NaN)\Z", re.ASCII
)


# --------------------------------------------------------------------------------------
# floats
# --------------------------------------------------------------------------------------


def format_float(value: float, bits: int = 64) -> str:
    """``%v`` of a float64 (``bits=64``) or float32 (``bits=32``): Go's
    ``strconv.FormatFloat(v, 'g', -1, bits)`` as ``fmt`` prints it.

    Shortest digits that read back as the value; exponent form (``1e+06``, ``1.5e-05``, at
    least two exponent digits) when the decimal exponent is below -4 or at least 6 (``%g``
    uses precision 6 for that decision when the precision is "shortest"); ``+Inf``,
    ``-Inf``, ``NaN``; ``-0`` for negative zero.  A float32 is first rounded to 32 bits.
    """
    if bits == 32:
        value = round_float32(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0.0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    shortest = _shortest32(value) if bits == 32 else repr(value)
    sign, digit_tuple, exponent = Decimal(shortest).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple)).rstrip("0") or "0"
    # value = 0.<digits> x 10**point
    point = len(digit_tuple) + exponent
    neg = "-" if sign else ""
    exp = point - 1
    if exp < -4 or exp >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{neg}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{neg}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return neg + digits + "0" * (point - len(digits))
    return f"{neg}{digits[:point]}.{digits[point:]}"


# --------------------------------------------------------------------------------------
# %v
# --------------------------------------------------------------------------------------


def _go_time(t: GoTime) -> str:
    """Go's ``time.Time.String()``: ``2006-01-02 15:04:05.999999999 -0700 MST``."""
    text = t.isoformat()  # 2006-01-02T15:04:05.999999999Z07:00
    date, _, rest = text.partition("T")
    if rest.endswith("Z"):
        return f"{date} {rest[:-1]} +0000 UTC"
    clock, zone = rest[:-6], rest[-6:].replace(":", "")
    return f"{date} {clock} {zone} {zone}"


def _map_key_order(keys: list[Any]) -> list[Any]:
    """The order Go's ``fmt`` prints map keys in (``internal/fmtsort``): strings by their
    bytes, numbers by value; anything else by its rendering."""
    if all(isinstance(k, str) for k in keys):
        return sorted(keys, key=lambda k: k.encode("utf-8", "surrogatepass"))
    if all(isinstance(k, (int, float)) and not isinstance(k, bool) for k in keys):
        return sorted(keys)
    if all(isinstance(k, bool) for k in keys):
        return sorted(keys)  # false before true
    return sorted(keys, key=sprint)


def sprint(value: Any) -> str:
    """``%v`` of the Go value a plain Python value stands for, by its Python kind.

    ``None`` → ``<nil>``; ``bool``; ``int``; ``float`` as float64; ``str`` as it is;
    :class:`~machinery_compat.protocol.gojson.Number` (Go's ``json.Number``, a string) as
    its literal; ``bytes`` → ``[104 105]``; list/tuple → ``[a b]``; mapping →
    ``map[k:v ...]`` with Go's key order; :class:`GoTime` → ``time.Time.String()``.
    """
    if value is None:
        return NIL
    t = type(value)
    if t is str:
        return value  # type: ignore[no-any-return]
    if t is bool:
        return "true" if value else "false"
    if t is int:
        return str(value)
    if t is float:
        return format_float(value)
    if t is Number:
        return value.text  # type: ignore[no-any-return]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "[" + " ".join(str(b) for b in bytes(value)) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(sprint(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "map[" + " ".join(
            f"{sprint(k)}:{sprint(value[k])}" for k in _map_key_order(list(value))
        ) + "]"
    if isinstance(value, GoTime):
        return _go_time(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return format_float(float(value))
    if isinstance(value, str):
        return str(value)
    return str(value)


def sprint_typed(type_name: str, value: Any) -> str:
    """``%v`` of the Go value of Machinery type ``type_name`` that ``value`` stands for.

    The value is first converted with Go's rules (:func:`~.gotypes.to_python`, lenient):
    an ``int`` typed ``float64`` prints as a float (``2``, ``1e+06``), a ``float32`` with
    its 32-bit digits, a base64 string typed ``[]uint8`` as the bytes it holds, a narrow
    integer wrapped as Go's conversion wraps it.  Values that do not fit their type, and
    type names Machinery does not know (``map[string]interface {}``, ``[]interface {}``),
    are printed by their Python kind (:func:`sprint`).
    """
    if type_name in SCALAR_TYPES or type_name in SLICE_TYPES:
        try:
            converted = to_python(type_name, value, lenient=True)
        except ProtocolError:
            return sprint(value)
        if type_name in FLOAT_TYPES:
            return format_float(converted, 32 if type_name == "float32" else 64)
        if type_name in ("[]float32", "[]float64"):
            bits = 32 if type_name == "[]float32" else 64
            return "[" + " ".join(format_float(v, bits) for v in converted) + "]"
        return sprint(converted)
    return sprint(value)


# --------------------------------------------------------------------------------------
# the way back
# --------------------------------------------------------------------------------------


def _scalar(type_name: str, text: str) -> Any:
    """One ``%v`` scalar back as a Python value; ``ValueError`` if it is not one."""
    if type_name == "string":
        return text
    if type_name == "bool":
        if text in ("true", "false"):
            return text == "true"
        raise ValueError(text)
    if type_name in INT_BITS or type_name in UINT_BITS:
        if not _INT_TEXT.match(text) or len(text) > 21:
            raise ValueError(text)
        n = int(text)
        if type_name in INT_BITS:
            bits = INT_BITS[type_name]
            lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        else:
            lo, hi = 0, (1 << UINT_BITS[type_name]) - 1
        if not lo <= n <= hi:  # not what Go prints for a value of this type
            raise ValueError(text)
        return n
    if type_name in FLOAT_TYPES:
        if not _FLOAT_TEXT.match(text):
            raise ValueError(text)
        f = float(text)
        return round_float32(f) if type_name == "float32" else f
    raise ValueError(type_name)


def parse_typed(type_name: str, text: str) -> Any:
    """The Python value of a ``%v`` string written for Machinery type ``type_name``.

    Inverse of :func:`sprint_typed` for every scalar type and for slices of numbers and
    bools (see the module documentation for ``[]string``).  ``[]byte``/``[]uint8`` give
    ``bytes``.  Text that does not parse as its type, and every other type name, is
    returned unchanged (``<nil>`` typed ``<nil>`` gives ``None``).
    """
    try:
        if type_name in SCALAR_TYPES:
            return _scalar(type_name, text)
        if type_name in SLICE_TYPES:
            if not (text.startswith("[") and text.endswith("]")):
                return text
            inner = text[1:-1]
            parts = inner.split(" ") if inner else []
            el = element_type(type_name)
            if type_name in BYTES_TYPES:
                return bytes(_scalar("uint8", p) for p in parts)
            return [_scalar(el, p) for p in parts]
    except ValueError:
        return text
    if type_name == NIL and text == NIL:
        return None
    return text


__all__ = ["NIL", "format_float", "parse_typed", "sprint", "sprint_typed"]
