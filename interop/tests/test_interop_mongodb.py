"""Go Machinery and Python share a MongoDB result backend (issue #12), on the session's FerretDB
(v1.24.2, SQLite backend) behind the recording relay of interop/tests/mongodb_tap.py, database
``machinery`` on both sides (Go's default with ``cnf.MongoDB`` nil).

* Go workers (v1 through its URL factory, v2 through ``backends/mongo.New``) write the
  documents Python reads: one upserting ``$set`` per state, exactly the fields of §6.3, v2 with
  ``delete_at`` on SUCCESS/FAILURE and v1 without; int64 results as BSON Int64.
* A Python worker's documents are what Go's ``AsyncResult`` reads: every signed integer Type
  as Int64 (``int`` included, which Go's own writer stores as int32 and then cannot read back),
  floats, strings, bools, ``[]byte`` as base64 text, slices; unsigned Types are refused by Go's
  reader whatever is stored (``0 is not uint64``), as for Go's own writes.
* The chord trigger: Python initialises a group, Go's ``TriggerChord`` is not consulted; a
  Python worker triggers once and never after the meta says triggered.

* A Go worker cannot store an unsigned integer above int64's range: the task stays STARTED,
  and the error restarts Machinery's consume loop, whose abandoned BLPOP goroutine (Redis
  broker) swallows the next concurrency + 1 messages.

The generic matrix modules run on the ``*+mongodb`` columns with MongoDB expectations
(interop/tests/mongodb_tap.py): Go's reader errors (``-128 is not int8``, ``0 is not uint64``;
a panic in its reflection on the BSON binary Go writes for ``[]uint8``, which mcproducer
reports), values above int64's range not sent to a Go worker, -0 floats left out (FerretDB
drops the sign), and Go's duplicate chord callbacks counted per trigger.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from interop.tests.harness import GoWorker, run_producer, wait_for
from interop.tests.mongodb_tap import MongoRecorder, MongoTap
from machinery_compat import Arg, Machinery
from machinery_compat.backends.mongodb import MongoDBBackend
from machinery_compat.protocol import FAILURE, SUCCESS, TaskResult, TaskState

pytestmark = [pytest.mark.interop, pytest.mark.redis, pytest.mark.mongodb]

FLAVOURS = ("v1", "v2-goredis")
_serial = iter(range(1, 1 << 30))


@pytest.fixture
def backend(interop_mongodb: MongoRecorder) -> Iterator[MongoDBBackend]:
    b = MongoDBBackend(interop_mongodb.url)
    yield b
    b.close()


def _raw_doc(backend: MongoDBBackend, uuid: str) -> dict[str, Any]:
    doc = backend.get_document(uuid)
    assert doc is not None, uuid
    return doc


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_go_worker_documents_are_gos_and_python_reads_them(
        flavour: str, go_bins: Path, new_db: Callable[[], str], interop_mongodb: MongoRecorder,
        backend: MongoDBBackend, tmp_path: Path) -> None:
    from bson.datetime_ms import DatetimeMS
    from bson.int64 import Int64

    broker = new_db()
    queue = f"q_mongo_go_{flavour}_{next(_serial)}"
    tap = MongoTap(interop_mongodb).start()
    worker = GoWorker(flavour, broker, queue, log_dir=tmp_path,
                      extra=["-backend", interop_mongodb.url, "-counters", broker]).start()
    app = Machinery(broker=broker, result_backend=interop_mongodb.url, default_queue=queue)
    try:
        add = app.send_task("add", args=[Arg("int64", 40), Arg("int64", 2)])
        fail = app.send_task("fail", args=["boom"])
        assert add.get(timeout=20) == 42
        assert fail.get(timeout=20, propagate=False).args[0] == "boom"
    finally:
        worker.stop()
        app.close()
    tap.stop()
    v2 = flavour != "v1"
    # one upserting $set per state, Go's fields: PENDING (Python), RECEIVED, STARTED, final
    sets = tap.set_fields(add.id)
    assert [s["state"] for s in sets] == ["PENDING", "RECEIVED", "STARTED", "SUCCESS"]
    assert [sorted(s) for s in sets[1:3]] == [["state"], ["state"]]
    assert sorted(sets[3]) == sorted(["state", "results", *(["delete_at"] if v2 else [])])
    assert sets[3]["results"] == [{"type": "int64", "value": 42}]
    assert type(sets[3]["results"][0]["value"]) is Int64
    fsets = tap.set_fields(fail.id)
    assert sorted(fsets[-1]) == sorted(["state", "error", *(["delete_at"] if v2 else [])])
    assert fsets[-1]["error"] == "boom"
    doc = _raw_doc(backend, add.id)
    assert isinstance(doc["created_at"], DatetimeMS)
    assert ("delete_at" in doc) is v2
    if v2:  # ResultsExpireIn 3600 (mcworker's config)
        assert 3_590_000 <= int(doc["delete_at"]) - int(doc["created_at"]) <= 3_620_000
    st = backend.get_state(add.id)
    assert st is not None and (st.state, st.task_name, st.python_results()) == (
        SUCCESS, "add", [42])
    # what Python read is the document after Go's last write, as the tap renders it
    assert tap.state_writes(add.id)[-1] == st.to_json()
    fst = backend.get_state(fail.id)
    assert fst is not None and (fst.state, fst.error) == (FAILURE, "boom")


#: (Type, value Python stores, what Go's AsyncResult gives: the value, or its error text)
TYPED = [
    ("int64", -9223372036854775808, -9223372036854775808),
    ("int", 2, 2),  # Go's own writer stores int32 here, which its reader refuses
    ("int8", -128, -128),
    ("int32", 2147483647, 2147483647),
    ("float64", 0.1, 0.1),
    ("float32", 0.5, 0.5),
    ("bool", True, True),
    ("string", 'q"<&>\u2028', 'q"<&>\u2028'),
    ("[]byte", b"hi", "aGk="),  # mcproducer prints []uint8 as Go's JSON does: base64
    ("[]int64", [1, -2], [1, -2]),
    ("[]string", ["a", ""], ["a", ""]),
    ("[]float64", [1.5], [1.5]),
    ("uint64", 7, "7 is not uint64"),
    ("uint8", 7, "7 is not uint8"),
]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_python_results_are_what_go_reads(flavour: str, go_bins: Path, new_db: Callable[[], str],
                                          interop_mongodb: MongoRecorder,
                                          backend: MongoDBBackend) -> None:
    uuids = {}
    for i, (type_name, value, _) in enumerate(TYPED):
        u = f"task_mongo_py_{flavour}_{next(_serial)}_{i}"
        uuids[u] = i
        backend.set_state(TaskState(u, SUCCESS, results=[TaskResult(type_name, value)]),
                          merge=True)
    # the control: the int32 Go's own writer (and a plain pymongo int) stores for an int
    control = f"task_mongo_int32_{flavour}_{next(_serial)}"
    backend.tasks.update_one({"_id": control}, {"$set": {
        "state": "SUCCESS", "results": [{"type": "int64", "value": 2}]}}, upsert=True)
    out = run_producer(flavour, new_db(), [{"read": u, "id": u, "timeout_ms": 5000}
                                           for u in [*uuids, control]],
                       parallel=4, extra=["-backend", interop_mongodb.url])
    got = {o["uuid"]: o for o in out}
    bad = []
    for u, i in uuids.items():
        type_name, _, want = TYPED[i]
        o = got[u]
        if isinstance(want, str) and want.endswith(f"is not {type_name}"):
            ok = o["error"] == want
        else:
            ok = (o["state"], o["error"]) == (SUCCESS, "") and [
                r["value"] for r in o["results"]] == [want]
        if not ok:
            bad.append((type_name, o))
    assert not bad, bad
    assert got[control]["error"] == "2 is not int64", got[control]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_chord_members_on_go_callback_triggered_once(
        flavour: str, go_bins: Path, new_db: Callable[[], str], interop_mongodb: MongoRecorder,
        backend: MongoDBBackend, tmp_path: Path) -> None:
    """A chord whose members a Go worker runs and whose callback a Python worker runs: Go's
    TriggerChord sets ``chord_triggered`` (the last member's worker sends the callback), the
    callback gets the members' int64 results in group order, once.

    The Go worker runs one task at a time: Go's MongoDB TriggerChord returns true to every
    caller (UpdateOne never reports "no documents"), so when two members finish together on a
    concurrent Go worker both send the callback (Go's bug, machinery-protocol.md §6.3; seen
    once in CI).  Sequential members make "once" Go's own guarantee, not a timing."""
    from machinery_compat.canvas import chord

    broker = new_db()
    queue = f"q_mongo_chord_{flavour}_{next(_serial)}"
    tap = MongoTap(interop_mongodb).start()
    worker = GoWorker(flavour, broker, queue, log_dir=tmp_path, concurrency=1,
                      extra=["-backend", interop_mongodb.url, "-counters", broker]).start()
    py_queue = queue + "_py"
    app = Machinery(broker=broker, result_backend=interop_mongodb.url, default_queue=queue)
    seen: list[list[int]] = []

    @app.task(name="collect")
    def collect(*values: int) -> int:
        seen.append(list(values))
        return sum(values)

    pyw = app.worker(queues=[py_queue], concurrency=2, poll_timeout=0.1).start()
    try:
        members = [app.signature("add", [Arg("int64", i), Arg("int64", 1)]) for i in range(5)]
        cb = app.signature("collect", queue=py_queue)
        res = chord(members, cb).apply_async()
        assert res.callback.get(timeout=30) == sum(i + 1 for i in range(5))
        group_uuid = res.group.id
        wait_for(lambda: seen, 10, "the callback")
    finally:
        pyw.stop(timeout=10)
        worker.stop()
        app.close()
    tap.stop()
    assert seen == [[1, 2, 3, 4, 5]]
    metas = [c for c in tap.snapshot() if c.collection == "group_metas"]
    triggers = [c for c in metas if c.name == "update"]
    assert triggers, "no TriggerChord update seen"
    for c in triggers:
        (u,) = c.body["updates"]
        assert u["q"]["chord_triggered"] is False and u["u"] == {
            "$set": {"chord_triggered": True}}
    meta = backend.get_group_meta(group_uuid)
    assert meta is not None and meta.chord_triggered and len(meta.task_uuids) == 5


U64_MAX = (1 << 64) - 1


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_go_worker_cannot_store_uint64_above_int64(
        flavour: str, go_bins: Path, new_db: Callable[[], str], interop_mongodb: MongoRecorder,
        tmp_path: Path) -> None:
    """Go's behaviour with a result above int64's range (why the matrix leaves those values
    out on MongoDB, mongodb_tap.GO_CANNOT_STORE): the task runs, SetStateSuccess fails in
    Go's BSON encoder, the state stays STARTED (no FAILURE is written), and the error ends
    Machinery's consume loop, which its worker restarts.  On the Redis broker the old loop's
    BLPOP goroutine is never stopped: it keeps popping messages into a channel nobody reads
    until its buffer (the concurrency) is full and one more is held, so that many of the next
    messages are taken off the queue and never run."""
    import redis

    broker = new_db()
    queue = f"q_mongo_u64_{flavour}_{next(_serial)}"
    concurrency = 2
    tap = MongoTap(interop_mongodb).start()
    worker = GoWorker(flavour, broker, queue, concurrency=concurrency, log_dir=tmp_path,
                      extra=["-backend", interop_mongodb.url, "-counters", broker]).start()
    app = Machinery(broker=broker, result_backend=interop_mongodb.url, default_queue=queue)
    client = redis.Redis.from_url(broker)
    n_after = 12
    try:
        big = app.send_task("echo_uint64", args=[Arg("uint64", U64_MAX)])
        wait_for(lambda: any(big.id in e.get("error", "") for e in worker.snapshot()
                             if e.get("event") == "error_handler"), 20, "Go's error handler")
        time.sleep(0.5)
        after = [app.send_task("add", args=[Arg("int64", i), Arg("int64", 1)])
                 for i in range(n_after)]
        wait_for(lambda: client.llen(queue) == 0, 20, "the queue to be emptied")
        time.sleep(3)  # whatever was popped and can run has run by now
        ran = {r.id for r in after if worker.tasks(r.id)}
        states = {r.id: r.state for r in after}
        big_state = big.state
    finally:
        worker.stop()
        app.close()
        client.close()
    tap.stop()
    (ev,) = worker.tasks(big.id)
    assert ev["arg_types"] == ["uint64"] and ev["result_types"] == ["uint64"], ev
    errors = [e["error"] for e in worker.snapshot() if e.get("event") == "error_handler"]
    assert errors == [f"Set state to 'success' for task {big.id} returned error: cannot "
                      f"marshal type primitive.M to a BSON Document: {U64_MAX} overflows "
                      f"int64"], errors
    assert tap.states(big.id) == ["PENDING", "RECEIVED", "STARTED"]
    assert big_state == "STARTED"
    # the consume loop was started again
    assert worker.stderr().count("[*] Waiting for messages") == 2, worker.stderr()[-2000:]
    # the next messages: all taken off the queue, concurrency + 1 of them never run
    lost = [r.id for r in after if r.id not in ran]
    assert len(lost) == concurrency + 1, (len(ran), len(lost))
    assert all(states[u] == "PENDING" and not tap.states(u)[1:] for u in lost), states
    assert all(states[u] == "SUCCESS" for u in ran), states
