"""JSON exactly as Go's ``encoding/json`` writes it, and decoding as lenient as Go's.

Encoding differences from :func:`json.dumps` that matter on the wire:

* compact separators, UTF-8 output (non-ASCII not escaped);
* ``<``, ``>``, ``&``, U+2028 and U+2029 escaped as ``\\u003c`` … (HTML-safe escaping);
* invalid text (lone surrogates) written as ``\\ufffd``;
* floats in Go's shortest form (``1`` not ``1.0``, ``100000000000000000000`` not ``1e+20``,
  ``1e-7`` not ``1e-07``); NaN and ±Inf refused as Go refuses them;
* float32 values in their 32-bit shortest form (``float32(0.1)`` → ``0.1``);
* map keys sorted by their bytes; ``bytes`` as padded standard base64.

Decoding keeps every JSON number as a :class:`Number` holding the literal text,
like Go's ``json.Decoder.UseNumber``: integers of any size stay exact, and a value
that is forwarded (retry, callback, delayed-task move) is written back verbatim.
"""

from __future__ import annotations

import base64
import codecs
import json
import math
import re
import struct
from collections.abc import Callable, Mapping
from decimal import Decimal
from fractions import Fraction
from json.encoder import encode_basestring
from typing import Any, Final

from ..exceptions import DecodeError, EncodeError
from .gotime import GoTime


class Number:
    """A JSON number literal as received (Go's ``json.Number``)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def is_integer_literal(self) -> bool:
        t = self.text
        return "." not in t and "e" not in t and "E" not in t

    def to_python(self) -> int | float:
        """``int`` for integer literals, ``float`` otherwise."""
        if self.is_integer_literal():
            return int(self.text)
        return float(self.text)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Number):
            return self.text == other.text
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"Number({self.text!r})"

    def __str__(self) -> str:
        return self.text


# --------------------------------------------------------------------------------------
# strings
# --------------------------------------------------------------------------------------

_HTML_UNSAFE = re.compile("[<>&\u2028\u2029]")
_HTML_ESCAPES: Final = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def _html_escape(m: re.Match[str]) -> str:
    return _HTML_ESCAPES[m.group()]


def _gojson_errors(err: UnicodeError) -> tuple[str, int]:
    # Lone surrogates can only appear inside JSON strings: Go writes U+FFFD as an escape.
    assert isinstance(err, UnicodeEncodeError)
    return "\\ufffd" * (err.end - err.start), err.end


codecs.register_error("machinery_compat.gojson", _gojson_errors)

_encode_basestring: Callable[[str], str] = encode_basestring


#: encoded short strings (type names, task names, queues, ""): most of a message's strings
#: repeat from one message to the next; bounded (cleared when full)
_short: dict[str, str] = {}
_SHORT_LEN: Final = 32
_SHORT_MAX: Final = 4096


def encode_str(s: str) -> str:
    """A JSON string literal as Go writes it."""
    r = _short.get(s)
    if r is not None:
        return r
    r = _encode_basestring(s)
    if not s.isascii() or "<" in s or ">" in s or "&" in s:
        r = _HTML_UNSAFE.sub(_html_escape, r)
    if len(s) <= _SHORT_LEN:
        if len(_short) >= _SHORT_MAX:
            _short.clear()
        _short[s] = r
    return r


def to_bytes(text: str) -> bytes:
    """UTF-8 bytes of encoded JSON text; lone surrogates become ``\\ufffd`` as in Go."""
    return text.encode("utf-8", "machinery_compat.gojson")


# --------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------

_F32 = struct.Struct("<f")
_U32 = struct.Struct("<I")
FLOAT32_MAX: Final = 3.4028234663852886e38
#: Half an ulp above FLOAT32_MAX (2**128 - 2**103): from here on float32(x) is Inf.
_F32_OVERFLOW: Final = 3.4028235677973366e38
#: float32(1e-6): Go compares float32 values against the exponent cut-off in 32 bits.
_F32_SMALL: Final = 9.999999974752427e-07


def _fixed(shortest: str) -> str:
    """Plain decimal notation of a shortest-digits repr."""
    s = format(Decimal(shortest), "f") if "e" in shortest or "E" in shortest else shortest
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def _go_float(shortest: str, value: float, small: float) -> str:
    a = abs(value)
    if a < small or a >= 1e21:
        # exponent form as Go cleans it: shortest mantissa, exponent without leading zeros
        mant, _, exp = format(Decimal(shortest), "e").partition("e")
        if "." in mant:
            mant = mant.rstrip("0").rstrip(".")
        return f"{mant}e{exp}"
    return _fixed(shortest)


def encode_float64(value: float) -> str:
    """A float64 as Go's ``encoding/json`` writes it."""
    if math.isnan(value) or math.isinf(value):
        raise EncodeError(f"json: unsupported value: {value!r} (Go cannot encode NaN or Inf)")
    if value == 0.0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    r = repr(value)
    if "e" not in r and 1e-6 <= abs(value) < 1e21:
        return r[:-2] if r.endswith(".0") else r
    return _go_float(r, value, 1e-6)


def round_float32(value: float) -> float:
    """The nearest float32, as a Python float (Go's ``float32(x)``)."""
    if math.isnan(value) or math.isinf(value):
        return value
    a = abs(value)
    if a > FLOAT32_MAX:
        # IEEE round-to-nearest-even: up to half an ulp above the largest float32 still
        # rounds down to it (Go's float32(3.4028235e38)); from there on it is +/-Inf, which
        # encoding/json refuses.  (struct.pack raises OverflowError for both.)
        return math.copysign(FLOAT32_MAX if a < _F32_OVERFLOW else math.inf, value)
    return float(_F32.unpack(_F32.pack(value))[0])


def _shortest32(value: float) -> str:
    """Shortest decimal digits that read back as the float32 ``value`` (finite, non-zero).

    Exact (rational) arithmetic: of the shortest decimals inside the rounding interval, the
    one nearest to the value; exact ties go to the even digit, except in the narrower
    interval just above a power of two, where Go's Dragonbox (Go >= 1.26) rounds up
    (``float32(2**-12)`` -> ``0.00024414063``; Ryu in Go <= 1.25 wrote ``0.00024414062``).
    """
    a = abs(value)
    bits = _U32.unpack(_F32.pack(a))[0]
    exact = Fraction(a)
    below = Fraction(_F32.unpack(_U32.pack(bits - 1))[0])
    if bits < 0x7F7FFFFF:
        above = Fraction(_F32.unpack(_U32.pack(bits + 1))[0])
    else:
        above = 2 * exact - below  # the step above the largest float32 (2**128)
    lo = (below + exact) / 2
    hi = (exact + above) / 2
    inclusive = bits % 2 == 0  # round-half-even parsing takes a bound back to this value
    shorter = bits & 0x7FFFFF == 0 and bits >= 0x800000  # power of two: narrower below
    top = Decimal(a).adjusted()  # decimal exponent of the leading digit
    for p in range(1, 10):
        k = top - p + 1
        scale = Fraction(10) ** k
        d = math.floor(exact / scale)
        inside = [
            c for c in (d, d + 1)
            if (lo <= c * scale <= hi if inclusive else lo < c * scale < hi)
        ]
        if not inside:
            continue
        if len(inside) == 2:
            diff = (exact - d * scale) - ((d + 1) * scale - exact)
            tie_down = not shorter and d % 2 == 0
            c = d if diff < 0 or (diff == 0 and tie_down) else d + 1
        else:
            c = inside[0]
        return ("-" if value < 0 else "") + f"{c}e{k}"
    raise AssertionError(f"no 9-digit decimal reads back as float32 {value!r}")


def encode_float32(value: float) -> str:
    """A float32 as Go writes it: rounded to 32 bits, shortest 32-bit digits."""
    value = round_float32(value)
    if math.isnan(value) or math.isinf(value):
        raise EncodeError(f"json: unsupported value: {value!r} (Go cannot encode NaN or Inf)")
    if value == 0.0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    return _go_float(_shortest32(value), value, _F32_SMALL)


# --------------------------------------------------------------------------------------
# generic values
# --------------------------------------------------------------------------------------


def encode_value(value: Any) -> str:
    """Encode a plain value the way Go would encode the equivalent Go value.

    ``None`` → ``null``; ``bool``; ``int``; ``float`` (float64); ``str``; :class:`Number`
    (verbatim); :class:`GoTime`; ``bytes`` (base64); list/tuple → array; mapping → object
    with keys sorted by bytes (Go's map order).  Objects with a ``to_go_json`` method
    encode themselves.
    """
    if value is None:
        return "null"
    t = type(value)
    if t is str:
        return encode_str(value)
    if t is bool:
        return "true" if value else "false"
    if t is int:
        return str(value)
    if t is Number:
        return value.text  # type: ignore[no-any-return]
    if t is float:
        return encode_float64(value)
    if t is list or t is tuple:
        return "[" + ",".join([encode_value(v) for v in value]) + "]"
    if isinstance(value, Mapping):
        return encode_map(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return '"' + base64.b64encode(bytes(value)).decode("ascii") + '"'
    if isinstance(value, GoTime):
        return '"' + value.isoformat() + '"'
    to_go = getattr(value, "to_go_json", None)
    if to_go is not None:
        return to_go()  # type: ignore[no-any-return]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return encode_float64(float(value))
    if isinstance(value, str):
        return encode_str(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ",".join([encode_value(v) for v in value]) + "]"
    raise EncodeError(f"json: unsupported type: {type(value).__name__} ({value!r})")


def encode_map(value: Mapping[Any, Any]) -> str:
    if not value:
        return "{}"
    items = []
    for k, v in value.items():
        if not isinstance(k, str):
            raise EncodeError(f"json: unsupported map key type {type(k).__name__} ({k!r})")
        items.append((to_bytes(k), k, v))
    items.sort(key=lambda i: i[0])
    return "{" + ",".join([encode_str(k) + ":" + encode_value(v) for _, k, v in items]) + "}"


# --------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON literal {name}")


_decoder = json.JSONDecoder(
    parse_int=Number, parse_float=Number, parse_constant=_reject_constant, strict=True
)


def _gojson_decode_errors(err: UnicodeError) -> tuple[str, int]:
    # Go's decoder replaces every byte of an invalid UTF-8 sequence by its own U+FFFD
    # (utf8.DecodeRune yields (RuneError, 1)); Python's "replace" uses one per sequence.
    assert isinstance(err, UnicodeDecodeError)
    return "\ufffd" * (err.end - err.start), err.end


codecs.register_error("machinery_compat.gojson.decode", _gojson_decode_errors)

_SURROGATE = re.compile("[\ud800-\udfff]")


def _replace_surrogates(value: Any) -> Any:
    t = type(value)
    if t is str:
        return _SURROGATE.sub("\ufffd", value)
    if t is list:
        return [_replace_surrogates(v) for v in value]
    if t is dict:
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    return value


def loads(raw: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON with numbers kept as :class:`Number` (Go's ``UseNumber``).

    Invalid UTF-8 is replaced by U+FFFD byte by byte, and an escaped lone surrogate
    (``"\\ud800"``) by U+FFFD, as Go's decoder does.  Errors become :class:`DecodeError`
    carrying the raw input.
    """
    if isinstance(raw, (bytes, bytearray, memoryview)):
        text = bytes(raw).decode("utf-8", "machinery_compat.gojson.decode")
    else:
        text = raw
    try:
        value = _decoder.decode(text)
        if "\\ud" in text or "\\uD" in text:
            value = _replace_surrogates(value)
        return value
    except (ValueError, RecursionError) as e:
        raise DecodeError(
            f"invalid JSON: {e}", raw if isinstance(raw, (bytes, str)) else bytes(raw)
        ) from e


def plain(value: Any) -> Any:
    """Replace :class:`Number` literals by ``int``/``float`` throughout a decoded value."""
    t = type(value)
    if t is Number:
        return value.to_python()
    if t is list:
        return [plain(v) for v in value]
    if t is dict:
        return {k: plain(v) for k, v in value.items()}
    return value


def go_format(value: Any) -> str:
    """Go's ``%v`` rendering of a decoded JSON value (used in Go-identical error texts)."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Number):
        return value.text
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(go_format(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_format(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, (bytes, bytearray)):
        return "[" + " ".join(str(b) for b in value) + "]"
    return str(value)
