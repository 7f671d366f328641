"""Signature / Arg / TaskState / GroupMeta: golden bytes of §12 and Go's decoding rules (§1.6)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from machinery_compat.exceptions import ArgTypeError, DecodeError, EncodeError
from machinery_compat.protocol.gojson import Number
from machinery_compat.protocol.gotime import GoTime
from machinery_compat.protocol.gotypes import SUPPORTED_TYPES
from machinery_compat.protocol.models import (
    FAILURE,
    PENDING,
    READY_STATES,
    RECEIVED,
    SUCCESS,
    Arg,
    GroupMeta,
    Signature,
    TaskResult,
    TaskState,
)

UUID = "task_7e0b7c39-3d0c-4b5e-9e1a-2f7d5c1b8a90"
NOW = "2024-05-01T12:34:56.123456789Z"

# machinery-protocol.md §1.1 and §12.1, byte for byte
EMPTY_SIGNATURE = (
    b'{"UUID":"","Name":"","RoutingKey":"","ETA":null,"GroupUUID":"","GroupTaskCount":0,'
    b'"Args":null,"Headers":null,"Priority":0,"Immutable":false,"RetryCount":0,'
    b'"RetryTimeout":0,"OnSuccess":null,"OnError":null,"ChordCallback":null,'
    b'"BrokerMessageGroupId":"","SQSReceiptHandle":"","StopTaskDeletionOnError":false,'
    b'"IgnoreWhenTaskNotRegistered":false}'
)
RPUSH_BODY = (
    b'{"UUID":"task_7e0b7c39-3d0c-4b5e-9e1a-2f7d5c1b8a90","Name":"add",'
    b'"RoutingKey":"machinery_tasks","ETA":null,"GroupUUID":"","GroupTaskCount":0,'
    b'"Args":[{"Name":"","Type":"int64","Value":1},{"Name":"","Type":"int64","Value":1}],'
    b'"Headers":{},"Priority":0,"Immutable":false,"RetryCount":0,"RetryTimeout":0,'
    b'"OnSuccess":null,"OnError":null,"ChordCallback":null,"BrokerMessageGroupId":"",'
    b'"SQSReceiptHandle":"","StopTaskDeletionOnError":false,'
    b'"IgnoreWhenTaskNotRegistered":false}'
)
ZADD_BODY = (
    b'{"UUID":"task_7e0b7c39-3d0c-4b5e-9e1a-2f7d5c1b8a90","Name":"add",'
    b'"RoutingKey":"machinery_tasks","ETA":"2024-05-01T12:35:01.5Z","GroupUUID":"",'
    b'"GroupTaskCount":0,'
    b'"Args":[{"Name":"","Type":"int64","Value":1},{"Name":"","Type":"int64","Value":1}],'
    b'"Headers":{},"Priority":0,"Immutable":false,"RetryCount":2,"RetryTimeout":1,'
    b'"OnSuccess":null,"OnError":null,"ChordCallback":null,"BrokerMessageGroupId":"",'
    b'"SQSReceiptHandle":"","StopTaskDeletionOnError":false,'
    b'"IgnoreWhenTaskNotRegistered":false}'
)
STATE_PENDING = (
    b'{"TaskUUID":"task_7e0b7c39-3d0c-4b5e-9e1a-2f7d5c1b8a90","TaskName":"add",'
    b'"State":"PENDING","Results":null,"Error":"",'
    b'"CreatedAt":"2024-05-01T12:34:56.123456789Z","TTL":0}'
)
STATE_SUCCESS = (
    b'{"TaskUUID":"task_7e0b7c39-3d0c-4b5e-9e1a-2f7d5c1b8a90","TaskName":"add",'
    b'"State":"SUCCESS","Results":[{"Type":"int64","Value":2}],"Error":"",'
    b'"CreatedAt":"2024-05-01T12:34:56.123456789Z","TTL":0}'
)
STATE_RECEIVED_NO_PRIOR = (
    b'{"TaskUUID":"task_7e0b7c39-3d0c-4b5e-9e1a-2f7d5c1b8a90","TaskName":"",'
    b'"State":"RECEIVED","Results":null,"Error":"","CreatedAt":"0001-01-01T00:00:00Z",'
    b'"TTL":0}'
)
STATE_SUCCESS_NO_MERGE = (  # §12.2 AMQP backend / §12.6 Memcache
    b'{"TaskUUID":"task_7e0b7c39-3d0c-4b5e-9e1a-2f7d5c1b8a90","TaskName":"",'
    b'"State":"SUCCESS","Results":[{"Type":"int64","Value":2}],"Error":"",'
    b'"CreatedAt":"0001-01-01T00:00:00Z","TTL":0}'
)


def add_signature(**changes: Any) -> Signature:
    sig = Signature(
        uuid=UUID,
        name="add",
        routing_key="machinery_tasks",
        args=[Arg("int64", 1), Arg("int64", 1)],
        headers={},
    )
    return sig.copy(**changes)


# --------------------------------------------------------------------------------------
# golden bytes
# --------------------------------------------------------------------------------------


def test_empty_signature_bytes() -> None:
    assert Signature().to_json() == EMPTY_SIGNATURE
    assert Signature.from_json(EMPTY_SIGNATURE).to_json() == EMPTY_SIGNATURE
    assert Signature.from_json(b"{}").to_json() == EMPTY_SIGNATURE


def test_rpush_body() -> None:
    sig = add_signature()
    assert sig.to_json() == RPUSH_BODY
    assert sig.to_go_json() == RPUSH_BODY.decode()


def test_zadd_body_and_score() -> None:
    eta = GoTime.parse("2024-05-01T12:35:01.5Z")
    sig = add_signature(eta=eta, retry_count=2, retry_timeout=1)
    assert sig.to_json() == ZADD_BODY
    assert eta.unix_ns == 1714566901500000000
    decoded = Signature.from_json(ZADD_BODY)
    assert decoded.eta is not None
    assert decoded.eta.unix_ns == 1714566901500000000
    assert (decoded.retry_count, decoded.retry_timeout) == (2, 1)


def test_state_pending_bytes() -> None:
    state = TaskState(task_uuid=UUID, state=PENDING, task_name="add", created_at=GoTime.parse(NOW))
    assert state.to_json() == STATE_PENDING


def test_state_success_bytes() -> None:
    state = TaskState(
        task_uuid=UUID,
        state=SUCCESS,
        task_name="add",
        results=[TaskResult("int64", 2)],
        created_at=GoTime.parse(NOW),
    )
    assert state.to_json() == STATE_SUCCESS
    assert TaskState(UUID, SUCCESS, results=[TaskResult("int64", 2)]).to_json() == (
        STATE_SUCCESS_NO_MERGE
    )


def test_state_received_without_prior_bytes() -> None:
    assert TaskState(task_uuid=UUID, state=RECEIVED).to_json() == STATE_RECEIVED_NO_PRIOR


@pytest.mark.parametrize(
    "raw", [STATE_PENDING, STATE_SUCCESS, STATE_RECEIVED_NO_PRIOR, STATE_SUCCESS_NO_MERGE]
)
def test_state_round_trip(raw: bytes) -> None:
    assert TaskState.from_json(raw).to_json() == raw


def test_state_head_middle_tail_compose_the_document() -> None:
    state = TaskState.from_json(STATE_SUCCESS)
    text = state.head() + '"add"' + state.middle() + '"' + NOW + '"' + state.tail()
    assert text == STATE_SUCCESS.decode()


def test_state_failure_error_text_escaped() -> None:
    state = TaskState(UUID, FAILURE, error="boom <&>")
    assert b'"Error":"boom \\u003c\\u0026\\u003e"' in state.to_json()
    assert TaskState.from_json(state.to_json()).error == "boom <&>"


def test_group_meta_bytes_and_round_trip() -> None:
    meta = GroupMeta(
        group_uuid="group_1",
        task_uuids=["task_a", "task_b"],
        created_at=GoTime.parse("2024-05-01T12:00:00Z"),
        ttl=3600,
    )
    raw = (
        b'{"GroupUUID":"group_1","TaskUUIDs":["task_a","task_b"],"ChordTriggered":false,'
        b'"Lock":false,"CreatedAt":"2024-05-01T12:00:00Z","TTL":3600}'
    )
    assert meta.to_json() == raw
    back = GroupMeta.from_json(raw)
    assert back == meta
    assert back.to_json() == raw
    triggered = GroupMeta.from_json(
        raw.replace(b'"ChordTriggered":false', b'"chordtriggered":true')
    )
    assert triggered.chord_triggered is True
    assert GroupMeta("g", []).to_json() == (
        b'{"GroupUUID":"g","TaskUUIDs":[],"ChordTriggered":false,"Lock":false,'
        b'"CreatedAt":"0001-01-01T00:00:00Z","TTL":0}'
    )


# --------------------------------------------------------------------------------------
# nil versus empty, order, nesting
# --------------------------------------------------------------------------------------


def test_args_nil_versus_empty() -> None:
    assert b'"Args":null' in Signature(args=None).to_json()
    assert b'"Args":[]' in Signature(args=[]).to_json()
    assert Signature.from_json(Signature(args=[]).to_json()).args == []
    assert Signature.from_json(Signature(args=None).to_json()).args is None


def test_headers_nil_empty_and_sorted() -> None:
    assert b'"Headers":null' in Signature(headers=None).to_json()
    assert b'"Headers":{}' in Signature(headers={}).to_json()
    sig = Signature(headers={"zeta": "z", "Alpha": "A", "alpha": 1, "_u": True, "n": None})
    assert b'"Headers":{"Alpha":"A","_u":true,"alpha":1,"n":null,"zeta":"z"}' in sig.to_json()
    assert Signature.from_json(Signature(headers={}).to_json()).headers == {}
    assert Signature.from_json(Signature(headers=None).to_json()).headers is None


def test_callbacks_nil_versus_empty() -> None:
    raw = Signature(on_success=[], on_error=None).to_json()
    assert b'"OnSuccess":[],"OnError":null' in raw
    back = Signature.from_json(raw)
    assert back.on_success == []
    assert back.on_error is None


def test_keys_in_go_declaration_order() -> None:
    keys = list(json.loads(Signature().to_json()))
    assert keys == list(Signature.FIELDS)
    assert list(json.loads(Arg("int64", 1).to_go_json())) == ["Name", "Type", "Value"]
    assert list(json.loads(TaskState("u", PENDING).to_json())) == list(TaskState.FIELDS)
    assert list(json.loads(GroupMeta("g", []).to_json())) == list(GroupMeta.FIELDS)


def test_nested_signatures_round_trip() -> None:
    third = Signature(uuid="t3", name="multiply", args=[Arg("int64", 3)])
    second = Signature(uuid="t2", name="add", args=[Arg("int64", 5)], on_success=[third])
    cb = Signature(uuid="chord_1", name="sum", immutable=True)
    err = Signature(uuid="e1", name="concat", args=[Arg("string", "err: ")])
    first = add_signature(on_success=[second], on_error=[err], chord_callback=cb)
    raw = first.to_json()
    assert raw.count(b'"UUID"') == 5
    back = Signature.from_json(raw)
    assert back.to_json() == raw
    assert back.on_success is not None and back.on_success[0].on_success is not None
    assert back.on_success[0].on_success[0].name == "multiply"
    assert back.chord_callback is not None and back.chord_callback.immutable is True


# --------------------------------------------------------------------------------------
# decoding leniency (§1.6)
# --------------------------------------------------------------------------------------


def test_keys_match_case_insensitively() -> None:
    raw = (
        b'{"uuid":"u1","NAME":"add","routingkey":"q","eta":"2024-05-01T12:00:00Z",'
        b'"groupuuid":"g","GROUPTASKCOUNT":4,'
        b'"args":[{"name":"n","TYPE":"int64","vAlUe":7}],"HEADERS":{"Key":"v"},'
        b'"priority":3,"immutable":true,"retrycount":2,"RETRYTIMEOUT":5,'
        b'"onsuccess":[{"name":"cb"}],"ONERROR":[],"chordcallback":{"Name":"cc"},'
        b'"brokermessagegroupid":"bg","sqsreceipthandle":"r",'
        b'"stoptaskdeletiononerror":true,"ignorewhentasknotregistered":true}'
    )
    sig = Signature.from_json(raw)
    assert (sig.uuid, sig.name, sig.routing_key) == ("u1", "add", "q")
    assert sig.eta == GoTime.parse("2024-05-01T12:00:00Z")
    assert (sig.group_uuid, sig.group_task_count) == ("g", 4)
    assert sig.args == [Arg("int64", Number("7"), "n")]
    assert sig.headers == {"Key": "v"}  # map keys are data, not folded
    assert (sig.priority, sig.immutable, sig.retry_count, sig.retry_timeout) == (3, True, 2, 5)
    assert sig.on_success is not None and sig.on_success[0].name == "cb"
    assert sig.on_error == []
    assert sig.chord_callback is not None and sig.chord_callback.name == "cc"
    assert (sig.broker_message_group_id, sig.sqs_receipt_handle) == ("bg", "r")
    assert sig.stop_task_deletion_on_error and sig.ignore_when_task_not_registered
    assert sig.to_json().startswith(b'{"UUID":"u1","Name":"add","RoutingKey":"q",')


def test_case_insensitive_state_and_result_keys() -> None:
    state = TaskState.from_json(
        b'{"taskuuid":"u","STATE":"SUCCESS","results":[{"type":"int64","VALUE":2}],'
        b'"createdat":"2024-05-01T12:00:00Z","ttl":5}'
    )
    assert state.task_uuid == "u"
    assert state.state == SUCCESS
    assert state.results == [TaskResult("int64", 2)]  # a plain value
    assert state.results is not None and state.results[0].wire_value == Number("2")
    assert state.created_at == GoTime.parse("2024-05-01T12:00:00Z")
    assert state.ttl == 5


def test_unknown_keys_ignored_and_lost() -> None:
    raw = RPUSH_BODY[:-1] + b',"Extra":{"x":[1,2]},"Foo":1}'
    sig = Signature.from_json(raw)
    assert sig.to_json() == RPUSH_BODY
    assert Arg.from_obj({"Type": "int64", "Value": Number("1"), "Bogus": 1}) == Arg(
        "int64", Number("1")
    )


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (b'{"Name":"a","Name":"c"}', "c"),
        (b'{"Name":"a","name":"b"}', "b"),
        (b'{"name":"b","Name":"a"}', "a"),
    ],
)
def test_duplicate_keys_last_wins(raw: bytes, name: str) -> None:
    assert Signature.from_json(raw).name == name


def test_null_fields_give_zero_values() -> None:
    raw = (
        b'{"UUID":null,"Name":null,"ETA":null,"GroupTaskCount":null,"Args":null,'
        b'"Headers":null,"Priority":null,"Immutable":null,"OnSuccess":null,'
        b'"ChordCallback":null}'
    )
    assert Signature.from_json(raw).to_json() == EMPTY_SIGNATURE
    state = TaskState.from_json(b'{"TaskUUID":"u","CreatedAt":null,"TTL":null}')
    assert state.created_at.is_zero()
    assert state.ttl == 0


def test_big_ints_exact_and_reencoded_verbatim() -> None:
    raw = RPUSH_BODY.replace(
        b'"Args":[{"Name":"","Type":"int64","Value":1},{"Name":"","Type":"int64","Value":1}]',
        b'"Args":[{"Name":"","Type":"uint64","Value":18446744073709551615},'
        b'{"Name":"","Type":"int64","Value":-9223372036854775808}]',
    )
    sig = Signature.from_json(raw)
    assert sig.args is not None
    assert sig.args[0].value == Number("18446744073709551615")
    assert sig.python_args() == [18446744073709551615, -9223372036854775808]
    assert sig.to_json() == raw


@pytest.mark.parametrize(
    ("arg", "python"),
    [
        (b'{"Name":"","Type":"float64","Value":1.0}', 1.0),
        (b'{"Name":"","Type":"float64","Value":1E+2}', 100.0),
        (b'{"Name":"","Type":"float32","Value":0.10}', 0.10000000149011612),
        (b'{"Name":"","Type":"[]float64","Value":[1.0,2.50]}', [1.0, 2.5]),
        (b'{"Name":"","Type":"int64","Value":1.0}', None),  # Go forwards it, then fails
        (b'{"Name":"","Type":"string","Value":true}', None),
        (b'{"Name":"","Type":"no such type","Value":{"a":[],"b":1.0}}', None),
    ],
)
def test_received_literals_forwarded_verbatim(arg: bytes, python: Any) -> None:
    raw = b'{"Name":"t","Args":[' + arg + b"]}"
    sig = Signature.from_json(raw)
    assert sig.args is not None
    assert sig.args[0].to_go_json().encode() == arg
    assert arg in sig.to_json()
    if python is None:
        with pytest.raises(ArgTypeError):
            sig.python_args()
    else:
        assert sig.python_args() == [python]


def test_received_map_values_come_back_sorted() -> None:
    # Go holds a decoded object as map[string]interface{} and writes its keys sorted
    sig = Signature.from_json(b'{"Args":[{"Type":"x","Value":{"b":1.0,"a":[],"B":null}}]}')
    assert sig.args is not None
    assert sig.args[0].to_go_json() == '{"Name":"","Type":"x","Value":{"B":null,"a":[],"b":1.0}}'


def test_literal_one_point_zero_int64_error_text() -> None:
    sig = Signature.from_json(b'{"Args":[{"Type":"int64","Value":1.0}]}')
    with pytest.raises(ArgTypeError, match=r'^strconv\.ParseInt: parsing "1\.0": invalid syntax$'):
        sig.python_args()


def test_null_arg_element_is_the_zero_arg() -> None:
    # Go decodes a null element of []Arg as Arg{} (verified with go1.26)
    sig = Signature.from_json(b'{"Args":[null]}')
    assert sig.args == [Arg("", None)]
    assert b'"Args":[{"Name":"","Type":"","Value":null}]' in sig.to_json()


def test_null_callback_element_refused() -> None:
    with pytest.raises(DecodeError):
        Signature.from_json(b'{"OnSuccess":[null]}')


def _bad(old: bytes, new: bytes) -> bytes:
    assert old in RPUSH_BODY
    return RPUSH_BODY.replace(old, new, 1)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"",
        RPUSH_BODY[:-1],  # truncated
        b"[" + RPUSH_BODY + b"]",  # top-level array
        b'"a string"',
        b"42",
        _bad(b'"RetryCount":0', b'"RetryCount":"3"'),
        _bad(b'"RetryCount":0', b'"RetryCount":1.0'),
        _bad(b'"RetryCount":0', b'"RetryCount":1e3'),
        _bad(b'"RetryCount":0', b'"RetryCount":9223372036854775808'),
        _bad(b'"Priority":0', b'"Priority":300'),
        _bad(b'"Priority":0', b'"Priority":-1'),
        _bad(b'"ETA":null', b'"ETA":"2024-05-01T12:00:00"'),
        _bad(b'"ETA":null', b'"ETA":""'),
        _bad(b'"ETA":null', b'"ETA":1714566901'),
        _bad(b'"Args":[', b'"Args":{"x":['),
        _bad(
            b'"Args":[{"Name":"","Type":"int64","Value":1},{"Name":"","Type":"int64","Value":1}]',
            b'"Args":"1,1"',
        ),
        _bad(b'"Args":[{"Name":""', b'"Args":[{"Name":5'),
        _bad(b'"Args":[{"Name":""', b'"Args":[7,{"Name":""'),
        _bad(b'"Name":"add"', b'"Name":5'),
        _bad(b'"Immutable":false', b'"Immutable":"false"'),
        _bad(b'"Immutable":false', b'"Immutable":0'),
        _bad(b'"Headers":{}', b'"Headers":[]'),
        _bad(b'"OnSuccess":null', b'"OnSuccess":{}'),
        _bad(b'"ChordCallback":null', b'"ChordCallback":[]'),
        _bad(b'"UUID":"', b'"UUID":NaN,"x":"'),
    ],
)
def test_signature_decode_errors_carry_raw(raw: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        Signature.from_json(raw)
    assert info.value.raw == raw


def test_decode_error_raw_from_str_input() -> None:
    text = '{"RetryCount":"3","Name":"é"}'
    with pytest.raises(DecodeError) as info:
        Signature.from_json(text)
    assert info.value.raw == text.encode()


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b'{"TaskUUID":1}',
        b'{"TTL":"5"}',
        b'{"CreatedAt":"2024-05-01T12:00:00"}',
        b'{"Results":{}}',
        b'{"Results":[{"Type":1}]}',
    ],
)
def test_task_state_decode_errors_carry_raw(raw: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        TaskState.from_json(raw)
    assert info.value.raw == raw


@pytest.mark.parametrize(
    "raw",
    [b"null x", b"[]", b'{"TaskUUIDs":"a"}', b'{"TaskUUIDs":[1]}', b'{"Lock":"true"}'],
)
def test_group_meta_decode_errors_carry_raw(raw: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        GroupMeta.from_json(raw)
    assert info.value.raw == raw


# --------------------------------------------------------------------------------------
# encode-side validation
# --------------------------------------------------------------------------------------


def test_encode_errors_name_the_task() -> None:
    with pytest.raises(EncodeError, match="'add'"):
        add_signature(args=[Arg("float64", float("nan"))]).to_json()
    with pytest.raises(EncodeError):
        add_signature(args=[Arg("int8", 300)]).to_json()
    with pytest.raises(EncodeError):
        Signature(headers={1: "x"}).to_json()
    with pytest.raises(EncodeError):
        Signature(on_success=[Signature(args=[Arg("uint8", -1)])]).to_json()


def test_validate() -> None:
    add_signature(priority=255).validate()
    with pytest.raises(EncodeError):
        add_signature(priority=256).validate()
    with pytest.raises(EncodeError):
        add_signature(priority=-1).validate()
    with pytest.raises(EncodeError):
        add_signature(retry_count=2**63).validate()
    with pytest.raises(EncodeError):
        add_signature(args=[Arg("int8", 128)]).validate()
    with pytest.raises(EncodeError):
        add_signature(on_error=[Signature(args=[Arg("nope", 1)])]).validate()
    with pytest.raises(EncodeError):
        add_signature(chord_callback=Signature(priority=1000)).validate()


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def test_copy_is_deep() -> None:
    cb = Signature(uuid="cb", name="sum", args=[Arg("int64", 1)])
    original = add_signature(
        headers={"k": "v"},
        on_success=[Signature(uuid="s1", name="next", args=[Arg("string", "x")])],
        on_error=[Signature(uuid="e1", name="err")],
        chord_callback=cb,
    )
    before = original.to_json()
    dup = original.copy()
    assert dup == original
    assert dup.to_json() == before

    assert dup.args is not None and dup.on_success is not None and dup.on_error is not None
    assert dup.headers is not None and dup.chord_callback is not None
    dup.args.append(Arg("int64", 9))
    dup.args[0].value = 100
    dup.headers["k"] = "changed"
    dup.on_success[0].name = "changed"
    assert dup.on_success[0].args is not None
    dup.on_success[0].args[0].value = "changed"
    dup.on_error.clear()
    dup.chord_callback.name = "changed"
    assert dup.chord_callback.args is not None
    dup.chord_callback.args.append(Arg("int64", 2))

    assert original.to_json() == before
    assert dup.to_json() != before


def test_copy_applies_changes() -> None:
    original = add_signature()
    changed = original.copy(retry_count=3, eta=GoTime.parse("2024-05-01T12:35:01.5Z"))
    assert (changed.retry_count, changed.eta) == (3, GoTime.parse("2024-05-01T12:35:01.5Z"))
    assert (original.retry_count, original.eta) == (0, None)
    assert changed.uuid == original.uuid


def test_arg_of() -> None:
    assert Arg.of(5) == Arg("int64", 5)
    assert Arg.of(True) == Arg("bool", True)
    assert Arg.of(2.5) == Arg("float64", 2.5)
    assert Arg.of(b"hi") == Arg("[]byte", b"hi")
    assert Arg.of([1, 2]) == Arg("[]int64", [1, 2])
    assert Arg.of(5, "int32") == Arg("int32", 5)
    existing = Arg("uint8", 7, "x")
    assert Arg.of(existing) is existing
    with pytest.raises(EncodeError):
        Arg.of(None)
    with pytest.raises(EncodeError):
        Arg.of({"a": 1})
    assert Arg.of(5, "int32").to_go_json() == '{"Name":"","Type":"int32","Value":5}'
    assert Arg("string", "v", name="label").to_go_json() == (
        '{"Name":"label","Type":"string","Value":"v"}'
    )


def test_arg_python_value_and_validate() -> None:
    assert Arg("int8", Number("300")).python_value == 44
    assert Arg("[]byte", "aGk=").python_value == b"hi"
    Arg("uint8", 255).validate()
    with pytest.raises(EncodeError):
        Arg("uint8", 256).validate()
    with pytest.raises(ArgTypeError, match=r"^1 is not int64$"):
        _ = Arg("int64", "1").python_value


def test_task_state_python_results() -> None:
    raw = (
        b'{"TaskUUID":"u","State":"SUCCESS","Results":['
        b'{"Type":"int64","Value":2},{"Type":"string","Value":"x"},'
        b'{"Type":"[]uint8","Value":"aGk="},{"Type":"float64","Value":1.5},'
        b'{"Type":"bool","Value":true},{"Type":"[]int64","Value":[1,2]},'
        b'{"Type":"map[string]interface {}","Value":{"a":1,"b":[2.5]}},'
        b'{"Type":"int64","Value":"3"}'  # DynamoDB stores stringified values
        b"]}"
    )
    state = TaskState.from_json(raw)
    assert state.python_results() == [
        2,
        "x",
        b"hi",
        1.5,
        True,
        [1, 2],
        {"a": 1, "b": [2.5]},
        3,
    ]
    assert state.ready
    assert TaskState("u", PENDING).python_results() == []
    assert not TaskState("u", PENDING).ready
    assert {SUCCESS, FAILURE} == READY_STATES


def test_task_result_encoding() -> None:
    assert TaskResult("int64", 2).to_go_json() == '{"Type":"int64","Value":2}'
    assert TaskResult("float64", 1.0).to_go_json() == '{"Type":"float64","Value":1}'
    assert TaskResult("[]uint8", b"hi").to_go_json() == '{"Type":"[]uint8","Value":"aGk="}'
    assert TaskResult("map[string]interface {}", {"b": 1, "a": 2}).to_go_json() == (
        '{"Type":"map[string]interface {}","Value":{"a":2,"b":1}}'
    )
    with pytest.raises(EncodeError):
        TaskResult("int8", 1000).to_go_json()


# --------------------------------------------------------------------------------------
# property: decode(encode(s)) re-encodes to the identical bytes
# --------------------------------------------------------------------------------------

_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
_INT_RANGES = {
    "int": (-(2**63), 2**63 - 1), "int8": (-128, 127), "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1), "uint": (0, 2**64 - 1),
    "uint8": (0, 255), "uint16": (0, 2**16 - 1), "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}  # fmt: skip


def _scalar(type_name: str) -> st.SearchStrategy[Any]:
    if type_name in _INT_RANGES:
        lo, hi = _INT_RANGES[type_name]
        return st.integers(min_value=lo, max_value=hi)
    if type_name == "bool":
        return st.booleans()
    if type_name == "string":
        return _TEXT
    if type_name == "float64":
        return st.floats(allow_nan=False, allow_infinity=False)
    assert type_name == "float32"
    return st.floats(min_value=-3.4e38, max_value=3.4e38, allow_nan=False)


def _value(type_name: str) -> st.SearchStrategy[Any]:
    if type_name in ("[]byte", "[]uint8"):
        return st.none() | st.binary(max_size=8) | st.lists(_scalar("uint8"), max_size=4)
    if type_name.startswith("[]"):
        return st.none() | st.lists(_scalar(type_name[2:]), max_size=4)
    return _scalar(type_name)


_ARG = st.sampled_from(sorted(SUPPORTED_TYPES)).flatmap(
    lambda t: st.builds(Arg, st.just(t), _value(t), _TEXT)
)
_HEADER_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | _TEXT
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=6,
)
_NS = 1_000_000_000
_ETA = st.none() | st.builds(
    GoTime,
    st.integers((-62135596800 + 14 * 3600) * _NS, (253402300799 - 14 * 3600) * _NS),
    st.integers(-14 * 60, 14 * 60).map(lambda m: m * 60),
)


def _signature(depth: int) -> st.SearchStrategy[Signature]:
    nested: st.SearchStrategy[Any] = st.none()
    nested_list: st.SearchStrategy[Any] = st.none()
    if depth > 0:
        child = _signature(depth - 1)
        nested = st.none() | child
        nested_list = st.none() | st.lists(child, max_size=2)
    int64 = st.integers(-(2**63), 2**63 - 1)
    return st.builds(
        Signature,
        uuid=_TEXT,
        name=_TEXT,
        routing_key=_TEXT,
        eta=_ETA,
        group_uuid=_TEXT,
        group_task_count=int64,
        args=st.none() | st.lists(_ARG, max_size=4),
        headers=st.none() | st.dictionaries(_TEXT, _HEADER_VALUE, max_size=4),
        priority=st.integers(0, 255),
        immutable=st.booleans(),
        retry_count=int64,
        retry_timeout=int64,
        on_success=nested_list,
        on_error=nested_list,
        chord_callback=nested,
        broker_message_group_id=_TEXT,
        sqs_receipt_handle=_TEXT,
        stop_task_deletion_on_error=st.booleans(),
        ignore_when_task_not_registered=st.booleans(),
    )


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(_signature(2))
def test_property_signature_round_trip(sig: Signature) -> None:
    sig.validate()
    raw = sig.to_json()
    parsed = json.loads(raw)  # valid JSON for any decoder
    assert list(parsed) == list(Signature.FIELDS)
    back = Signature.from_json(raw)
    assert back.to_json() == raw
    assert Signature.from_json(back.to_json()).to_json() == raw
    assert (back.uuid, back.name, back.eta, back.priority) == (
        sig.uuid,
        sig.name,
        sig.eta,
        sig.priority,
    )
    assert [(a.type, a.name) for a in back.args or ()] == [(a.type, a.name) for a in sig.args or ()]
    assert (back.args is None) == (sig.args is None)
    assert (back.headers is None) == (sig.headers is None)


def test_decode_error_keeps_raw_text_with_lone_surrogates() -> None:
    from machinery_compat import DecodeError as _DecodeError
    from machinery_compat.protocol import Signature as _Signature

    text = '{"UUID":1,"x":"\ud800"}'
    with pytest.raises(_DecodeError) as info:
        _Signature.from_json(text)
    assert info.value.raw == text.encode("utf-8", "surrogatepass")
