"""The fast Signature decoder (orjson, :mod:`machinery_compat.protocol.fastjson`) returns
exactly what the exact decoder returns, or steps aside: on generated Signatures, on
generated JSON texts around the Signature's keys (case variants, duplicates, wrong types,
floats, ``-0``, big integers, escaped and raw surrogates, invalid UTF-8, control
characters, broken syntax) and on the error cases (same DecodeError text and raw bytes)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from machinery_compat.exceptions import DecodeError
from machinery_compat.protocol import Arg, GoTime, Signature, fastjson
from machinery_compat.protocol import models as _models

pytestmark = pytest.mark.skipif(not fastjson.available(), reason="orjson not installed")


def _exact(raw: bytes) -> Signature:
    return _models._decode(Signature.from_obj, raw)


def _fast(raw: bytes) -> Signature | None:
    """The fast path's own result, or None where it steps aside."""
    return _models._fast_from_json(raw)


def _outcome(f: Any, raw: bytes) -> tuple[str, Any]:
    try:
        sig = f(raw)
    except DecodeError as e:
        return "error", (str(e), e.raw)
    return "ok", _fingerprint(sig)


def _fingerprint(sig: Signature) -> tuple[Any, ...]:
    """Everything about a decoded Signature: every field with its types (repr: Number
    texts, dict order, GoTime), the dialect, and the bytes it re-encodes to."""
    try:
        wire: Any = sig.to_json()
    except Exception as e:  # a received value that cannot be re-encoded: the same error
        wire = (type(e).__name__, str(e))
    return repr(sig), sig.wire_dialect, wire


def _same_as_exact(raw: bytes) -> Signature | None:
    """Assert the fast path agrees with the exact decoder on ``raw``; return its result."""
    fast = _fast(raw)
    exact = _outcome(_exact, raw)
    if fast is not None:
        assert exact == ("ok", _fingerprint(fast)), raw
    assert _outcome(Signature.from_json, raw) == exact, raw
    return fast


# -- generated Signatures ----------------------------------------------------------------

_TEXT = st.text(max_size=8) | st.sampled_from(["task_1-0", "-0", "<&>", "\u2028", "é"])
_INT = st.integers(-(2**64), 2**64) | st.sampled_from([0, -1, 2**63 - 1, -(2**63), 2**64 - 1])
_VALUE = st.recursive(
    st.none() | st.booleans() | _INT | _TEXT | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=6,
)
_ARG = st.builds(Arg, st.sampled_from(["int64", "string", "float64", "[]int64", "bool", "x"]),
                 _VALUE, _TEXT)
_NS = 1_000_000_000
_ETA = st.none() | st.builds(
    GoTime, st.integers(-62135596800 * _NS + 14 * 3600 * _NS, 253402300799 * _NS - 14 * 3600 * _NS),
    st.integers(-14 * 60, 14 * 60).map(lambda m: m * 60))
_I64 = st.integers(-(2**63), 2**63 - 1)


def _signature(depth: int) -> st.SearchStrategy[Signature]:
    nested: st.SearchStrategy[Any] = st.none()
    nested_list: st.SearchStrategy[Any] = st.none()
    if depth > 0:
        child = _signature(depth - 1)
        nested = st.none() | child
        nested_list = st.none() | st.lists(child, max_size=2)
    return st.builds(
        Signature, uuid=_TEXT, name=_TEXT, routing_key=_TEXT, eta=_ETA, group_uuid=_TEXT,
        group_task_count=_I64, args=st.none() | st.lists(_ARG, max_size=3),
        headers=st.none() | st.dictionaries(_TEXT, _VALUE, max_size=3),
        priority=st.integers(0, 255), immutable=st.booleans(), retry_count=_I64,
        retry_timeout=_I64, on_success=nested_list, on_error=nested_list,
        chord_callback=nested, broker_message_group_id=_TEXT, sqs_receipt_handle=_TEXT,
        stop_task_deletion_on_error=st.booleans(), ignore_when_task_not_registered=st.booleans(),
    )


def _has_float_or_big(sig: Signature) -> bool:
    text = json.dumps(json.loads(sig.to_json()), default=str)
    return any(isinstance(v, float) or (isinstance(v, int) and not -(2**63) <= v < 2**64)
               for v in _leaves(json.loads(text)))


def _leaves(v: Any) -> list[Any]:
    if isinstance(v, list):
        return [x for i in v for x in _leaves(i)]
    if isinstance(v, dict):
        return [x for i in v.values() for x in _leaves(i)]
    return [v]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_signature(2))
def test_generated_signatures_decode_exactly(sig: Signature) -> None:
    try:
        raw = sig.to_json()
    except Exception:  # a value Go could not encode (e.g. a float for int64): nothing sent
        return
    fast = _same_as_exact(raw)
    if fast is None:  # it steps aside only for floats, big integers, or a 0 near "-0"
        assert _has_float_or_big(sig) or b"-0" in raw or raw.count(b"{") + raw.count(b"[") > 128


# -- generated JSON texts ------------------------------------------------------------------

_KEYS = st.sampled_from([*Signature.FIELDS, "uuid", "NAME", "routingkey", "Delay",
                         "AttemptCount", "NoBackend", "Other", "", "\uff2eame", "Value", "Type"])
_ARG_KEYS = st.sampled_from(["Name", "Type", "Value", "name", "TYPE", "value", "Other"])
_NUMBER = st.sampled_from(["0", "-0", "1", "-1", "1.0", "1.50", "1e2", "1E-3", "-0.0",
                           "9223372036854775807", "9223372036854775808",
                           "18446744073709551615", "18446744073709551616",
                           "-9223372036854775809", "123456789012345678901234567890",
                           "01", "+1", ".5", "1.", "-", "1e400"])
_STRING_BODY = st.lists(st.sampled_from([
    "a", "é", "\\u00e9", "\\ud800", "\\udc00", "\\ud83d\\ude00", "\\ud83d", "\\u0000", "\\/",
    "\\n", "\\x", "\x01", "\x7f", "<", "-0", "\u2028", "2024-01-02T03:04:05Z",
    "2024-01-02T03:04:05.123456789+02:00",
]), max_size=4).map("".join)
_STRING = _STRING_BODY.map(lambda s: f'"{s}"')


def _json_value(depth: int) -> st.SearchStrategy[str]:
    scalar = st.sampled_from(["null", "true", "false", "nul"]) | _NUMBER | _STRING
    if depth <= 0:
        return scalar
    inner = _json_value(depth - 1)
    return (scalar
            | st.lists(inner, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]")
            | _json_object(inner, _KEYS | _STRING_BODY)
            | _json_object(inner, _ARG_KEYS))


def _json_object(values: st.SearchStrategy[str], keys: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    pair = st.tuples(keys, values).map(lambda kv: json.dumps(kv[0]) + ":" + kv[1]
                                       if "\\" not in kv[0] else f'"{kv[0]}":{kv[1]}')
    return st.lists(pair, max_size=5).map(lambda ps: "{" + ",".join(ps) + "}")


def _sig_text() -> st.SearchStrategy[str]:
    """Objects that mostly look like a Signature: its keys with mostly right values."""
    value = _json_value(2)
    arg = _json_object(value, _ARG_KEYS) | st.just('{"Name":"","Type":"int64","Value":1}')
    typed = st.one_of(
        st.tuples(st.sampled_from(["UUID", "Name", "RoutingKey", "GroupUUID"]), _STRING),
        st.tuples(st.sampled_from(["GroupTaskCount", "Priority", "RetryCount", "RetryTimeout"]),
                  _NUMBER),
        st.tuples(st.sampled_from(["Immutable", "StopTaskDeletionOnError"]),
                  st.sampled_from(["true", "false", "null", "0"])),
        st.tuples(st.just("ETA"), _STRING | st.just("null")),
        st.tuples(st.just("Args"), st.lists(arg | st.just("null"), max_size=3).map(
            lambda xs: "[" + ",".join(xs) + "]")),
        st.tuples(st.sampled_from(["Headers", "OnSuccess", "ChordCallback"]), value),
        st.tuples(_KEYS, value),
    )
    pair = typed.map(lambda kv: json.dumps(kv[0]) + ":" + kv[1])
    return st.lists(pair, max_size=8).map(lambda ps: "{" + ",".join(ps) + "}")


_RAW_MUTATION = st.sampled_from([b"", b" ", b"\n", b"\xff", b"\xed\xa0\x80", b"\xc3", b",",
                                 b"}", b"\x00", b"\xef\xbb\xbf"])


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(_sig_text(), _RAW_MUTATION, st.integers(0, 10_000))
def test_generated_json_texts_decode_exactly(text: str, extra: bytes, where: int) -> None:
    raw = text.encode("utf-8", "surrogatepass")
    _same_as_exact(raw)
    at = where % (len(raw) + 1)
    _same_as_exact(raw[:at] + extra + raw[at:])


# -- chosen cases ------------------------------------------------------------------------

_BASE = Signature(uuid="task_1", name="add", routing_key="q", args=[Arg("int64", 1)]).to_json()


def _with(field: str, value: str) -> bytes:
    return _BASE.replace(b'"' + field.encode() + b'":', b'"' + field.encode() + b'":' + value.encode() + b',"_":', 1)


@pytest.mark.parametrize("raw", [
    _BASE,
    _BASE.replace(b'"Value":1', b'"Value":-0'),
    _BASE.replace(b'"Value":1', b'"Value":1.0'),
    _BASE.replace(b'"Value":1', b'"Value":18446744073709551616'),
    _BASE.replace(b'"Value":1', b'"Value":"\\ud800"'),
    _BASE.replace(b'"Value":1', b'"Value":"\xff"'),
    _BASE.replace(b'"Name":"add"', b'"Name":"add","name":"sub"'),
    _BASE.replace(b'"Name":"add"', b'"Name":"add","Name":"sub"'),
    _BASE.replace(b'"Priority":0', b'"Priority":256'),
    _BASE.replace(b'"Priority":0', b'"Priority":-0'),
    _BASE.replace(b'"RetryCount":0', b'"RetryCount":9223372036854775808'),
    _BASE.replace(b'"Immutable":false', b'"Immutable":0'),
    _BASE.replace(b'"ETA":null', b'"ETA":"2024-01-02T03:04:05Z"'),
    _BASE.replace(b'"ETA":null', b'"ETA":"yesterday"'),
    _BASE.replace(b'"OnSuccess":null', b'"OnSuccess":[null]'),
    _BASE.replace(b'"OnSuccess":null', b'"OnSuccess":[' + _BASE + b']'),
    _BASE.replace(b'"Headers":null', b'"Headers":{"a":[1,2.5],"b":{"c":-0}}'),
    _BASE.replace(b'"Headers":null', b'"Headers":' + b'[' * 200 + b']' * 200),
    _BASE.replace(b'"Args":[', b'"Args":[null,'),
    _BASE + b"x",
    b"[]", b"null", b"", b"{}",
], ids=lambda r: r[:60].decode("utf-8", "replace"))
def test_chosen_cases(raw: bytes) -> None:
    _same_as_exact(raw)


def test_the_common_message_takes_the_fast_path() -> None:
    sig = _fast(_BASE)
    assert sig is not None and sig.args is not None
    assert sig.args[0].value == fastjson.Number("1")
    assert sig.to_json() == _BASE


def test_fast_path_off_falls_back_to_the_exact_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastjson, "_loads", None)
    assert not fastjson.available()
    assert fastjson.signature_obj(_BASE) is None
    assert Signature.from_json(_BASE).to_json() == _BASE
