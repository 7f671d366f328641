"""Go's ``%v`` of result values (what Go Machinery's DynamoDB backend stores as ``Value``), its
inverse, and the DynamoDB item codec: pure, no AWS.

The expected strings were printed by Go 1.26 (``fmt.Sprintf("%v", v)``) for the same values.
"""

from __future__ import annotations

import math
import random
import struct

import pytest

from machinery_compat.backends.dynamodb import (
    EXCEPTION_RECORD_ATTRIBUTE,
    group_meta_from_item,
    group_meta_item,
    region_from_url,
    result_from_attribute,
    task_state_from_item,
    task_state_item,
)
from machinery_compat.exceptions import DecodeError
from machinery_compat.protocol import (
    FAILURE,
    PENDING,
    SUCCESS,
    SUPPORTED_TYPES,
    GoTime,
    GroupMeta,
    Number,
    TaskResult,
    TaskState,
)
from machinery_compat.protocol.gofmt import format_float, parse_typed, sprint, sprint_typed
from machinery_compat.protocol.gojson import round_float32

FLOAT64_V = [
    (0.0, "0"),
    (-0.0, "-0"),
    (1.0, "1"),
    (-1.0, "-1"),
    (0.5, "0.5"),
    (2.5, "2.5"),
    (0.1, "0.1"),
    (1 / 3, "0.3333333333333333"),
    (2 / 3, "0.6666666666666666"),
    (1e6, "1e+06"),
    (1e-05, "1e-05"),
    (0.0001, "0.0001"),
    (0.0001234, "0.0001234"),
    (123456.0, "123456"),
    (999999.0, "999999"),
    (999999.5, "999999.5"),
    (1234567.0, "1.234567e+06"),
    (100000.0, "100000"),
    (1e21, "1e+21"),
    (1e20, "1e+20"),
    (1e-07, "1e-07"),
    (5e-324, "5e-324"),
    (2.2250738585072014e-308, "2.2250738585072014e-308"),
    (1.7976931348623157e308, "1.7976931348623157e+308"),
    (123456.789, "123456.789"),
    (12345678.9, "1.23456789e+07"),
    (9007199254740992.0, "9.007199254740992e+15"),
    (1e100, "1e+100"),
    (-1.5e-10, "-1.5e-10"),
    (3.14159, "3.14159"),
    (math.inf, "+Inf"),
    (-math.inf, "-Inf"),
    (math.nan, "NaN"),
    (0.000123, "0.000123"),
    (100.0, "100"),
    (1e15, "1e+15"),
    (1e16, "1e+16"),
    (299792458.0, "2.99792458e+08"),
]

FLOAT32_V = [
    (0.1, "0.1"),
    (1e7, "1e+07"),
    (16777216.0, "1.6777216e+07"),
    (3.4028234663852886e38, "3.4028235e+38"),
    (1e-45, "1e-45"),
    (2**-12, "0.00024414063"),  # Go >= 1.26 (Dragonbox); Go <= 1.25 printed ...062
    (0.3, "0.3"),
    (1e6, "1e+06"),
    (123456.0, "123456"),
    (1234567.0, "1.234567e+06"),
    (3.14159, "3.14159"),
    (1e-05, "1e-05"),
    (0.0001, "0.0001"),
    (100.0, "100"),
    (-2.5, "-2.5"),
    (1.17549435e-38, "1.1754944e-38"),
]


@pytest.mark.parametrize(("value", "expected"), FLOAT64_V)
def test_float64_as_go_prints_it(value: float, expected: str) -> None:
    assert format_float(value) == expected
    assert sprint(value) == expected
    assert sprint_typed("float64", value) == expected


@pytest.mark.parametrize(("value", "expected"), FLOAT32_V)
def test_float32_as_go_prints_it(value: float, expected: str) -> None:
    assert format_float(value, 32) == expected
    assert sprint_typed("float32", value) == expected


def test_floats_read_back_exactly() -> None:
    rng = random.Random(10)
    for _ in range(3000):
        f = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
        if math.isnan(f):
            continue
        assert parse_typed("float64", format_float(f)) == f
        g = struct.unpack("<f", struct.pack("<I", rng.getrandbits(32)))[0]
        if math.isnan(g):
            continue
        assert parse_typed("float32", format_float(g, 32)) == round_float32(g)
    assert math.isnan(parse_typed("float64", "NaN"))
    assert parse_typed("float64", "+Inf") == math.inf
    assert math.copysign(1.0, parse_typed("float64", "-0")) == -1.0


# Every Machinery type: (type, a Python value, Go's %v of the Go value, what reads back).
EVERY_TYPE = [
    ("bool", True, "true", True),
    ("bool", False, "false", False),
    ("int", -7, "-7", -7),
    ("int8", -128, "-128", -128),
    ("int16", 32767, "32767", 32767),
    ("int32", -(2**31), "-2147483648", -(2**31)),
    ("int64", 2**63 - 1, "9223372036854775807", 2**63 - 1),
    ("uint", 0, "0", 0),
    ("uint8", 255, "255", 255),
    ("uint16", 65535, "65535", 65535),
    ("uint32", 2**32 - 1, "4294967295", 2**32 - 1),
    ("uint64", 2**64 - 1, "18446744073709551615", 2**64 - 1),
    ("float32", 0.1, "0.1", round_float32(0.1)),
    ("float64", 0.5, "0.5", 0.5),
    ("float64", 2, "2", 2.0),  # an int typed float64 is a float to Go
    ("string", "a b", "a b", "a b"),
    ("string", "", "", ""),
    ("[]bool", [True, False], "[true false]", [True, False]),
    ("[]int", [1, -2], "[1 -2]", [1, -2]),
    ("[]int8", [1, 2], "[1 2]", [1, 2]),
    ("[]int16", [], "[]", []),
    ("[]int32", [7], "[7]", [7]),
    ("[]int64", [1, 2], "[1 2]", [1, 2]),
    ("[]uint", [1], "[1]", [1]),
    ("[]uint16", [65535], "[65535]", [65535]),
    ("[]uint32", [3, 4], "[3 4]", [3, 4]),
    ("[]uint64", [2**64 - 1], "[18446744073709551615]", [2**64 - 1]),
    ("[]float32", [0.1, 1e7], "[0.1 1e+07]", [round_float32(0.1), 1e7]),
    ("[]float64", [0.5, 1e6, 2], "[0.5 1e+06 2]", [0.5, 1e6, 2.0]),
    ("[]string", ["a", "b"], "[a b]", ["a", "b"]),
    ("[]string", ["", "x"], "[ x]", ["", "x"]),
    ("[]uint8", b"hi", "[104 105]", b"hi"),
    ("[]byte", b"\x00\xff", "[0 255]", b"\x00\xff"),
    ("[]uint8", b"", "[]", b""),
]


@pytest.mark.parametrize(("type_name", "value", "text", "back"), EVERY_TYPE)
def test_every_machinery_type(type_name: str, value: object, text: str, back: object) -> None:
    assert sprint_typed(type_name, value) == text
    got = parse_typed(type_name, text)
    assert got == back and type(got) is type(back)


def test_every_supported_type_is_covered() -> None:
    assert {t for t, *_ in EVERY_TYPE} == SUPPORTED_TYPES


def test_received_values_print_as_the_go_value_they_stand_for() -> None:
    # decoded JSON numbers (json.Number), base64 text of a []uint8, a narrow int Go wraps
    assert sprint_typed("int64", Number("2")) == "2"
    assert sprint_typed("float64", Number("1e3")) == "1000"
    assert sprint_typed("float32", Number("0.1")) == "0.1"
    assert sprint_typed("[]uint8", "aGk=") == "[104 105]"
    assert sprint_typed("[]int64", [Number("1"), Number("2")]) == "[1 2]"
    # a value that does not fit its type is printed as what it is
    assert sprint_typed("int64", "abc") == "abc"
    assert sprint_typed("bool", None) == "<nil>"


def test_other_go_types_print_by_kind() -> None:
    value = {"b": [1.5, "x"], "a": None, "c": {"z": True}}
    assert sprint_typed("map[string]interface {}", value) == "map[a:<nil> b:[1.5 x] c:map[z:true]]"
    assert sprint({10: "a", 2: "b"}) == "map[2:b 10:a]"  # fmt sorts numeric keys by value
    assert sprint({"é": 1, "z": 2, "A": 3}) == "map[A:3 z:2 é:1]"  # string keys by bytes
    assert sprint_typed("[]interface {}", []) == "[]"
    assert sprint_typed("<nil>", None) == "<nil>"
    assert sprint(b"hi") == "[104 105]"
    assert sprint(Number("1.50")) == "1.50"  # json.Number is a string to fmt
    assert sprint(GoTime.parse("2024-05-01T12:34:56.123456789Z")) == (
        "2024-05-01 12:34:56.123456789 +0000 UTC")
    assert sprint(GoTime.parse("2024-05-01T12:34:56+02:00")) == "2024-05-01 12:34:56 +0200 +0200"


def test_what_does_not_round_trip() -> None:
    assert parse_typed("map[string]interface {}", "map[a:1]") == "map[a:1]"
    assert parse_typed("[]interface {}", "[1 x]") == "[1 x]"
    assert parse_typed("time.Time", "2024-05-01 12:34:56 +0000 UTC") == (
        "2024-05-01 12:34:56 +0000 UTC")
    assert parse_typed("<nil>", "<nil>") is None
    # %v separates slice elements with spaces and prints [""] as []
    assert sprint_typed("[]string", ["a b"]) == "[a b]"
    assert parse_typed("[]string", "[a b]") == ["a", "b"]
    assert sprint_typed("[]string", [""]) == "[]"
    assert parse_typed("[]string", "[]") == []
    # text that is not its type stays text (a reader raises when asked for the value)
    assert parse_typed("int64", "2.5") == "2.5"
    assert parse_typed("int8", "300") == "300"  # out of range: Go never prints that for int8
    assert parse_typed("uint64", "-1") == "-1"
    assert parse_typed("bool", "True") == "True"
    assert parse_typed("[]int64", "1 2") == "1 2"
    assert parse_typed("[]int64", "[1 x]") == "[1 x]"


# --------------------------------------------------------------------------------------
# items
# --------------------------------------------------------------------------------------

CREATED = GoTime.parse("2024-05-01T12:34:56.123456789Z")
UUID = "task_7e0b7c39-3d0c-4b5e-9e1a-2f7d5c1b8a90"


def test_pending_item_is_go_v2s_put_item() -> None:
    item = task_state_item(TaskState(UUID, PENDING, task_name="add", created_at=CREATED))
    assert item == {
        "TaskUUID": {"S": UUID},
        "TaskName": {"S": "add"},
        "State": {"S": "PENDING"},
        "Results": {"NULL": True},
        "Error": {"S": ""},
        "CreatedAt": {"S": "2024-05-01T12:34:56.123456789Z"},
        "TTL": {"N": "0"},
    }
    assert task_state_from_item(item) == TaskState(UUID, PENDING, task_name="add",
                                                   created_at=CREATED)


def test_golden_success_item_reads_back() -> None:
    """§12.6: the DynamoDB SUCCESS item of the golden task (v2, then v1's NULL Error)."""
    item = {
        "TaskUUID": {"S": UUID}, "TaskName": {"S": "add"}, "State": {"S": "SUCCESS"},
        "Error": {"S": ""}, "CreatedAt": {"S": "2024-05-01T12:34:56.123456789Z"},
        "Results": {"L": [{"M": {"Type": {"S": "int64"}, "Value": {"S": "2"}}}]},
        "TTL": {"N": "1714570496"},
    }
    state = task_state_from_item(item)
    assert (state.state, state.task_name, state.error, state.created_at, state.ttl) == (
        SUCCESS, "add", "", CREATED, 1714570496)
    assert state.python_results() == [2]
    assert state.to_go_json() == (
        '{"TaskUUID":"' + UUID + '","TaskName":"add","State":"SUCCESS","Results":[{"Type":'
        '"int64","Value":2}],"Error":"","CreatedAt":"2024-05-01T12:34:56.123456789Z",'
        '"TTL":1714570496}')
    assert task_state_from_item({**item, "Error": {"NULL": True}}) == state


def test_v1_and_partial_items_read_as_zero_values() -> None:
    # SDK v1 writes "" as NULL; an UpdateItem on a missing item leaves only what it set
    v1_pending = {"TaskUUID": {"S": "t"}, "TaskName": {"S": "add"}, "State": {"S": "PENDING"},
                  "Results": {"NULL": True}, "Error": {"NULL": True},
                  "CreatedAt": {"S": "2024-05-01T12:34:56Z"}, "TTL": {"N": "0"}}
    st = task_state_from_item(v1_pending)
    assert (st.error, st.results, st.ttl) == ("", None, 0)
    partial = task_state_from_item({"TaskUUID": {"S": "t"}, "State": {"S": "FAILURE"},
                                    "Error": {"S": "boom"}, "TTL": {"N": "99"}})
    assert partial == TaskState("t", FAILURE, error="boom", ttl=99)
    assert task_state_from_item({}) == TaskState("", "")  # Go's zero TaskState


def test_results_values_of_other_attribute_types() -> None:
    # never written by Go's UpdateItem, but SDK marshalling of a whole TaskState would be typed
    r = result_from_attribute({"M": {"Type": {"S": "int64"}, "Value": {"N": "5"}}})
    assert (r.type, r.python_value) == ("int64", 5)
    r = result_from_attribute({"M": {"Type": {"S": "[]string"},
                                     "Value": {"L": [{"S": "a b"}, {"S": "c"}]}}})
    assert r.python_value == ["a b", "c"]
    r = result_from_attribute({"M": {"Type": {"S": "bool"}, "Value": {"BOOL": True}}})
    assert r.python_value is True
    r = result_from_attribute({"M": {"Type": {"S": "<nil>"}, "Value": {"NULL": True}}})
    assert r.value is None


def test_results_forward_typed_values() -> None:
    """A chord callback built from read results carries typed JSON values (Go can reflect
    them), not the stored strings."""
    item = {"State": {"S": "SUCCESS"}, "Results": {"L": [
        {"M": {"Type": {"S": "int64"}, "Value": {"S": "2"}}},
        {"M": {"Type": {"S": "[]uint8"}, "Value": {"S": "[104 105]"}}},
        {"M": {"Type": {"S": "float64"}, "Value": {"S": "1e+06"}}},
        {"M": {"Type": {"S": "map[string]interface {}"}, "Value": {"S": "map[a:1]"}}},
    ]}}
    results = task_state_from_item(item).results
    assert results is not None
    assert [r.to_go_json() for r in results] == [
        '{"Type":"int64","Value":2}', '{"Type":"[]uint8","Value":"aGk="}',
        '{"Type":"float64","Value":1000000}',
        '{"Type":"map[string]interface {}","Value":"map[a:1]"}',
    ]


def test_undecodable_items() -> None:
    with pytest.raises(DecodeError, match="State is N"):
        task_state_from_item({"State": {"N": "1"}})
    with pytest.raises(DecodeError, match="Results is S"):
        task_state_from_item({"Results": {"S": "[]"}})
    with pytest.raises(DecodeError, match="not an integer N"):
        task_state_from_item({"TTL": {"N": "1.5"}})
    with pytest.raises(DecodeError):
        task_state_from_item({"CreatedAt": {"S": "2024-05-01 12:34:56 +0000 UTC"}})


def test_unknown_attributes_are_ignored() -> None:
    item = task_state_item(TaskState("t", FAILURE, error="e"))
    item[EXCEPTION_RECORD_ATTRIBUTE] = {"S": "{}"}
    assert task_state_from_item(item) == TaskState("t", FAILURE, error="e")


def test_lone_surrogates_are_sent_as_replacement_characters() -> None:
    item = task_state_item(TaskState("t", FAILURE, error="bad \udcff byte"))
    assert item["Error"] == {"S": "bad \ufffd byte"}
    r = task_state_item(TaskState("t", SUCCESS, results=[TaskResult("string", "\ud800")]))
    assert r["Results"]["L"][0]["M"]["Value"] == {"S": "\ufffd"}


def test_group_meta_items() -> None:
    meta = GroupMeta("group_1", ["task_a", "task_b"], created_at=CREATED, ttl=1714570496)
    item = group_meta_item(meta)
    assert item == {
        "GroupUUID": {"S": "group_1"},
        "TaskUUIDs": {"L": [{"S": "task_a"}, {"S": "task_b"}]},
        "ChordTriggered": {"BOOL": False},
        "Lock": {"BOOL": False},
        "CreatedAt": {"S": "2024-05-01T12:34:56.123456789Z"},
        "TTL": {"N": "1714570496"},
    }
    assert group_meta_from_item(item) == meta
    # v1 writes an empty TaskUUIDs as NULL; missing flags are false
    assert group_meta_from_item({"GroupUUID": {"S": "g"}, "TaskUUIDs": {"NULL": True}}) == (
        GroupMeta("g", []))
    with pytest.raises(DecodeError):
        group_meta_from_item({"TaskUUIDs": {"L": [{"N": "1"}]}})


def test_region_from_url() -> None:
    assert region_from_url("https://dynamodb.us-east-1.amazonaws.com") == "us-east-1"
    assert region_from_url("https://dynamodb.cn-north-1.amazonaws.com.cn/") == "cn-north-1"
    assert region_from_url("https://dynamodb") is None
    assert region_from_url("http://localhost:8000") is None
    assert region_from_url("https://dynamodb.us-east-1.amazonaws.com.evil.example") is None
