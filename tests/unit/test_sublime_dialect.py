"""The sublime-security fork's wire dialect against bytes captured from the fork itself.

``tests/data/golden/sublime*.json`` are written by ``interop/sublime-golden.sh`` (the fork's
v1 tree, built from a fetched copy of its source): ``sublime.json`` (json.Marshal of the
fork's structs), ``sublime_decode.json`` (the fork's broker decoder on edge inputs) and
``sublime_brokers.json`` (what its Redis and SQS brokers really sent through
``server.SendTask``, on redis-server and moto).  Missing files skip, except under
``CI=true``.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from machinery_compat import Machinery
from machinery_compat.config import Config
from machinery_compat.exceptions import ConfigError, DecodeError, EncodeError
from machinery_compat.protocol.gotime import GoTime
from machinery_compat.protocol.models import Arg, GroupMeta, Signature, TaskState
from machinery_compat.protocol.sublime import (
    FORK_ONLY_FIELDS,
    SUBLIME_FIELDS,
    check_dialect,
    prepare_publish,
    sqs_delay_seconds,
)

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "golden"
UUID = "task_7e0b7c39-3d0c-4b5e-9e1a-2f7d5c1b8a90"
SECOND = 1_000_000_000


def _load(name: str) -> Any:
    path = GOLDEN_DIR / name
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing (written by interop/sublime-golden.sh; required when CI=true)")
        pytest.skip(f"{path} is missing: it is written by interop/sublime-golden.sh")
    return json.loads(path.read_text("utf-8"))


def _cases() -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in _load("sublime.json")}


def _case(name: str) -> bytes:
    return str(_cases()[name]["json"]).encode("utf-8")


def _names(file: str, key: str = "name") -> list[str]:
    path = GOLDEN_DIR / file
    if not path.exists():
        return ["<missing>"]
    return [c[key] for c in json.loads(path.read_text("utf-8"))]


def _add(**changes: Any) -> Signature:
    sig = Signature(uuid=UUID, name="add", routing_key="machinery_tasks",
                    args=[Arg("int64", 1), Arg("int64", 1)], headers={}, wire_dialect="sublime")
    for k, v in changes.items():
        setattr(sig, k, v)
    return sig


# -- golden round trips ------------------------------------------------------------------------

@pytest.mark.parametrize("name", _names("sublime.json"))
def test_fork_bytes_decode_and_reencode_identically(name: str) -> None:
    case = _cases()[name]
    raw = str(case["json"]).encode("utf-8")
    decoder: Any = {"signature": Signature.from_json, "task_state": TaskState.from_json,
               "group_meta": GroupMeta.from_json}[case["kind"]]
    decoded = decoder(raw)
    assert decoded.to_json() == raw
    if case["kind"] == "signature":
        assert isinstance(decoded, Signature) and decoded.wire_dialect == "sublime"


def test_python_built_signatures_are_the_fork_bytes() -> None:
    assert Signature(wire_dialect="sublime").to_json() == _case("sublime_empty_signature")
    assert _add().to_json() == _case("sublime_add_1_1")
    assert _add(routing_key="", delay=5 * SECOND).to_json() == _case("sublime_sqs_add_delay_5s")
    assert _add(delay=-1_500_000_000).to_json() == _case("sublime_negative_delay")
    assert _add(retry_count=2, attempt_count=1, retry_timeout=1).to_json() == _case("sublime_first_retry")
    assert _add(headers=None, split_span=True).to_json() == _case("sublime_split_span_null_headers")
    off = GoTime.parse("2024-05-01T12:00:00.00012+02:00")
    assert _add(ingestion_time=off, received_at=off).to_json() == _case("sublime_times_offset")


def test_every_field_set_from_python() -> None:
    full = Signature(
        uuid=UUID, name="full \u00e9\u2028<&>", routing_key="custom_queue", delay=1234567890123,
        ingestion_time=GoTime.parse("2024-05-01T05:34:56.123-07:00"),
        first_received=GoTime.parse("2024-05-01T12:34:56.123456789Z"),
        received_at=GoTime.parse("2024-05-01T12:34:57.5-07:00"),
        group_uuid="group_0f3c2b1a-9d8e-4f7a-8b6c-5d4e3f2a1b0c", group_task_count=3,
        args=[Arg("time.Time", "2024-05-01T12:00:00.5Z", "when"), Arg("string", "x\"y\\z\b\f", "s")],
        headers={"b": "2", "a": "1", "uber-trace-id": "abc:def:0:1"},
        priority=7, immutable=True, retry_count=5, attempt_count=4, retry_timeout=8, split_span=True,
        on_success=[Signature(name="cb", delay=SECOND, immutable=True)], on_error=[],
        chord_callback=Signature(name="chord", uuid="chord_1", no_backend=True),
        broker_message_group_id="mg", sqs_receipt_handle="rh==", sqs_message_id="0f1e2d3c-mid",
        azure_message_id="azid", azure_pop_receipt="AgAAAAMAAAAAAAAA",
        azure_message_content='{"UUID":"x","Delay":0}', no_backend=True,
        stop_task_deletion_on_error=True, ignore_when_task_not_registered=True,
        wire_dialect="sublime",
    )
    # nested signatures are written in the parent's dialect, as Go nests the same struct
    assert full.to_json() == _case("sublime_full")
    assert Signature.from_json(_case("sublime_full")) == full


def test_field_order_and_zero_values() -> None:
    parsed = json.loads(Signature(wire_dialect="sublime").to_json())
    assert list(parsed) == list(SUBLIME_FIELDS) == list(Signature.SUBLIME_FIELDS)
    assert len(parsed) == 29
    assert parsed["Delay"] == 0 and parsed["IngestionTime"] is None
    assert parsed["FirstReceived"] is None and parsed["ReceivedAt"] == "0001-01-01T00:00:00Z"
    assert "ETA" not in parsed
    assert set(parsed) - set(Signature.FIELDS) == set(FORK_ONLY_FIELDS)


# -- the fork's decoder ------------------------------------------------------------------------

@pytest.mark.parametrize("name", _names("sublime_decode.json"))
def test_decoder_accepts_and_refuses_what_the_fork_does(name: str) -> None:
    case = {c["name"]: c for c in _load("sublime_decode.json")}[name]
    raw = case["input"].encode("utf-8")
    if name == "upstream_bad_eta":
        # the one divergence: with no fork key the message is read by upstream's rules, and
        # upstream Go refuses ETA 5 (the fork ignores ETA altogether)
        with pytest.raises(DecodeError, match="ETA"):
            Signature.from_json(raw)
        return
    if case["ok"]:
        sig = Signature.from_json(raw)
        sig.wire_dialect = "sublime"
        assert sig.to_json().decode() == case["reencoded"]
        return
    with pytest.raises(DecodeError) as info:
        Signature.from_json(raw)
    go_error: str = case["error"]
    message = str(info.value)
    assert any(key in message for key in _tested_keys(json.loads(raw))), (message, go_error)
    assert info.value.raw == raw
    if go_error.startswith("json: cannot unmarshal number ") and "ChordCallback" not in go_error:
        assert message == go_error  # Go's exact text for numbers that do not fit


def _tested_keys(obj: dict[str, Any]) -> set[str]:
    """The keys of a decode case besides the common UUID/Name/RoutingKey (nested too)."""
    keys: set[str] = set()
    for k, v in obj.items():
        if k not in ("UUID", "Name", "RoutingKey"):
            keys.add(k)
        if isinstance(v, dict):
            keys |= _tested_keys(v)
    return keys


@pytest.mark.parametrize(("fragment", "where"), [
    ('"Delay":"5s"', "Delay"), ('"Delay":5.5', "Delay"), ('"AttemptCount":"1"', "AttemptCount"),
    ('"ReceivedAt":""', "ReceivedAt"), ('"IngestionTime":"2024-05-01 12:00:00Z"', "IngestionTime"),
    ('"FirstReceived":true', "FirstReceived"), ('"NoBackend":"yes"', "NoBackend"),
    ('"SplitSpan":0', "SplitSpan"), ('"AzureMessageContent":{}', "AzureMessageContent"),
])
def test_bad_fork_values_name_their_field(fragment: str, where: str) -> None:
    with pytest.raises(DecodeError, match=f"Signature.{where}"):
        Signature.from_json('{"Name":"add",' + fragment + "}")


def test_fork_keys_match_case_insensitively() -> None:
    sig = Signature.from_json(b'{"name":"add","delay":7,"attemptcount":2,"NOBACKEND":true}')
    assert (sig.name, sig.delay, sig.attempt_count, sig.no_backend) == ("add", 7, 2, True)
    assert sig.wire_dialect == "sublime"


# -- dialects crossing -------------------------------------------------------------------------

def test_upstream_bytes_unchanged() -> None:
    for case in _load("golden.json"):
        if case["kind"] != "signature":
            continue
        raw = str(case["json"]).encode("utf-8")
        sig = Signature.from_json(raw)
        assert sig.wire_dialect == "upstream", case["name"]
        assert sig.to_json() == raw, case["name"]
        assert sig.delay == 0 and sig.attempt_count == 0 and sig.received_at is None


def test_upstream_message_written_in_the_fork_layout() -> None:
    upstream = {c["name"]: c for c in _load("golden.json")}["redis_add_1_1"]["json"]
    sig = Signature.from_json(upstream)
    sig.wire_dialect = "sublime"  # what a sublime app does when it re-publishes it
    assert sig.to_json() == _case("sublime_add_1_1")


def test_fork_message_written_in_the_upstream_layout() -> None:
    sig = Signature.from_json(_case("sublime_first_retry"))
    assert sig.attempt_count == 1
    sig.wire_dialect = "upstream"
    parsed = json.loads(sig.to_json())
    assert list(parsed) == list(Signature.FIELDS)
    assert parsed["ETA"] is None and parsed["RetryCount"] == 2 and parsed["RetryTimeout"] == 1
    back = Signature.from_json(sig.to_json())
    assert back.wire_dialect == "upstream" and back.attempt_count == 0  # upstream drops it


def test_fork_message_keeps_a_valid_eta_and_ignores_a_bad_one() -> None:
    sig = Signature.from_json(b'{"Name":"a","Delay":1,"ETA":"2024-05-01T12:35:01.5Z"}')
    assert sig.eta == GoTime.parse("2024-05-01T12:35:01.5Z") and sig.delay == 1
    assert Signature.from_json(b'{"Name":"a","Delay":1,"ETA":5}').eta is None


def test_copy_keeps_dialect_and_fork_fields() -> None:
    sig = Signature.from_json(_case("sublime_full"))
    twin = sig.copy()
    assert twin.wire_dialect == "sublime" and twin.to_json() == _case("sublime_full")


def test_validate_refuses_what_go_cannot_hold() -> None:
    with pytest.raises(EncodeError, match="Delay"):
        _add(delay=1 << 63).validate()
    with pytest.raises(EncodeError, match="int"):
        _add(attempt_count=-(1 << 63) - 1).validate()
    with pytest.raises(EncodeError, match="wire_dialect"):
        _add(wire_dialect="fork").validate()
    _add(delay=(1 << 63) - 1).validate()


# -- delays at publish time --------------------------------------------------------------------

def test_redis_delay_is_zero_in_the_member_and_the_score_is_now_plus_delay() -> None:
    brokers = _load("sublime_brokers.json")["redis"]
    now = 1_714_566_896_123_456_789
    sig = _add(delay=5 * SECOND, wire_dialect="upstream")
    prepare_publish(sig, now, zero_delay=True)
    assert sig.to_json().decode() == brokers["zadd_member"] == brokers["rpush_member"]
    assert sig.eta is not None and sig.eta.unix_ns == now + 5 * SECOND
    # the fork's own score: its clock before SendTask + 5 s, a few µs later
    assert brokers["zadd_delay_ns"] == 5 * SECOND
    assert 5 * SECOND - 1000 <= brokers["zadd_score_minus_before_ns"] < 5 * SECOND + 10**8
    assert brokers["zadd_score_minus_after_ns"] <= 5 * SECOND + 1000
    assert brokers["zadd_list_length"] == 0 and brokers["rpush_list_length"] == 1


def test_countdown_becomes_a_relative_delay() -> None:
    now = 10**18
    sig = _add(routing_key="", eta=GoTime(now + 5 * SECOND))
    prepare_publish(sig, now, zero_delay=False)  # SQS: the body keeps Delay
    assert sig.delay == 5 * SECOND and sig.eta == GoTime(now + 5 * SECOND)
    assert sig.to_json() == _case("sublime_sqs_add_delay_5s")
    # a retry's new due time replaces a received Delay
    sig = _add(delay=7 * SECOND, eta=GoTime(now + SECOND))
    prepare_publish(sig, now, zero_delay=False)
    assert sig.delay == SECOND
    # past or no due time: no delay
    sig = _add(eta=GoTime(now - 1))
    prepare_publish(sig, now, zero_delay=True)
    assert sig.eta is None and sig.delay == 0
    sig = _add(delay=-7)
    prepare_publish(sig, now, zero_delay=False)
    assert sig.eta is None and sig.delay == -7  # kept in the body, as the fork does


def test_callback_eta_travels_as_delay() -> None:
    now = 10**18
    cb = Signature(name="cb", eta=GoTime(now + 3 * SECOND))
    inner = Signature(name="inner", eta=GoTime(now + SECOND))
    done = Signature(name="done", delay=2 * SECOND, eta=GoTime(now + 9 * SECOND))
    cb.on_error = [inner]
    sig = _add(on_success=[cb], chord_callback=done)
    prepare_publish(sig, now, zero_delay=True)
    assert (cb.delay, inner.delay, done.delay) == (3 * SECOND, SECOND, 2 * SECOND)
    body = json.loads(sig.to_json())
    assert body["Delay"] == 0 and body["OnSuccess"][0]["Delay"] == 3 * SECOND
    assert body["OnSuccess"][0]["OnError"][0]["Delay"] == SECOND
    assert body["ChordCallback"]["Delay"] == 2 * SECOND


@pytest.mark.parametrize(("case", "seconds"), [
    ("send_delay_5s", 5), ("send_delay_2500ms", 2), ("send_delay_20min_clamped", 900),
    ("send_no_delay", None),
])
def test_sqs_bodies_and_delay_seconds(case: str, seconds: int | None) -> None:
    sent = _load("sublime_brokers.json")["sqs"][case]
    body = Signature.from_json(sent["MessageBody"])
    assert body.to_json().decode() == sent["MessageBody"]
    assert sqs_delay_seconds(body.delay) == seconds
    assert sent.get("DelaySeconds") == (None if seconds is None else str(seconds))
    assert sent["QueueUrl"] == "<broker>/machinery_tasks" and body.routing_key == ""


def test_sqs_consumer_fields_read_back() -> None:
    seen = _load("sublime_brokers.json")["sqs"]["consumed_signature_as_task_sees_it"]
    sig = Signature.from_json(seen)
    assert sig.to_json().decode() == seen
    assert sig.routing_key == "consume_tasks" and sig.attempt_count == 0  # sent with 9
    assert sig.ingestion_time is not None and sig.first_received is not None
    assert sig.received_at is not None and sig.sqs_message_id and sig.sqs_receipt_handle


def test_state_formats_unchanged() -> None:
    pending = _load("sublime_brokers.json")["redis"]["pending_state_shape"]
    state = TaskState.from_json(pending)
    assert state.to_json().decode() == pending and state.state == "PENDING"


# -- the setting -------------------------------------------------------------------------------

def test_dialect_setting_yaml_env_and_constructor() -> None:
    assert Config().wire_dialect == "upstream"
    assert Config.from_yaml(io.StringIO("wire_dialect: sublime\n")).wire_dialect == "sublime"
    assert Config.from_yaml(io.StringIO("wire_dialect:\n")).wire_dialect == "upstream"
    assert Config.from_env({"WIRE_DIALECT": "sublime"}).wire_dialect == "sublime"
    assert Config.from_env({}).wire_dialect == "upstream"
    with pytest.raises(ConfigError, match=r"wire_dialect.*'fork'"):
        Config.from_yaml(io.StringIO("wire_dialect: fork\n"))
    with pytest.raises(ConfigError, match=r"WIRE_DIALECT.*'Sublime'"):
        Config.from_env({"WIRE_DIALECT": "Sublime"})
    assert Machinery("memory://").config.wire_dialect == "upstream"
    assert Machinery("memory://", wire_dialect="sublime").config.wire_dialect == "sublime"
    cnf = Config.from_url("memory://", wire_dialect="sublime")
    assert Machinery(config=cnf).config.wire_dialect == "sublime"
    with pytest.raises(ConfigError, match="wire_dialect"):
        Machinery("memory://", wire_dialect="v1")
    with pytest.raises(ValueError, match="upstream"):
        check_dialect("")
    # written back only when not the default (Go ignores it)
    assert "wire_dialect" not in Config().to_yaml_dict(full=True)
    sublime_yaml = Config(wire_dialect="sublime").to_yaml()
    assert Config.from_yaml(io.StringIO(sublime_yaml)).wire_dialect == "sublime"
    assert Config(wire_dialect="sublime").to_env() == {"WIRE_DIALECT": "sublime"}


def test_sublime_app_on_redis_writes_the_fork_bytes(redis_url: str, redis_client: redis.Redis) -> None:
    brokers = _load("sublime_brokers.json")["redis"]
    app = Machinery(redis_url, wire_dialect="sublime")
    try:
        app.send_task("add", [1, 1], task_id=UUID)
        assert redis_client.lrange("machinery_tasks", 0, -1) == [brokers["rpush_member"].encode()]
        redis_client.delete("machinery_tasks")
        before = time.time_ns()
        app.send_task("add", [1, 1], task_id=UUID, countdown=5)
        after = time.time_ns()
        members: Any = redis_client.zrange("delayed_tasks", 0, -1, withscores=True)
        assert [m for m, _ in members] == [brokers["zadd_member"].encode()]
        # Redis keeps scores as doubles (the fork's are read back the same way)
        assert before + 5 * SECOND - 2**10 <= members[0][1] <= after + 5 * SECOND + 2**10
        assert redis_client.llen("machinery_tasks") == 0
        state = TaskState.from_json(redis_client.get(UUID) or b"")
        assert state.state == "PENDING" and state.task_name == "add"
    finally:
        app.close()


def test_upstream_app_on_redis_unchanged(redis_url: str, redis_client: redis.Redis) -> None:
    golden = {c["name"]: c for c in _load("golden.json")}["redis_add_1_1"]["json"]
    app = Machinery(redis_url)
    try:
        app.send_task("add", [1, 1], task_id=UUID)
        assert redis_client.lrange("machinery_tasks", 0, -1) == [golden.encode()]
    finally:
        app.close()
