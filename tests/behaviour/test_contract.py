"""The broker and backend interfaces themselves, on every implementation: the memory ones must
behave exactly as the Redis ones (which are Machinery's layout)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from machinery_compat import GoTime, Machinery, Signature, TaskState
from machinery_compat.brokers import Delivery
from machinery_compat.protocol import FAILURE, PENDING, STARTED, SUCCESS, TaskResult

from .conftest import Probe


def _sig(uuid: str, queue: str = "machinery_tasks", **kw: object) -> Signature:
    return Signature(uuid=uuid, name="t", routing_key=queue, headers={}, **kw)  # type: ignore[arg-type]


def test_fetch_is_fifo_and_takes_from_the_first_non_empty_queue(app: Machinery) -> None:
    broker = app.broker
    for i in range(3):
        broker.publish(_sig(f"task_a{i}", "qa"))
    broker.publish(_sig("task_b0", "qb"))
    got = broker.fetch(["qb", "qa"], 5, 0.1)
    assert [(Signature.from_json(d.body).uuid, d.queue) for d in got] == [("task_b0", "qb")]
    got = broker.fetch(["qb", "qa"], 2, 0.1)
    assert [(Signature.from_json(d.body).uuid, d.queue) for d in got] == [("task_a0", "qa"), ("task_a1", "qa")]
    assert [Signature.from_json(d.body).uuid for d in broker.fetch(["qa"], 1, 0.1)] == ["task_a2"]
    start = time.monotonic()
    assert broker.fetch(["qa", "qb"], 1, 0.2) == []
    assert time.monotonic() - start >= 0.15


def test_fetch_wakes_up_when_a_message_arrives(app: Machinery, make_app: Callable[..., Machinery]) -> None:
    producer = make_app()
    timer = threading.Timer(0.2, lambda: producer.broker.publish(_sig("task_late", "qw")))
    timer.start()
    start = time.monotonic()
    try:
        got = app.broker.fetch(["qx", "qw"], 1, 5.0)
    finally:
        timer.cancel()
    assert [(Signature.from_json(d.body).uuid, d.queue) for d in got] == [("task_late", "qw")]
    assert time.monotonic() - start < 2


def test_requeue_front_and_back_keep_the_bytes_and_order(app: Machinery, probe: Probe) -> None:
    probe.push("q", b"m3")
    app.broker.requeue([Delivery(b"m1", "q"), Delivery(b"m2", "q")], front=True)
    app.broker.requeue([Delivery(b"m4", "q"), Delivery(b"o1", "other")])
    assert probe.messages("q") == [b"m1", b"m2", b"m3", b"m4"]
    assert probe.messages("other") == [b"o1"]


def test_dead_letters_are_a_plain_queue(app: Machinery, probe: Probe) -> None:
    assert app.broker.dead_letter(Delivery(b"\xffbad", "q"), "undecodable") == "q.dead"
    assert probe.dead("q") == [b"\xffbad"]
    assert [d.body for d in app.broker.fetch(["q.dead"], 10, 0.1)] == [b"\xffbad"]


def test_move_due_delayed_routes_by_routing_key(app: Machinery, probe: Probe) -> None:
    broker = app.broker
    past = time.time_ns() - 1_000_000
    later = GoTime.now().add_seconds(60)
    broker.publish(_sig("task_later", "qd", eta=later))
    probe.push_delayed(_sig("task_due", "qd").to_json(), past)
    probe.push_delayed(_sig("task_no_key", "").to_json(), past)
    probe.push_delayed(b'{"routingkey":"qlower","UUID":"task_lower"}', past)
    probe.push_delayed(b"not json", past)
    assert broker.move_due_delayed(1000) == 4
    assert [Signature.from_json(b).uuid for b in probe.messages("qd")] == ["task_due"]
    assert [Signature.from_json(b).uuid for b in probe.messages("machinery_tasks")] == ["task_no_key"]
    assert probe.messages("qlower") == [b'{"routingkey":"qlower","UUID":"task_lower"}']
    assert probe.dead("machinery_tasks") == [b"not json"]
    assert [s.uuid for s in broker.delayed_tasks()] == ["task_later"]
    assert broker.move_due_delayed(1000) == 0


@pytest.mark.mixed
def test_merge_keeps_task_name_and_created_at(app: Machinery, probe: Probe) -> None:
    backend = app.backend
    sig = _sig("task_m")
    sig.name = "named"
    backend.set_state_pending(sig)
    pending = backend.get_state("task_m")
    assert pending is not None and pending.state == PENDING and pending.task_name == "named"
    token = backend.mark_received_started(sig)
    started = backend.get_state("task_m")
    assert started is not None and (started.state, started.task_name, started.created_at) == (
        STARTED, "named", pending.created_at)
    backend.set_final_state(TaskState("task_m", SUCCESS, results=[TaskResult("int64", 3)]), token)
    raw = probe.state_bytes("task_m")
    assert raw == (b'{"TaskUUID":"task_m","TaskName":"named","State":"SUCCESS","Results":[{"Type":"int64",'
                   b'"Value":3}],"Error":"","CreatedAt":"' + pending.created_at.isoformat().encode()
                   + b'","TTL":0}')
    # a state written over nothing, or over bytes that do not decode, keeps nothing
    backend.set_state(TaskState("task_new", FAILURE, task_name="ignored", error="e"), merge=True)
    new = backend.get_state("task_new")
    assert new is not None and (new.task_name, new.created_at) == ("", GoTime.zero())
    # PENDING is written as it is (a resend starts over)
    sig.name = "renamed"
    backend.set_state_pending(sig)
    again = backend.get_state("task_m")
    assert again is not None and (again.state, again.task_name) == (PENDING, "renamed")


def test_group_meta_chord_trigger_once_and_purge(app: Machinery) -> None:
    backend = app.backend
    backend.init_group("group_c", ["task_1", "task_2"])
    meta = backend.get_group_meta("group_c")
    assert meta is not None and meta.task_uuids == ["task_1", "task_2"] and not meta.chord_triggered
    assert not backend.group_completed("group_c", 2)
    for u in ("task_1", "task_2"):
        backend.set_state(TaskState(u, SUCCESS, results=[]), merge=True)
    assert backend.group_completed("group_c", 2)
    wins: list[bool] = []
    barrier = threading.Barrier(6)

    def race() -> None:
        barrier.wait()
        wins.append(backend.trigger_chord("group_c"))

    threads = [threading.Thread(target=race) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(wins) == [False] * 5 + [True]
    triggered = backend.get_group_meta("group_c")
    assert triggered is not None and triggered.chord_triggered
    backend.purge_group_meta("group_c")
    backend.purge_state("task_1")
    assert backend.get_group_meta("group_c") is None and backend.get_state("task_1") is None
    assert backend.get_states(["task_1", "task_2"])[1] is not None


@pytest.mark.kinds("memory")
def test_memory_stores_are_named_and_shared(app_kind: str) -> None:
    a1 = Machinery(broker="memory://contract-a")
    a2 = Machinery(broker="memory://contract-a")
    b = Machinery(broker="memory://contract-b")
    try:
        res = a1.send_task("t", args=[1])
        assert [s.uuid for s in a2.broker.pending_tasks()] == [res.id]
        assert a2.AsyncResult(res.id).state == "PENDING"
        assert b.broker.pending_tasks() == [] and b.backend.get_state(res.id) is None
    finally:
        from machinery_compat.backends import memory as memory_backend
        from machinery_compat.brokers import memory as memory_broker

        for name in ("contract-a", "contract-b"):
            memory_broker.reset(name)
            memory_backend.reset(name)
