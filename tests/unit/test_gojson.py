"""Go ``encoding/json`` byte rules (machinery-protocol.md §1.2, §1.6) for the codec core.

Expected texts marked "Go" were produced by Go's encoder (go1.26, the toolchain the interop
programs are built with); the others are the rules of §1.2 spelled out.
"""

from __future__ import annotations

import json
import math
import re
import struct
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from machinery_compat.exceptions import DecodeError, EncodeError
from machinery_compat.protocol.gojson import (
    FLOAT32_MAX,
    Number,
    encode_float32,
    encode_float64,
    encode_map,
    encode_str,
    encode_value,
    go_format,
    loads,
    plain,
    round_float32,
    to_bytes,
)
from machinery_compat.protocol.gotime import GoTime

_F32 = struct.Struct("<f")
_U32 = struct.Struct("<I")


def f32(x: float) -> float:
    return float(_F32.unpack(_F32.pack(x))[0])


# --------------------------------------------------------------------------------------
# float64
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, "1"),
        (1.5, "1.5"),
        (-1.5, "-1.5"),
        (0.1, "0.1"),
        (0.0, "0"),
        (-0.0, "-0"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (1e16, "10000000000000000"),
        (1e-5, "0.00001"),
        (0.000123, "0.000123"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (-1e-7, "-1e-7"),
        (2.5e-8, "2.5e-8"),
        (123456789012345678.0, "123456789012345680"),
        (123456.789, "123456.789"),
        (999999999999999900000.0, "999999999999999900000"),
        (1e100, "1e+100"),
        (1e300, "1e+300"),
        (5e-324, "5e-324"),
        (1.5e-323, "1.5e-323"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
    ],
)
def test_encode_float64_go_table(value: float, expected: str) -> None:
    assert encode_float64(value) == expected
    assert encode_value(value) == expected


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_are_refused(value: float) -> None:
    with pytest.raises(EncodeError):
        encode_float64(value)
    with pytest.raises(EncodeError):
        encode_float32(value)
    with pytest.raises(EncodeError):
        encode_value([1, value])


# --------------------------------------------------------------------------------------
# float32
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.1, "0.1"),
        (16777217.0, "16777216"),
        (f32(0.1) + f32(0.2), "0.3"),
        (1.5, "1.5"),
        (-2.5, "-2.5"),
        (0.0, "0"),
        (-0.0, "-0"),
        (123456789.0, "123456790"),
        (1e-5, "0.00001"),
        (1e-7, "1e-7"),
        (1e21, "1e+21"),
        # float32(1e-6) is just below 1e-6; Go compares in float32 and keeps plain notation
        (1e-6, "0.000001"),
        (1.401298464324817e-45, "1e-45"),  # smallest subnormal
        (FLOAT32_MAX, "3.4028235e+38"),
        (3.4028235e38, "3.4028235e+38"),  # rounds down to the largest float32
        # powers of two: the rounding interval is narrower below (Go)
        (1.262177448353619e-29, "1.2621775e-29"),
        (1.5474250491067253e26, "1.5474251e+26"),
        (2.0**-12, "0.00024414063"),  # exact tie next to a power of two: Go >= 1.26 rounds up
        # exact ties elsewhere go to the even digit (Go)
        (4017033.75, "4017033.8"),
        (4017033.25, "4017033.2"),
    ],
)
def test_encode_float32_go_table(value: float, expected: str) -> None:
    assert encode_float32(value) == expected


@pytest.mark.parametrize("value", [3.5e38, -1e39, 2.0**128 - 2.0**103])
def test_encode_float32_overflow_refused(value: float) -> None:
    with pytest.raises(EncodeError):
        encode_float32(value)


def test_round_float32() -> None:
    assert round_float32(0.1) == 0.10000000149011612
    assert round_float32(16777217.0) == 16777216.0
    assert round_float32(3.4028235e38) == FLOAT32_MAX
    assert round_float32(-3.4028235e38) == -FLOAT32_MAX
    assert round_float32(2.0**128 - 2.0**103) == math.inf  # the tie goes to Inf (even)
    assert round_float32(-1e39) == -math.inf
    assert math.isnan(round_float32(math.nan))


# --------------------------------------------------------------------------------------
# strings
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("s", "expected"),
    [
        ("", '""'),
        ("plain", '"plain"'),
        ("<", '"\\u003c"'),
        (">", '"\\u003e"'),
        ("&", '"\\u0026"'),
        ("a<b>&c", '"a\\u003cb\\u003e\\u0026c"'),
        ("\u2028", '"\\u2028"'),
        ("\u2029", '"\\u2029"'),
        ("é<\u2028", '"é\\u003c\\u2028"'),
        ("\x00", '"\\u0000"'),
        ("\x01", '"\\u0001"'),
        ("\x0b", '"\\u000b"'),
        ("\x1f", '"\\u001f"'),
        ("\x1b[0m", '"\\u001b[0m"'),
        ("\b", '"\\b"'),
        ("\f", '"\\f"'),
        ("\n", '"\\n"'),
        ("\r", '"\\r"'),
        ("\t", '"\\t"'),
        ('"', '"\\""'),
        ("\\", '"\\\\"'),
        ("\x7f", '"\x7f"'),
        ("héllo 世界 🎉", '"héllo 世界 🎉"'),
        ("\ufffd", '"\ufffd"'),
        ("/", '"/"'),
    ],
)
def test_encode_str(s: str, expected: str) -> None:
    assert encode_str(s) == expected
    assert encode_value(s) == expected


def test_go_edge_string_bytes() -> None:
    # the string arguments of the Go-captured "edge_values" case, byte for byte
    text = "".join(
        encode_str(s) for s in ["<>&", "\u2028", "\u2029", '\x00\x1f\b\f\n\r\t"\\', "héllo 世界 🎉"]
    )
    assert to_bytes(text) == (
        b'"\\u003c\\u003e\\u0026""\\u2028""\\u2029""\\u0000\\u001f\\b\\f\\n\\r\\t\\"\\\\"'
        b'"h\xc3\xa9llo \xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x8e\x89"'
    )


def test_lone_surrogate_becomes_replacement_escape() -> None:
    assert to_bytes(encode_str("a\ud800b")) == b'"a\\ufffdb"'
    assert to_bytes(encode_str("\udfff\ud800")) == b'"\\ufffd\\ufffd"'
    assert to_bytes(encode_value({"k": ["\udc80"]})) == b'{"k":["\\ufffd"]}'
    # a proper pair is a single character and stays UTF-8
    assert to_bytes(encode_str("\U0001f600")) == b'"\xf0\x9f\x98\x80"'


# --------------------------------------------------------------------------------------
# other values
# --------------------------------------------------------------------------------------


def test_maps_sorted_by_key_bytes() -> None:
    value = {"b": 1, "a": 2, "B": 3, "é": 4, "aa": 5, "": 6, "\U0001f600": 7, "\uffff": 8}
    assert encode_value(value) == (
        '{"":6,"B":3,"a":2,"aa":5,"b":1,"é":4,"\uffff":8,"\U0001f600":7}'
    )
    assert encode_map({"z": {"y": None, "x": []}}) == '{"z":{"x":[],"y":null}}'
    assert encode_map({"<": "&"}) == '{"\\u003c":"\\u0026"}'


def test_nil_versus_empty() -> None:
    assert encode_value(None) == "null"
    assert encode_value([]) == "[]"
    assert encode_value(()) == "[]"
    assert encode_value({}) == "{}"
    assert encode_value(b"") == '""'


def test_scalars_and_containers() -> None:
    assert encode_value(True) == "true"
    assert encode_value(False) == "false"
    assert encode_value(0) == "0"
    assert encode_value(-(2**63)) == "-9223372036854775808"
    assert encode_value(2**64 - 1) == "18446744073709551615"
    assert encode_value([1, 1.0, "x", None, [True]]) == '[1,1,"x",null,[true]]'
    assert encode_value((1, 2)) == "[1,2]"


def test_bytes_are_padded_base64() -> None:
    assert encode_value(b"hi") == '"aGk="'
    assert encode_value(bytearray(b"\x00\xff")) == '"AP8="'
    assert encode_value(memoryview(b"abc")) == '"YWJj"'


def test_number_is_written_verbatim() -> None:
    assert encode_value(Number("1.0")) == "1.0"
    assert encode_value(Number("1e3")) == "1e3"
    assert encode_value(Number("18446744073709551615")) == "18446744073709551615"
    assert encode_value({"a": [Number("-0")]}) == '{"a":[-0]}'


def test_gotime_is_rfc3339_string() -> None:
    assert encode_value(GoTime.parse("2024-05-01T12:00:00.5+02:00")) == (
        '"2024-05-01T12:00:00.5+02:00"'
    )


@pytest.mark.parametrize("value", [object(), {1, 2}, 1j])
def test_unsupported_values_refused(value: object) -> None:
    with pytest.raises(EncodeError):
        encode_value(value)


def test_non_string_map_key_refused() -> None:
    with pytest.raises(EncodeError):
        encode_value({1: "a"})


def test_to_bytes_is_utf8() -> None:
    assert to_bytes('"é"') == b'"\xc3\xa9"'


# --------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------


def test_loads_keeps_number_literals() -> None:
    value = loads(b'{"a":1,"b":1.0,"c":-9223372036854775808,"d":18446744073709551615,"e":1e3}')
    assert value == {
        "a": Number("1"),
        "b": Number("1.0"),
        "c": Number("-9223372036854775808"),
        "d": Number("18446744073709551615"),
        "e": Number("1e3"),
    }
    assert all(type(v) is Number for v in value.values())
    assert encode_value(value) == (
        '{"a":1,"b":1.0,"c":-9223372036854775808,"d":18446744073709551615,"e":1e3}'
    )


def test_loads_accepts_str_and_buffers() -> None:
    assert loads('["x"]') == ["x"]
    assert loads(bytearray(b"[true]")) == [True]
    assert loads(memoryview(b"null")) is None


def test_loads_duplicate_keys_last_wins() -> None:
    assert loads(b'{"a":1,"a":2}') == {"a": Number("2")}


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"",
        b"{",
        b'{"a":NaN}',
        b"[Infinity]",
        b'["a\nb"]',  # raw control character inside a string
        b"{'a':1}",
        b"[1,]",
    ],
)
def test_loads_errors_carry_raw_bytes(raw: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        loads(raw)
    assert info.value.raw == raw


def test_loads_error_from_memoryview_and_str() -> None:
    with pytest.raises(DecodeError) as info:
        loads(memoryview(b"[x]"))
    assert info.value.raw == b"[x]"
    with pytest.raises(DecodeError) as info:
        loads("[é")
    assert info.value.raw == "[é".encode()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # Go re-encodes each of these with one U+FFFD per invalid byte (verified with go1.26)
        (b'["\xe2\x82A"]', '["\ufffd\ufffdA"]'),
        (b'["\xed\xa0\x80"]', '["\ufffd\ufffd\ufffd"]'),
        (b'["\xc0\x80"]', '["\ufffd\ufffd"]'),
        (b'["a\xe2\x82"]', '["a\ufffd\ufffd"]'),
        (b'["\xf0\x9f\x98"]', '["\ufffd\ufffd\ufffd"]'),
        (b'["\xff"]', '["\ufffd"]'),
        # escaped lone surrogates become U+FFFD characters (raw UTF-8 when re-encoded)
        (b'["\\ud800"]', '["\ufffd"]'),
        (b'{"\\udc00x":["\\ud83d\\ude00"]}', '{"\ufffdx":["\U0001f600"]}'),
        (b'["\\uD800\\u0041"]', '["\ufffdA"]'),
    ],
)
def test_loads_replaces_invalid_text_like_go(raw: bytes, expected: str) -> None:
    text = encode_value(loads(raw))
    assert text == expected
    assert to_bytes(text) == expected.encode("utf-8")


def test_plain_converts_numbers() -> None:
    value = plain(loads(b'{"a":[1,2.5,"x",null],"b":{"c":18446744073709551615}}'))
    assert value == {"a": [1, 2.5, "x", None], "b": {"c": 18446744073709551615}}
    assert type(value["a"][0]) is int
    assert type(value["a"][1]) is float


def test_number_api() -> None:
    n = Number("42")
    assert n.is_integer_literal()
    assert n.to_python() == 42
    assert not Number("4.0").is_integer_literal()
    assert not Number("4E2").is_integer_literal()
    assert Number("4E2").to_python() == 400.0
    assert Number("1") == Number("1")
    assert Number("1") != Number("1.0")
    assert hash(Number("7")) == hash(Number("7"))
    assert repr(n) == "Number('42')"
    assert str(n) == "42"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "<nil>"),
        (True, "true"),
        (Number("1.50"), "1.50"),
        ("1", "1"),
        ([Number("1"), "a"], "[1 a]"),
        ({"b": Number("2"), "a": Number("1")}, "map[a:1 b:2]"),
        (b"\x01\x02", "[1 2]"),
    ],
)
def test_go_format(value: object, expected: str) -> None:
    assert go_format(value) == expected


# --------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------


def _reference_go_float64(x: float) -> str:
    """Go's float64 rule, written independently: shortest digits placed by hand."""
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    sign = "-" if x < 0 else ""
    # shortest round-trip digits and the decimal exponent of the first digit
    mantissa, _, exp_text = f"{abs(x)!r}".partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    digits = (int_part + frac_part).lstrip("0")
    lead_zeros = len(int_part + frac_part) - len((int_part + frac_part).lstrip("0"))
    point = len(int_part) - lead_zeros + (int(exp_text) if exp_text else 0)
    digits = digits.rstrip("0") or "0"
    exp10 = point - 1
    if abs(x) < 1e-6 or abs(x) >= 1e21:
        head = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{head}e{'+' if exp10 >= 0 else '-'}{abs(exp10)}"
    if point <= 0:
        return sign + "0." + "0" * -point + digits
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return sign + digits[:point] + "." + digits[point:]


_GO_FLOAT = re.compile(r"-?(0|[1-9]\d*)(\.\d*[1-9])?(e[+-][1-9]\d*)?\Z")


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_property_float64_matches_reference(x: float) -> None:
    text = encode_float64(x)
    assert text == _reference_go_float64(x)
    assert float(text) == x
    assert _GO_FLOAT.match(text), text
    assert ("e" in text) == (x != 0 and (abs(x) < 1e-6 or abs(x) >= 1e21))
    assert not text.endswith(".0")


def _f32_interval(v: float) -> tuple[Fraction, Fraction, bool]:
    bits = _U32.unpack(_F32.pack(abs(v)))[0]
    exact = Fraction(abs(v))
    below = Fraction(_F32.unpack(_U32.pack(bits - 1))[0])
    if bits < 0x7F7FFFFF:
        above = Fraction(_F32.unpack(_U32.pack(bits + 1))[0])
    else:
        above = Fraction(2**128)
    return (below + exact) / 2, (exact + above) / 2, bits % 2 == 0


def _reads_back(text: str, v: float) -> bool:
    lo, hi, inclusive = _f32_interval(v)
    c = abs(Fraction(Decimal(text)))
    return lo <= c <= hi if inclusive else lo < c < hi


@given(st.floats(width=32, allow_nan=False, allow_infinity=False).filter(lambda v: v != 0))
def test_property_float32_shortest_and_exact(v: float) -> None:
    text = encode_float32(v)
    assert _GO_FLOAT.match(text), text
    assert ("e" in text) == (abs(v) < f32(1e-6) or abs(v) >= 1e21)
    assert _reads_back(text, v)  # exact: reads back to this very float32
    # minimal: no decimal with one digit less lies in the rounding interval
    exact = Decimal(abs(v))
    digits = len(Decimal(text).normalize().as_tuple().digits)
    if digits > 1:
        p = digits - 1
        k = exact.adjusted() - p + 1
        scale = Fraction(10) ** k
        d = math.floor(Fraction(exact) / scale)
        for c in (d, d + 1):
            assert not _reads_back(str(Decimal(c).scaleb(k)), v), (text, c, k)


_SURROGATE_FREE = st.text(st.characters(exclude_categories=["Cs"]))


@given(_SURROGATE_FREE)
def test_property_encode_str_is_json_and_html_safe(s: str) -> None:
    text = encode_str(s)
    assert json.loads(text) == s
    for ch in "<>&\u2028\u2029":
        assert ch not in text
    assert not any(ord(ch) < 0x20 for ch in text)
    assert loads(to_bytes(text)) == s
