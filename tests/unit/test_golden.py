"""Bytes captured from Go Machinery (tests/data/golden/golden.json) against the Python codec.

The file is written by the Go capture program under interop/ (an array of
``{"name", "kind", "json", ...}``).  Without it these tests skip, except under ``CI=true``
where a missing file is a failure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from machinery_compat.protocol.gotime import GoTime
from machinery_compat.protocol.gotypes import SUPPORTED_TYPES
from machinery_compat.protocol.models import (
    PENDING,
    SUCCESS,
    Arg,
    GroupMeta,
    Signature,
    TaskResult,
    TaskState,
)

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "golden.json"
MISSING = f"{GOLDEN} is missing: it is written by the Go golden-capture program in interop/"
DECODERS: dict[str, Callable[[bytes], Any]] = {
    "signature": Signature.from_json,
    "task_state": TaskState.from_json,
    "group_meta": GroupMeta.from_json,
}


def _load() -> dict[str, dict[str, Any]] | None:
    if not GOLDEN.exists():
        return None
    cases = json.loads(GOLDEN.read_text("utf-8"))
    return {case["name"]: case for case in cases}


CASES = _load()


def _require_cases() -> dict[str, dict[str, Any]]:
    if CASES is None:
        if os.environ.get("CI") == "true":
            pytest.fail(MISSING + " (required when CI=true)")
        pytest.skip(MISSING)
    return CASES


def _case_bytes(name: str) -> bytes:
    cases = _require_cases()
    assert name in cases, f"golden case {name!r} not in {GOLDEN}"
    return str(cases[name]["json"]).encode("utf-8")


def _names() -> list[str]:
    if CASES is None:
        return ["<golden file missing>"]
    return sorted(CASES)


def test_golden_file_present() -> None:
    cases = _require_cases()
    assert cases, f"{GOLDEN} holds no cases"
    for name, case in cases.items():
        assert case["kind"] in DECODERS, f"{name}: unknown kind {case['kind']!r}"
        assert isinstance(case["json"], str) and case["json"], name


@pytest.mark.parametrize("name", _names())
def test_decode_then_reencode_is_byte_identical(name: str) -> None:
    cases = _require_cases()
    raw = _case_bytes(name)
    decoded = DECODERS[cases[name]["kind"]](raw)
    assert decoded.to_json() == raw


def _python_args(sig: Signature) -> Signature:
    """The signature with every argument converted to a Python value, then re-typed."""
    args = [Arg(a.type, a.python_value, a.name) for a in sig.args or ()]
    return sig.copy(args=args if sig.args is not None else None)


@pytest.mark.parametrize("name", ["every_type", "redis_add_1_1", "on_error_callback"])
def test_python_values_reencode_identically(name: str) -> None:
    # converting received values to Python and back reproduces Go's bytes for all 29 types
    raw = _case_bytes(name)
    sig = _python_args(Signature.from_json(raw))
    assert sig.to_json() == raw
    if name == "every_type":
        assert {a.type for a in sig.args or ()} == set(SUPPORTED_TYPES)


@pytest.mark.parametrize(
    "name",
    [
        "state_success_add",
        "state_success_multi",
        "state_success_bytes",
        "state_success_empty",
        "state_success_floats",
        "state_success_slices",
    ],
)
def test_python_results_reencode_identically(name: str) -> None:
    raw = _case_bytes(name)
    state = TaskState.from_json(raw)
    assert state.results is not None
    rebuilt = [
        TaskResult(r.type, v) for r, v in zip(state.results, state.python_results(), strict=True)
    ]
    state.results = rebuilt
    assert state.to_json() == raw


def test_edge_values_arguments() -> None:
    sig = Signature.from_json(_case_bytes("edge_values"))
    assert sig.args is not None
    values = [a.python_value for a in sig.args[:15]]
    assert values[:4] == [-(2**63), 2**63 - 1, 2**64 - 1, -0.0]
    assert values[4:13] == [
        1e20,
        1e21,
        1e-6,
        1e-7,
        123456789012345678.0,
        0.1,
        5e-324,
        1.7976931348623157e308,
        1.0,
    ]
    assert values[13:15] == [0.10000000149011612, 16777216.0]


# --------------------------------------------------------------------------------------
# hand-built values against Go's bytes
# --------------------------------------------------------------------------------------

UUID = "task_7e0b7c39-3d0c-4b5e-9e1a-2f7d5c1b8a90"
NOW = GoTime.parse("2024-05-01T12:34:56.123456789Z")


def _redis_add_1_1() -> Signature:
    return Signature(
        uuid=UUID,
        name="add",
        routing_key="machinery_tasks",
        args=[Arg("int64", 1), Arg("int64", 1)],
        headers={},
    )


def _redis_add_eta() -> Signature:
    return _redis_add_1_1().copy(
        eta=GoTime.parse("2024-05-01T12:35:01.5Z"), retry_count=2, retry_timeout=1
    )


HAND_BUILT: dict[str, Callable[[], Any]] = {
    "redis_add_1_1": _redis_add_1_1,
    "redis_add_eta": _redis_add_eta,
    "empty_signature": Signature,
    "state_pending": lambda: TaskState(UUID, PENDING, task_name="add", created_at=NOW),
    "state_success_add": lambda: TaskState(
        UUID, SUCCESS, task_name="add", results=[TaskResult("int64", 2)], created_at=NOW
    ),
    "group_meta": lambda: GroupMeta(
        group_uuid="group_0f3c2b1a-9d8e-4f7a-8b6c-5d4e3f2a1b0c",
        task_uuids=["task_group-0001", "task_group-0002", "task_group-0003"],
        created_at=GoTime.parse("2024-05-01T12:00:00Z"),
    ),
}


@pytest.mark.parametrize("name", sorted(HAND_BUILT))
def test_hand_built_value_matches_go(name: str) -> None:
    raw = _case_bytes(name)
    assert HAND_BUILT[name]().to_json() == raw


def test_redis_add_eta_score() -> None:
    sig = Signature.from_json(_case_bytes("redis_add_eta"))
    assert sig.eta is not None
    assert sig.eta.unix_ns == 1714566901500000000


# --------------------------------------------------------------------------------------
# SQS broker (§12.3): what SendMessage carries, through a recording client (no network)
# --------------------------------------------------------------------------------------

SQS_BROKER = "https://sqs.us-east-1.amazonaws.com/123456789012"
#: §12.3's body: Go encodes the signature before defaulting its routing key
SQS_ADD_1_1 = (
    b'{"UUID":"task_7e0b7c39-3d0c-4b5e-9e1a-2f7d5c1b8a90","Name":"add","RoutingKey":"",'
    b'"ETA":null,"GroupUUID":"","GroupTaskCount":0,"Args":[{"Name":"","Type":"int64","Value":1},'
    b'{"Name":"","Type":"int64","Value":1}],"Headers":{},"Priority":0,"Immutable":false,'
    b'"RetryCount":0,"RetryTimeout":0,"OnSuccess":null,"OnError":null,"ChordCallback":null,'
    b'"BrokerMessageGroupId":"","SQSReceiptHandle":"","StopTaskDeletionOnError":false,'
    b'"IgnoreWhenTaskNotRegistered":false}'
)


class _RecordingSQS:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def send_message(self, **params: Any) -> dict[str, Any]:
        self.calls.append(params)
        return {"MessageId": "m-1"}


def test_sqs_send_message_matches_go() -> None:
    from machinery_compat.brokers.sqs import SQSBroker

    client = _RecordingSQS()
    broker = SQSBroker(SQS_BROKER, client=client)
    sig = _redis_add_1_1().copy(routing_key="")
    broker.publish(sig)
    assert client.calls == [{
        "QueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/machinery_tasks",
        "MessageBody": SQS_ADD_1_1.decode(),
    }]  # no MessageAttributes, no DelaySeconds


def test_sqs_body_is_the_go_redis_body_with_an_empty_routing_key() -> None:
    go = _case_bytes("redis_add_1_1")
    assert go.replace(b'"RoutingKey":"machinery_tasks"', b'"RoutingKey":""') == SQS_ADD_1_1


def test_sqs_eta_five_seconds_ahead() -> None:
    from machinery_compat.brokers.sqs import SQSBroker

    broker = SQSBroker(SQS_BROKER, client=_RecordingSQS())
    eta = NOW.add_seconds(5)
    exact = broker.message_params(_redis_add_1_1().copy(routing_key="", eta=eta), NOW.unix_ns)
    later = broker.message_params(_redis_add_1_1().copy(routing_key="", eta=eta),
                                  NOW.unix_ns + 1_000)  # the clock moved on: truncated to 4
    assert (exact["DelaySeconds"], later["DelaySeconds"]) == (5, 4)
    assert exact["MessageBody"] == SQS_ADD_1_1.decode().replace(
        '"ETA":null', '"ETA":"2024-05-01T12:35:01.123456789Z"')
