"""The echo cases: every Machinery type with edge values, and what each side must see.

For each value, ``wire`` is the exact ``Results`` JSON a worker must store (Go's
``json.Marshal`` of ``[]TaskResult``: HTML-escaped strings, Go's float formatting), so
the same expectation pins the bytes written by a Go worker (direction 1) and by the
Python worker (direction 2).  ``go_value`` is what Go's ``AsyncResult.Get`` yields, as
mcproducer prints it (``json.Marshal`` of the reflected value; compared number-literal
exact), ``go_type`` its ``%T``; ``py`` is what Python's ``AsyncResult.get`` returns.

On the DynamoDB backend (§6.5) a worker stores ``{Type: S, Value: S}`` with the value as Go's
``fmt`` ``%v`` text (:func:`go_sprint`, written here independently of machinery_compat), and
Go's ``AsyncResult`` then only reads ``string`` results back: :func:`go_dynamodb_read`
gives the error Go reports for any other type (observed with v1 and v2 on moto).
"""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from interop.tests.harness import Num, exact

#: The state writes a task goes through, whichever side runs it (checked with MONITOR).
SUCCESS_STATES = ["PENDING", "RECEIVED", "STARTED", "SUCCESS"]
FAILURE_STATES = ["PENDING", "RECEIVED", "STARTED", "FAILURE"]


def f32(x: float) -> float:
    """``float32(x)`` as a Python float."""
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
U64_MAX = (1 << 64) - 1
F32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class EchoValue:
    type: str  # Go type of the argument and of the echo task
    value: Any  # Python value sent (Arg(type, value)); None = null slice
    wire: str  # expected stored Results JSON, byte for byte
    go_value: str | None = None  # Go reader's value (JSON text); default: wire's Value
    py: Any = ...  # Python reader's value; default: derived from value
    go_repr: str | None = None  # Go's %v of the read value, when worth pinning

    @property
    def task(self) -> str:
        return f"echo_{self.type}"

    @property
    def go_type(self) -> str:
        return "[]uint8" if self.type == "[]byte" else self.type

    @property
    def result_type(self) -> str:
        return self.go_type

    def expected_go_value(self) -> Any:
        if self.go_value is not None:
            return exact(self.go_value)
        return exact(self.wire)[0]["Value"]

    def expected_py(self) -> Any:
        if self.py is not ...:
            return self.py
        if self.type in ("[]byte", "[]uint8"):
            return b"" if self.value is None else bytes(self.value)
        if self.value is None:
            return []
        if self.type == "float32":
            return f32(self.value)
        if self.type == "[]float32":
            return [f32(v) for v in self.value]
        return self.value

    def producer_arg(self) -> dict[str, Any]:
        """The mcproducer input ``args`` element for this value."""
        v = self.value
        if isinstance(v, bytes):
            v = base64.b64encode(v).decode()
        return {"type": self.type, "value": v}

    def dynamo_text(self) -> str:
        """The ``%v`` text a worker stores for this value on DynamoDB."""
        return go_sprint(self.go_type, self.value)

    def dynamo_results(self) -> list[tuple[str, str]]:
        return [(self.result_type, self.dynamo_text())]

    def go_dynamodb_error(self) -> str | None:
        """The error Go's ``AsyncResult`` reports reading this result from DynamoDB (state
        SUCCESS, no values); None: it reads the value (strings only)."""
        return go_dynamodb_read(self.result_type, self.dynamo_text())

    def label(self) -> str:
        v = self.value
        text = "null" if v is None else repr(v)
        return f"{self.type}({text[:40]})"


def _r(go_type: str, value_json: str) -> str:
    rtype = "[]uint8" if go_type == "[]byte" else go_type
    return f'[{{"Type":"{rtype}","Value":{value_json}}}]'


def _v(go_type: str, value: Any, value_json: str, **kw: Any) -> EchoValue:
    return EchoValue(go_type, value, _r(go_type, value_json), **kw)


TRICKY = 'q"b\\n\n\t\r\b\f\x01\x1f\x7f'
TRICKY_WIRE = '"q\\"b\\\\n\\n\\t\\r\\b\\f\\u0001\\u001f\x7f"'

ECHO_VALUES: dict[str, list[EchoValue]] = {
    "bool": [_v("bool", True, "true"), _v("bool", False, "false")],
    "int": [_v("int", I64_MIN, str(I64_MIN)), _v("int", I64_MAX, str(I64_MAX)),
            _v("int", 0, "0")],
    "int8": [_v("int8", -128, "-128"), _v("int8", 127, "127")],
    "int16": [_v("int16", -32768, "-32768"), _v("int16", 32767, "32767")],
    "int32": [_v("int32", -(1 << 31), "-2147483648"), _v("int32", (1 << 31) - 1, "2147483647")],
    "int64": [_v("int64", I64_MIN, str(I64_MIN)), _v("int64", I64_MAX, str(I64_MAX))],
    "uint": [_v("uint", U64_MAX, str(U64_MAX)), _v("uint", 0, "0")],
    "uint8": [_v("uint8", 0, "0"), _v("uint8", 255, "255")],
    "uint16": [_v("uint16", 65535, "65535")],
    "uint32": [_v("uint32", (1 << 32) - 1, "4294967295")],
    "uint64": [_v("uint64", U64_MAX, str(U64_MAX), go_repr=str(U64_MAX)),
               _v("uint64", 0, "0")],
    "float32": [
        _v("float32", 0.1, "0.1", go_repr="0.1"),
        _v("float32", -0.0, "-0", go_repr="-0"),
        _v("float32", F32_MAX, "3.4028235e+38"),
        _v("float32", 1e-45, "1e-45"),
        _v("float32", 16777216.0, "16777216", go_repr="1.6777216e+07"),
    ],
    "float64": [
        _v("float64", -0.0, "-0", go_repr="-0"),
        _v("float64", 1e21, "1e+21", go_repr="1e+21"),
        _v("float64", 1e20, "100000000000000000000"),
        _v("float64", 1e-7, "1e-7", go_repr="1e-07"),
        _v("float64", 1e-6, "0.000001"),
        _v("float64", 0.1, "0.1", go_repr="0.1"),
        _v("float64", 5e-324, "5e-324"),
        _v("float64", 1.7976931348623157e308, "1.7976931348623157e+308"),
        _v("float64", 123456789.0, "123456789"),
    ],
    "string": [
        _v("string", "", '""'),
        _v("string", "héllo wörld ✓ 😀", '"héllo wörld ✓ 😀"'),
        _v("string", "<a href='x'>&amp;</a>",
           '"\\u003ca href=\'x\'\\u003e\\u0026amp;\\u003c/a\\u003e"'),
        _v("string", "line\u2028para\u2029", '"line\\u2028para\\u2029"'),
        _v("string", TRICKY, TRICKY_WIRE),
    ],
    "[]bool": [_v("[]bool", [True, False], "[true,false]"), _v("[]bool", [], "[]"),
               _v("[]bool", None, "[]")],
    "[]int": [_v("[]int", [I64_MIN, I64_MAX, 0], f"[{I64_MIN},{I64_MAX},0]"),
              _v("[]int", [], "[]")],
    "[]int8": [_v("[]int8", [-128, 127, 0], "[-128,127,0]"), _v("[]int8", None, "[]")],
    "[]int16": [_v("[]int16", [-32768, 32767], "[-32768,32767]")],
    "[]int32": [_v("[]int32", [-(1 << 31), (1 << 31) - 1], "[-2147483648,2147483647]")],
    "[]int64": [_v("[]int64", [I64_MIN, I64_MAX], f"[{I64_MIN},{I64_MAX}]"),
                _v("[]int64", [], "[]"), _v("[]int64", None, "[]")],
    "[]uint": [_v("[]uint", [0, U64_MAX], f"[0,{U64_MAX}]")],
    "[]uint8": [
        _v("[]uint8", b"\x00\x01\xfe\xff", '"AAH+/w=="', go_repr="[0 1 254 255]"),
        # a JSON array of bytes: Go turns it into []uint8 and stores base64
        _v("[]uint8", [0, 255], '"AP8="', go_value='"AP8="'),
        _v("[]uint8", None, '""'),
    ],
    "[]uint16": [_v("[]uint16", [0, 65535], "[0,65535]")],
    "[]uint32": [_v("[]uint32", [0, (1 << 32) - 1], "[0,4294967295]")],
    "[]uint64": [_v("[]uint64", [U64_MAX, 0], f"[{U64_MAX},0]")],
    "[]float32": [_v("[]float32", [0.1, -0.0, 16777216.0], "[0.1,-0,16777216]")],
    "[]float64": [_v("[]float64", [-0.0, 1e21, 1e-7, 0.1], "[-0,1e+21,1e-7,0.1]"),
                  _v("[]float64", None, "[]")],
    "[]byte": [_v("[]byte", b"hi\x00\xff", '"aGkA/w=="', go_repr="[104 105 0 255]"),
               _v("[]byte", b"", '""'), _v("[]byte", None, '""')],
    "[]string": [_v("[]string", ["a", "<>&", "\u2028", "é😀", ""],
                    '["a","\\u003c\\u003e\\u0026","\\u2028","é😀",""]'),
                 _v("[]string", [], "[]"), _v("[]string", None, "[]")],
}


def same(a: Any, b: Any) -> bool:
    """Equality that also tells -0.0 from 0.0, int from float, bytes from str."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# Error texts with characters that JSON escapes differently in Go and Python.
FAIL_MSG = 'kaput: "quoted" <&> é \u2028 end'
FAIL_ERROR = 'kaput: \\"quoted\\" \\u003c\\u0026\\u003e é \\u2028 end'  # as stored
PANIC_MSG = "boom <panic> & ✗"
PANIC_ERROR = "boom \\u003cpanic\\u003e \\u0026 ✗"


# --------------------------------------------------------------------------------------
# DynamoDB: Go's %v, and what Go's AsyncResult makes of it
# --------------------------------------------------------------------------------------

_UINTS = ("uint", "uint8", "uint16", "uint32", "uint64")


def _go_float(x: float, bits: int) -> str:
    """Go's ``%v`` of a float64/float32: ``%g`` with the shortest digits that round-trip at
    that width, exponent form when the exponent is < -4 or >= 6 (``1e+06``, ``1e-05``)."""
    if x == 0:
        return "-0" if math.copysign(1, x) < 0 else "0"
    sign, a = ("-" if x < 0 else ""), abs(x)
    text = repr(a)
    if bits == 32:
        for p in range(1, 10):
            text = f"{a:.{p - 1}e}"
            try:
                if f32(float(text)) == a:
                    break
            except OverflowError:  # rounded above float32's range
                continue
    t = Decimal(text).normalize().as_tuple()
    digits = "".join(map(str, t.digits))
    exp = len(digits) + int(t.exponent) - 1
    if exp < -4 or exp >= 6:
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if exp >= 0:
        whole = digits[:exp + 1].ljust(exp + 1, "0")
        frac = digits[exp + 1:]
        return sign + whole + ("." + frac if frac else "")
    return sign + "0." + "0" * (-exp - 1) + digits


def go_sprint(go_type: str, value: Any) -> str:
    """Go's ``fmt.Sprintf("%v", v)`` of the Go value of ``go_type`` a worker returns for
    ``value`` (as the echo tasks return their argument)."""
    if go_type.startswith("[]"):
        elem = "uint8" if go_type == "[]byte" else go_type[2:]
        items = list(value) if value is not None else []
        return "[" + " ".join(go_sprint(elem, v) for v in items) + "]"
    if go_type == "bool":
        return "true" if value else "false"
    if go_type == "string":
        return str(value)
    if go_type == "float64":
        return _go_float(float(value), 64)
    if go_type == "float32":
        return _go_float(f32(float(value)), 32)
    return str(int(value))


def go_dynamodb_read(go_type: str, text: str) -> str | None:
    """What Go's ``AsyncResult`` (v1 and v2) makes of a DynamoDB result ``{Type, Value: text}``:
    None for a ``string`` (read as is), else the reflection error it returns: ``"<text> is
    not <type>"`` for scalars; ``illegal base64 data at input byte 0`` for slices of unsigned
    integers and bytes; ``91 is not <elem>`` for other slices (91 = the ``[`` of ``%v``)."""
    if go_type == "string":
        return None
    if go_type.startswith("[]"):
        elem = go_type[2:]
        if elem in _UINTS or elem == "byte":
            return "illegal base64 data at input byte 0"
        return f"91 is not {elem}"
    return f"{text} is not {go_type}"


def go_dynamodb_outcome(results: list[tuple[str, str]]) -> tuple[str, list[tuple[str, str]] | None]:
    """``(error, values)`` Go's ``AsyncResult.Get`` gives for stored ``(Type, %v)`` results:
    it reflects them in order and stops at the first error."""
    for t, text in results:
        err = go_dynamodb_read(t, text)
        if err is not None:
            return err, None
    return "", [(t, text) for t, text in results]


def as_go_text(values: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    """``(go_type, value)`` pairs (``Num`` for JSON numbers) as ``(Type, %v text)``."""
    out = []
    for t, v in values:
        if isinstance(v, Num):
            v = float(v.text) if t.startswith("float") else int(v.text)
        out.append((t, go_sprint(t, v)))
    return out


def go_read_check(line: dict[str, Any], expected: list[tuple[str, Any]], *,
                  dynamodb: bool) -> None:
    """An mcproducer line read a SUCCESS with ``expected`` ``(go_type, exact value)``; on the
    DynamoDB backend: what Go's ``AsyncResult`` makes of those values' ``%v`` text (strings
    read as they are; any other type: state SUCCESS, no values, the reflection error)."""
    if dynamodb:
        error, values = go_dynamodb_outcome(as_go_text(expected))
        assert (line.get("state"), line.get("error")) == ("SUCCESS", error), line
        if values is None:
            assert "results" not in line, line
        else:
            assert [(r["go_type"], r["value"]) for r in line["results"]] == values, line
        return
    assert (line.get("state"), line.get("error")) == ("SUCCESS", ""), line
    assert [(r["go_type"], r["exact"]) for r in line["results"]] == expected, line
