"""Machinery's 29 type names both ways, with Go's reflect.go rules and error texts (§2)."""

from __future__ import annotations

import math
import typing
from collections.abc import Sequence
from typing import Annotated, Any

import pytest

from machinery_compat.exceptions import ArgTypeError, EncodeError
from machinery_compat.protocol.gojson import FLOAT32_MAX, Number, loads
from machinery_compat.protocol.gotypes import (
    SUPPORTED_TYPES,
    GoType,
    encode_result_value,
    encode_typed,
    infer_type,
    result_type,
    result_types_from_hint,
    to_python,
    type_from_hint,
)

F32_01 = 0.10000000149011612  # float32(0.1)

ALL_29 = {
    "bool", "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32",
    "uint64", "float32", "float64", "string",
    "[]bool", "[]int", "[]int8", "[]int16", "[]int32", "[]int64", "[]uint", "[]uint8",
    "[]uint16", "[]uint32", "[]uint64", "[]float32", "[]float64", "[]byte", "[]string",
}  # fmt: skip


def test_supported_types_are_exactly_the_29() -> None:
    assert len(ALL_29) == 29
    assert set(SUPPORTED_TYPES) == ALL_29


# (type, Python value sent, JSON written, Python value received back)
BOTH_WAYS: list[tuple[str, Any, str, Any]] = [
    ("bool", True, "true", True),
    ("int", -5, "-5", -5),
    ("int8", -128, "-128", -128),
    ("int16", 32767, "32767", 32767),
    ("int32", -2147483648, "-2147483648", -2147483648),
    ("int64", 9223372036854775807, "9223372036854775807", 9223372036854775807),
    ("uint", 18446744073709551615, "18446744073709551615", 18446744073709551615),
    ("uint8", 255, "255", 255),
    ("uint16", 65535, "65535", 65535),
    ("uint32", 4294967295, "4294967295", 4294967295),
    ("uint64", 18446744073709551615, "18446744073709551615", 18446744073709551615),
    ("float32", 0.1, "0.1", F32_01),
    ("float64", 0.1, "0.1", 0.1),
    ("string", "héllo <&>", '"héllo \\u003c\\u0026\\u003e"', "héllo <&>"),
    ("[]bool", [True, False], "[true,false]", [True, False]),
    ("[]int", [1, -2], "[1,-2]", [1, -2]),
    ("[]int8", [-128, 127], "[-128,127]", [-128, 127]),
    ("[]int16", [-32768, 32767], "[-32768,32767]", [-32768, 32767]),
    ("[]int32", [2147483647], "[2147483647]", [2147483647]),
    ("[]int64", (-(2**63), 0), "[-9223372036854775808,0]", [-(2**63), 0]),
    ("[]uint", [0, 2**64 - 1], "[0,18446744073709551615]", [0, 2**64 - 1]),
    ("[]uint8", b"hi", '"aGk="', b"hi"),
    ("[]uint16", [0, 65535], "[0,65535]", [0, 65535]),
    ("[]uint32", [4294967295], "[4294967295]", [4294967295]),
    ("[]uint64", [18446744073709551615], "[18446744073709551615]", [18446744073709551615]),
    ("[]float32", [0.5, 0.1, 1.0], "[0.5,0.1,1]", [0.5, F32_01, 1.0]),
    ("[]float64", [1.0, 2.5, 1e21], "[1,2.5,1e+21]", [1.0, 2.5, 1e21]),
    ("[]byte", b"\x00\xff", '"AP8="', b"\x00\xff"),
    ("[]string", ["a", "<"], '["a","\\u003c"]', ["a", "<"]),
]


def test_both_ways_table_covers_all_types() -> None:
    assert {row[0] for row in BOTH_WAYS} == ALL_29


@pytest.mark.parametrize(("type_name", "value", "json_text", "back"), BOTH_WAYS)
def test_every_type_both_ways(type_name: str, value: Any, json_text: str, back: Any) -> None:
    assert encode_typed(type_name, value) == json_text
    received = to_python(type_name, loads(json_text))
    assert received == back
    assert type(received) is type(back)
    if isinstance(back, list):
        assert [type(v) for v in received] == [type(v) for v in back]


@pytest.mark.parametrize(
    ("type_name", "value"),
    [
        ("int8", 300),
        ("int8", -129),
        ("int16", 32768),
        ("int32", 2**31),
        ("int64", 2**63),
        ("int", -(2**63) - 1),
        ("uint8", 256),
        ("uint", -1),
        ("uint64", -1),
        ("uint64", 2**64),
        ("uint32", 2**32),
        ("float32", 1e39),
        ("float32", -3.5e38),
        ("float32", math.inf),
        ("float64", math.nan),
        ("float64", -math.inf),
        ("[]int8", [1, 200]),
        ("[]uint64", [0, -1]),
        ("[]float32", [1.0, 1e39]),
        ("[]uint8", [0, 256]),
    ],
)
def test_out_of_range_refused_at_encode(type_name: str, value: Any) -> None:
    with pytest.raises(EncodeError):
        encode_typed(type_name, value)


def test_float32_max_and_go_rounding_accepted() -> None:
    assert encode_typed("float32", FLOAT32_MAX) == "3.4028235e+38"
    assert encode_typed("float32", 3.4028235e38) == "3.4028235e+38"  # float32() rounds down
    assert encode_typed("float32", 16777217) == "16777216"
    assert encode_typed("float64", 16777217) == "16777217"
    assert encode_typed("float64", 2) == "2"


@pytest.mark.parametrize(
    ("type_name", "value"),
    [
        ("int64", 1.5),
        ("int64", 1.0),
        ("int64", True),
        ("int64", "1"),
        ("uint8", None),
        ("bool", 1),
        ("bool", "true"),
        ("string", 5),
        ("string", None),
        ("float64", "1.5"),
        ("float64", False),
        ("[]int64", 5),
        ("[]string", "abc"),
        ("[]int64", {"a": 1}),
        ("[]bool", [True, 1]),
        ("[]byte", 5),
        ("complex128", 1),
        ("Int64", 1),
        ("", 1),
    ],
)
def test_wrong_python_type_refused_at_encode(type_name: str, value: Any) -> None:
    with pytest.raises(EncodeError):
        encode_typed(type_name, value)


def test_unknown_type_message() -> None:
    with pytest.raises(EncodeError, match=r"^complex128 is not one of supported types"):
        encode_typed("complex128", 1)
    with pytest.raises(EncodeError, match="is not one of supported types"):
        GoType("map[string]int")


def test_slice_nil_and_byte_forms_at_encode() -> None:
    assert encode_typed("[]int64", None) == "null"
    assert encode_typed("[]byte", None) == "null"
    assert encode_typed("[]int64", []) == "[]"
    assert encode_typed("[]byte", b"") == '""'
    assert encode_typed("[]byte", bytearray(b"hi")) == '"aGk="'
    assert encode_typed("[]uint8", memoryview(b"hi")) == '"aGk="'
    assert encode_typed("[]byte", [104, 105]) == "[104,105]"
    assert encode_typed("[]byte", "aGk=") == '"aGk="'  # forwarded base64 text


def test_received_numbers_forwarded_verbatim() -> None:
    assert encode_typed("int64", Number("1")) == "1"
    assert encode_typed("uint64", Number("18446744073709551615")) == "18446744073709551615"
    assert encode_typed("float64", Number("1.0")) == "1.0"
    assert encode_typed("float32", Number("1e3")) == "1e3"
    assert encode_typed("[]float64", [Number("1.50"), 2]) == "[1.50,2]"
    with pytest.raises(EncodeError):
        encode_typed("int64", Number("1.0"))
    with pytest.raises(EncodeError):
        encode_typed("string", Number("1"))


def test_encode_result_value_other_type_names() -> None:
    assert encode_result_value("int64", 2) == "2"
    assert encode_result_value("map[string]interface {}", {"b": 1, "a": [1.0]}) == (
        '{"a":[1],"b":1}'
    )
    assert encode_result_value("main.MyInt", 3) == "3"


# --------------------------------------------------------------------------------------
# receive side
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_name", "literal", "expected"),
    [
        ("int8", "300", 44),  # §2.2: silently wrapped
        ("int8", "255", -1),
        ("int8", "-129", 127),
        ("int16", "32768", -32768),
        ("int32", "4294967296", 0),
        ("uint8", "256", 0),
        ("uint8", "257", 1),
        ("uint16", "65536", 0),
        ("uint32", "4294967297", 1),
        ("int64", "-9223372036854775808", -(2**63)),
        ("int", "9223372036854775807", 2**63 - 1),
        ("uint64", "18446744073709551615", 2**64 - 1),
        ("uint", "18446744073709551615", 2**64 - 1),
        ("int64", "-0", 0),
        ("float64", "1", 1.0),
        ("float64", "1e3", 1000.0),
        ("float64", "-0", -0.0),
        ("float32", "16777217", 16777216.0),
        ("float32", "3.4028235e+38", FLOAT32_MAX),  # what Go writes for the largest float32
        ("float32", "1e39", math.inf),  # Go's float32(1e39) is +Inf, no error
    ],
)
def test_go_conversion_on_receive(type_name: str, literal: str, expected: Any) -> None:
    value = to_python(type_name, Number(literal))
    assert value == expected
    assert type(value) is type(expected)


def test_negative_zero_float_keeps_sign() -> None:
    assert math.copysign(1.0, to_python("float64", Number("-0"))) == -1.0


@pytest.mark.parametrize(
    ("type_name", "value", "message"),
    [
        ("int64", "1", "1 is not int64"),
        ("int64", None, "<nil> is not int64"),
        ("int64", [Number("1")], "[1] is not int64"),
        ("int64", True, "true is not int64"),
        ("string", {"a": Number("1")}, "map[a:1] is not string"),
        ("string", Number("5"), "5 is not string"),
        ("string", None, "<nil> is not string"),
        ("bool", None, "<nil> is not bool"),
        ("bool", "true", "true is not bool"),
        ("bool", Number("1"), "1 is not bool"),
        ("float64", "1.5", "1.5 is not float64"),
        ("float32", None, "<nil> is not float32"),
        ("uint8", "x", "x is not uint8"),
        ("int64", Number("1.0"), 'strconv.ParseInt: parsing "1.0": invalid syntax'),
        ("int32", Number("1e3"), 'strconv.ParseInt: parsing "1e3": invalid syntax'),
        ("uint64", Number("-1"), 'strconv.ParseUint: parsing "-1": invalid syntax'),
        ("uint8", Number("1.5"), 'strconv.ParseUint: parsing "1.5": invalid syntax'),
        (
            "int64",
            Number("9223372036854775808"),
            'strconv.ParseInt: parsing "9223372036854775808": value out of range',
        ),
        (
            "int8",
            Number("-9223372036854775809"),
            'strconv.ParseInt: parsing "-9223372036854775809": value out of range',
        ),
        (
            "uint64",
            Number("18446744073709551616"),
            'strconv.ParseUint: parsing "18446744073709551616": value out of range',
        ),
        ("float64", Number("1e400"), 'strconv.ParseFloat: parsing "1e400": value out of range'),
        ("[]int64", [Number("1"), "2"], "2 is not int64"),
        ("[]string", ["a", None], "<nil> is not string"),
        ("[]bool", [Number("0")], "0 is not bool"),
    ],
)
def test_go_error_texts(type_name: str, value: Any, message: str) -> None:
    with pytest.raises(ArgTypeError) as info:
        to_python(type_name, value)
    assert str(info.value) == message


def test_unknown_type_on_receive() -> None:
    with pytest.raises(ArgTypeError, match=r"^complex64 is not one of supported types"):
        to_python("complex64", Number("1"))
    with pytest.raises(ArgTypeError, match=r"^\[\]interface \{\} is not one of supported types"):
        to_python("[]interface {}", [])


def test_slices_on_receive() -> None:
    assert to_python("[]int64", None) == []
    assert to_python("[]string", []) == []
    assert to_python("[]int8", [Number("300")]) == [44]
    with pytest.raises(ArgTypeError):
        to_python("[]int64", "123")  # Go would iterate the text's bytes; we refuse
    with pytest.raises(ArgTypeError):
        to_python("[]int64", Number("1"))


def test_bytes_on_receive() -> None:
    assert to_python("[]byte", "aGk=") == b"hi"
    assert to_python("[]uint8", "AP8=") == b"\x00\xff"
    assert to_python("[]byte", "") == b""
    assert to_python("[]byte", None) == b""
    assert to_python("[]byte", [Number("104"), Number("105")]) == b"hi"
    assert to_python("[]uint8", [Number("256"), Number("511")]) == b"\x00\xff"  # wrapped
    with pytest.raises(ArgTypeError):
        to_python("[]byte", "!!not base64")
    with pytest.raises(ArgTypeError):
        to_python("[]byte", "aGk")  # missing padding
    with pytest.raises(ArgTypeError, match=r"^true is not \[\]uint8"):
        to_python("[]byte", True)
    with pytest.raises(ArgTypeError):
        to_python("[]byte", [Number("-1")])


def test_lenient_receive() -> None:
    assert to_python("int64", "2", lenient=True) == 2
    assert to_python("int8", 300, lenient=True) == 44
    assert to_python("uint64", "18446744073709551615", lenient=True) == 2**64 - 1
    assert to_python("float64", "2.5", lenient=True) == 2.5
    assert to_python("float64", 3, lenient=True) == 3.0
    assert to_python("float32", "0.1", lenient=True) == F32_01
    assert to_python("bool", "true", lenient=True) is True
    assert to_python("bool", "false", lenient=True) is False
    assert to_python("string", Number("5"), lenient=True) == "5"
    assert to_python("[]int64", ["1", Number("2")], lenient=True) == [1, 2]
    with pytest.raises(ArgTypeError):
        to_python("int64", "٣", lenient=True)  # non-ASCII digit: Go's ParseInt refuses
    with pytest.raises(ArgTypeError):
        to_python("int64", "1.5", lenient=True)
    with pytest.raises(ArgTypeError):
        to_python("bool", "yes", lenient=True)
    with pytest.raises(ArgTypeError):
        to_python("int64", True, lenient=True)


# --------------------------------------------------------------------------------------
# inference and hints
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "bool"),  # bool before int: True is an int in Python
        (False, "bool"),
        (0, "int64"),
        (-1, "int64"),
        (2**63 - 1, "int64"),
        (-(2**63), "int64"),
        (2**63, "uint64"),
        (2**64 - 1, "uint64"),
        (1.5, "float64"),
        (1.0, "float64"),
        ("s", "string"),
        ("", "string"),
        (b"x", "[]byte"),
        (bytearray(b"x"), "[]byte"),
        (memoryview(b"x"), "[]byte"),
        ([True, False], "[]bool"),
        ([1, 2], "[]int64"),
        ([1, 2**64 - 1], "[]uint64"),
        ([1.0, 2], "[]float64"),
        ([1.5], "[]float64"),
        (["a", "b"], "[]string"),
        (("a", "b"), "[]string"),
        ((1,), "[]int64"),
    ],
)
def test_infer_type(value: Any, expected: str) -> None:
    assert infer_type(value) == expected


@pytest.mark.parametrize(
    "value",
    [[], (), None, {}, {"a": 1}, [True, 1], ["a", 1], [1, None], [[1]], object(), 1j],
)
def test_infer_type_refuses(value: Any) -> None:
    with pytest.raises(EncodeError):
        infer_type(value)


def test_inferred_value_encodes() -> None:
    for value in (True, -7, 2**64 - 1, 0.25, "x", b"hi", [1, 2.5], ["a"]):
        assert encode_typed(infer_type(value), value)


def test_result_type() -> None:
    assert result_type(5) == "int64"
    assert result_type(b"hi") == "[]byte"
    assert result_type({"a": 1}) == "map[string]interface {}"
    assert result_type([1, "a"]) == "[]interface {}"
    assert result_type(None) == "<nil>"
    with pytest.raises(EncodeError):
        result_type(object())


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (int, "int64"),
        (float, "float64"),
        (bool, "bool"),
        (str, "string"),
        (bytes, "[]byte"),
        (list[int], "[]int64"),
        (list[str], "[]string"),
        (list[bool], "[]bool"),
        (typing.List[float], "[]float64"),  # noqa: UP006
        (Sequence[float], "[]float64"),
        (tuple[int, ...], "[]int64"),
        (tuple[int, str], None),
        (None, None),
        (type(None), None),
        (Annotated[int, GoType("int32")], "int32"),
        (Annotated[list[int], GoType("[]uint16")], "[]uint16"),
        (Annotated[bytes, "[]uint8"], "[]uint8"),
        (Annotated[int, "not a type"], "int64"),
        (GoType("uint16"), "uint16"),
        ("int8", "int8"),
        ("complex64", None),
        (dict[str, int], None),
        (list[list[int]], None),
        (list[bytes], None),
        (typing.Optional[int], None),  # noqa: UP045
        (Any, None),
        (list, None),
    ],
)
def test_type_from_hint(hint: Any, expected: str | None) -> None:
    assert type_from_hint(hint) == expected


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (int, ["int64"]),
        (float, ["float64"]),
        (list[int], ["[]int64"]),
        (tuple[int, str], ["int64", "string"]),
        (tuple[int, dict[str, int]], ["int64", None]),
        (tuple[int, ...], ["[]int64"]),
        (None, []),
        (type(None), []),
        (Annotated[int, GoType("int32")], ["int32"]),
        (Any, None),
        (object, None),
        (int | str, None),
        (typing.Union[int, None], None),  # noqa: UP007
        (dict[str, int], None),
    ],
)
def test_result_types_from_hint(hint: Any, expected: list[str | None] | None) -> None:
    assert result_types_from_hint(hint) == expected
