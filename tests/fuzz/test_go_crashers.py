"""Arguments that would crash or livelock a Go worker are refused by the Python producer.

Go's ``ReflectArgs`` panics outside its ``recover`` block when a slice type (``[]int64``,
``[]string``, ``[]byte``…) gets a JSON boolean or object, killing the Go worker process
(protocol reference §2.2); a string or number for a non-byte slice is iterated byte by byte.
Every public way of sending refuses such values with :class:`EncodeError` before anything
is written (no PENDING state, no message), and whatever it does accept is, for a slice type,
a JSON array or ``null`` (or a base64 string for ``[]byte``/``[]uint8``).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from machinery_compat import Arg, Machinery, Signature
from machinery_compat.backends import memory as memory_backend
from machinery_compat.brokers import memory as memory_broker
from machinery_compat.canvas import chain, chord, group
from machinery_compat.exceptions import EncodeError
from machinery_compat.protocol.gotypes import BYTES_TYPES, SLICE_TYPES

#: Values Go's reflection cannot take for a slice type: booleans and objects panic, strings
#: and numbers for non-byte slices are iterated byte by byte.
CRASHERS: list[Any] = [True, False, {}, {"a": 1}, {"Type": "int64", "Value": 1}, 0, 7, 1.5]
NOT_FOR_NON_BYTE_SLICES: list[Any] = ["123", "", "aGk="]
SLICES = sorted(SLICE_TYPES)
EXAMPLES = int(os.environ.get("FUZZ_HYPOTHESIS_EXAMPLES", "400"))


@pytest.fixture
def app() -> Iterator[Machinery]:
    memory_broker.reset("crashers")
    memory_backend.reset("crashers")
    app = Machinery("memory://crashers", "memory://crashers")

    @app.task(name="takes_list")
    def takes_list(xs: list[int]) -> int:
        return len(xs)

    yield app
    app.close()


def _nothing_sent(app: Machinery) -> None:
    broker: Any = app.broker
    backend: Any = app.backend
    assert broker.messages() == [] and broker.delayed_messages() == []
    assert backend._s.data == {}  # no PENDING state either


def _bad_pairs() -> list[tuple[str, Any]]:
    pairs = [(t, v) for t in SLICES for v in CRASHERS]
    pairs += [(t, v) for t in SLICES if t not in BYTES_TYPES for v in NOT_FOR_NON_BYTE_SLICES]
    pairs += [(t, [v]) for t in SLICES for v in ([1], {"a": 1}, None)]  # bad elements
    pairs += [("[]int64", [True]), ("[]string", [1]), ("[]bool", ["true"]), ("[]byte", [256]),
              ("[]uint8", [-1]), ("[]float64", ["1.5"]), ("[]int8", [1.5])]
    return pairs


@pytest.mark.parametrize(("type_name", "value"), _bad_pairs())
def test_arg_validate_refuses(type_name: str, value: Any) -> None:
    with pytest.raises(EncodeError):
        Arg(type_name, value).validate()


def _senders(app: Machinery) -> dict[str, Callable[[Arg], object]]:
    sig = app.signature
    return {
        "send_task": lambda a: app.send_task("go_task", args=[a]),
        "send_signature": lambda a: app.send_signature(Signature(name="go_task", args=[a])),
        "send_group": lambda a: app.send_group([Signature(name="go_task", args=[a])]),
        "send_chain": lambda a: app.send_chain(
            [Signature(name="ok", args=[], on_success=[Signature(name="go_task", args=[a])])]),
        "signature.delay": lambda a: sig("go_task", args=[a]).delay(),
        "signature.apply_async": lambda a: sig("go_task").apply_async(args=[a]),
        "task.delay": lambda a: app.tasks["takes_list"].delay(a),  # type: ignore[arg-type]
        "chain": lambda a: chain(sig("ok"), sig("go_task", args=[a])).apply_async(),
        "group": lambda a: group(sig("ok"), sig("go_task", args=[a])).apply_async(),
        "chord callback": lambda a: chord([sig("ok")], sig("go_task", args=[a])).apply_async(),
        "link": lambda a: app.send_task("ok", link=sig("go_task", args=[a])),
        "link_error": lambda a: app.send_task("ok", link_error=sig("go_task", args=[a])),
    }


@pytest.mark.parametrize("sender", sorted(_senders(Machinery("memory://unused"))))
@pytest.mark.parametrize(("type_name", "value"),
                         [("[]int64", True), ("[]string", {"k": "v"}), ("[]byte", False),
                          ("[]float64", {}), ("[]bool", "true"), ("[]int64", [True])])
def test_every_way_of_sending_refuses(app: Machinery, sender: str, type_name: str,
                                      value: Any) -> None:
    with pytest.raises(EncodeError, match=r"cannot be sent as Go type|cannot"):
        _senders(app)[sender](Arg(type_name, value))
    _nothing_sent(app)


def test_untyped_python_values_never_become_a_crashing_slice(app: Machinery) -> None:
    """Values without an explicit type get one inferred that matches them (a dict is not
    sent at all), so only an explicit wrong type can be wrong, and that is refused."""
    with pytest.raises(EncodeError):
        app.send_task("go_task", args=[{"a": 1}])
    with pytest.raises(EncodeError):
        app.send_task("go_task", args=[[True, 1]])  # a mixed list has no Go slice type
    _nothing_sent(app)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=4)
    | st.tuples(inner, inner),
    max_leaves=12,
)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(type_name=st.sampled_from(SLICES), value=_json_values)
def test_accepted_slice_values_are_arrays_go_can_reflect(type_name: str, value: Any) -> None:
    """For any value: either refused, or sent as a JSON array (each element the scalar
    type's JSON), ``null``, or base64 text for a byte slice."""
    arg = Arg(type_name, value)
    try:
        arg.validate()
    except EncodeError:
        return
    sent = json.loads(arg.to_go_json())["Value"]
    if type_name in BYTES_TYPES and isinstance(sent, str):
        base64.b64decode(sent, validate=True)
        return
    assert sent is None or isinstance(sent, list), (type_name, value, sent)
    element_kinds = {
        "[]bool": (bool,), "[]string": (str,), "[]float32": (int, float),
        "[]float64": (int, float),
    }.get(type_name, (int,))
    for element in sent or ():
        assert isinstance(element, element_kinds), (type_name, value, sent)
        if element_kinds == (int,):
            assert not isinstance(element, bool), (type_name, value, sent)
