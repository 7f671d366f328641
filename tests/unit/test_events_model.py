"""The event model, the settings and the stats aggregation (pure: no I/O)."""

from __future__ import annotations

import json

import pytest

from machinery_compat.events import EventsConfig
from machinery_compat.events.model import (
    FAILED,
    MAX_TEXT,
    SENT,
    STARTED,
    SUCCEEDED,
    TYPES,
    WORKER_HEARTBEAT,
    WORKER_OFFLINE,
    WORKER_ONLINE,
    Event,
    clip,
    decode_batch,
    encode_batch,
)
from machinery_compat.events.stats import aggregate, percentile
from machinery_compat.exceptions import ConfigError, DecodeError


def test_event_json_round_trip_keeps_only_what_it_has() -> None:
    e = Event(SUCCEEDED, 1700000000.5, "task_1", "add", "q", "1@h", runtime=0.25)
    text = e.to_json()
    assert json.loads(text) == {"type": "task-succeeded", "timestamp": 1700000000.5,
                                "uuid": "task_1", "name": "add", "queue": "q",
                                "hostname": "1@h", "runtime": 0.25}
    assert Event.from_json(text, id="1-0") == e
    assert Event.from_json(text, id="1-0").id == "1-0"


def test_worker_event_extra_keys_survive() -> None:
    e = Event(WORKER_ONLINE, 1.0, hostname="w", extra={"pid": 7, "queues": ["a"]})
    back = Event.from_json(e.to_json())
    assert back.extra == {"pid": 7, "queues": ["a"]}
    assert back.hostname == "w"


@pytest.mark.parametrize("raw", [
    b"not json", b"[]", b'{"timestamp": 1}', b'{"type": "x"}', b'{"type": "x", "timestamp": true}',
    b'{"type": "x", "timestamp": 1, "runtime": "fast"}', b'{"type": "x", "timestamp": 1, "retries": 1.5}',
    b'{"type": "x", "timestamp": 1, "uuid": 5}',
])
def test_bad_events_are_refused_with_a_decode_error(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        Event.from_json(raw)


def test_clip_and_types() -> None:
    assert clip("x" * 10) == "x" * 10
    long = clip("y" * (MAX_TEXT + 50))
    assert len(long) == MAX_TEXT and long.endswith("…")
    assert len(set(TYPES)) == len(TYPES) == 10


def test_settings_from_env() -> None:
    # workers on, producers off
    assert EventsConfig.from_env({}) == EventsConfig(True, False, 10_000) == EventsConfig()
    assert EventsConfig.from_env({"MACHINERY_COMPAT_WORKER_EVENTS": "on"}).worker_events
    cfg = EventsConfig.from_env({"MACHINERY_COMPAT_WORKER_EVENTS": "off",
                                 "MACHINERY_COMPAT_SEND_EVENTS": "YES",
                                 "MACHINERY_COMPAT_EVENTS_MAX_LEN": "50"})
    assert cfg == EventsConfig(worker_events=False, send_events=True, max_len=50)
    with pytest.raises(ConfigError, match="MACHINERY_COMPAT_SEND_EVENTS"):
        EventsConfig.from_env({"MACHINERY_COMPAT_SEND_EVENTS": "maybe"})
    with pytest.raises(ConfigError, match="MAX_LEN"):
        EventsConfig.from_env({"MACHINERY_COMPAT_EVENTS_MAX_LEN": "lots"})
    with pytest.raises(ConfigError, match=">= 1"):
        EventsConfig(max_len=0)


def test_percentile_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 90) == 90.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None


def test_aggregate_counts_per_queue_and_name_with_percentiles() -> None:
    now = 1000.0
    evs = [Event(SENT, 1.0, "a", "add", "q1"), Event(STARTED, 2.0, "a", "add", "q1")]
    evs += [Event(SUCCEEDED, 3.0 + i, f"s{i}", "add", "q1", runtime=float(i)) for i in range(1, 11)]
    evs += [Event(FAILED, 20.0, "f", "boom", "q2", runtime=0.5, exception="x"),
            Event(FAILED, 21.0, "g", "boom", "q2", exception="not run")]
    out = aggregate(evs, now=now)
    assert out["events"] == {"count": 14, "first": 1.0, "last": 21.0}
    assert out["queues"]["q1"]["enqueued"] == 1
    assert out["queues"]["q1"]["succeeded"] == 10
    assert out["queues"]["q2"]["failed"] == 2
    rt = out["tasks"]["add"]["runtime"]
    assert (rt["count"], rt["p50"], rt["p90"], rt["p99"], rt["max"]) == (10, 5.0, 9.0, 10.0, 10.0)
    assert out["tasks"]["boom"]["runtime"]["count"] == 1  # the run that did not run has none


def test_aggregate_lists_workers_whose_last_event_is_recent_and_not_offline() -> None:
    now = 1000.0
    evs = [Event(WORKER_ONLINE, 990.0, hostname="a", extra={"pid": 1}),
           Event(WORKER_HEARTBEAT, 995.0, hostname="a", extra={"pid": 1, "processed": 5}),
           Event(WORKER_ONLINE, 990.0, hostname="b", extra={"pid": 2}),
           Event(WORKER_OFFLINE, 999.0, hostname="b", extra={"pid": 2}),
           Event(WORKER_ONLINE, 900.0, hostname="c", extra={"pid": 3})]  # silent too long
    workers = aggregate(evs, now=now)["workers"]
    assert [(w["hostname"], w["last_event"], w["processed"]) for w in workers] == [
        ("a", WORKER_HEARTBEAT, 5)]


@pytest.mark.parametrize("event", [
    Event(FAILED, 1.5, "t\u00e9", 'q"uote', "q\\n", "h\x01", runtime=1e-07, retries=3,
          exception="line\nbreak ✓", reason="r", eta="2026-01-01T00:00:00Z"),
    Event(WORKER_HEARTBEAT, 2.0, hostname="w", extra={"pid": 1, "queues": ["a", "b"],
                                                       "type": "ignored", "x": None}),
    Event(SENT, 3.0),
])
def test_to_json_is_the_json_of_to_dict(event: Event) -> None:
    assert json.loads(event.to_json()) == event.to_dict()
    assert Event.from_json(event.to_json()).to_dict() == event.to_dict()


_COMPACT_ITEMS = [
    ("task-started", 1.25, "task_1", "add", "q", "1@h", None),
    ("task-succeeded", 1796351557.6126065, 't"\\\n\u00e9', "n\x00", "", "h\u2713", 1e-06),
    ("task-succeeded", 2.0, "", "", "", "", 0.0),
]


def test_a_batch_is_one_json_array_of_objects_and_compact_task_events() -> None:
    """A task thread's tuple is written as its compact array and read back as the event
    it stands for, in order with the event objects around it."""
    full = [Event(FAILED, 1.5, "t", "add", "q", "h", runtime=0.25, exception="boom"),
            Event(WORKER_HEARTBEAT, 2.0, hostname="w", extra={"pid": 1, "queues": ["a"]})]
    items = [_COMPACT_ITEMS[0], full[0], *_COMPACT_ITEMS[1:], full[1]]
    raw = encode_batch(items)
    data = json.loads(raw)
    assert [type(x).__name__ for x in data] == ["list", "dict", "list", "list", "dict"]
    assert data[0] == ["task-started", 1.25, "task_1", "add", "q", "1@h", None]
    events, bad = decode_batch(raw, id="7-0")
    assert bad == []
    expected = [Event(k, ts, u, n, q, h, runtime=r) for k, ts, u, n, q, h, r in _COMPACT_ITEMS]
    assert events == [expected[0], full[0], expected[1], expected[2], full[1]]
    assert {e.id for e in events} == {"7-0"}


def test_a_batch_orjson_refuses_is_written_escaped_and_read_back() -> None:
    """A lone surrogate (orjson refuses it) or a value of an unknown type in ``extra``: the
    batch is still written (by json: escaped, or as its str) and read back."""
    items = [("task-started", 1.0, "u\ud800", "add", "q", "h", None),
             Event(WORKER_ONLINE, 2.0, hostname="w", extra={"odd": {1, 2}.__class__})]
    events, bad = decode_batch(encode_batch(items))
    assert bad == []
    assert events[0].uuid == "u\ud800"
    assert events[1].extra == {"odd": str(set)}


@pytest.mark.parametrize(("raw", "why"), [
    (b"[1]", "a JSON object, not int"),
    (b'[["task-started"]]', "2 to 7 values, not 1"),
    (b'[["task-started", 1, "u", "n", "q", "h", null, "extra"]]', "not 8"),
    (b'[["task-started", "soon"]]', "numeric 'timestamp'"),
    (b'[["task-started", 1, 5]]', "'uuid' must be a string"),
    (b"not json", "not JSON"),
])
def test_what_is_no_event_in_a_batch_is_described_and_the_rest_kept(raw: bytes, why: str) -> None:
    events, bad = decode_batch(raw[:-1] + b',{"type":"task-sent","timestamp":1}]'
                               if raw.startswith(b"[") else raw)
    assert len(bad) == 1 and why in bad[0]
    assert [e.type for e in events] == (["task-sent"] if raw.startswith(b"[") else [])
