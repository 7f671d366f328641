"""The echo cases: every Machinery type with edge values, and what each side must see.

For each value, ``wire`` is the exact ``Results`` JSON a worker must store (Go's
``json.Marshal`` of ``[]TaskResult``: HTML-escaped strings, Go's float formatting), so
the same expectation pins the bytes written by a Go worker (direction 1) and by the
Python worker (direction 2).  ``go_value`` is what Go's ``AsyncResult.Get`` yields, as
mcproducer prints it (``json.Marshal`` of the reflected value; compared number-literal
exact), ``go_type`` its ``%T``; ``py`` is what Python's ``AsyncResult.get`` returns.
"""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass
from typing import Any

from interop.tests.harness import exact

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
