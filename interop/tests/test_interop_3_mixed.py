"""Direction 3: one Go worker and one Python worker on the same queue, both producers.

* 1,000 ``add`` tasks, 500 sent by Go's producer (``-parallel``, ``wait: false``) while 500
  are sent from Python: every task runs exactly once (Go's ``task`` lines + the Python
  worker's own record), both workers take a share, every stored result has Go's exact
  bytes, and every result is readable by Python's and by Go's ``AsyncResult``.  On the AMQP
  backend 250 + 250 (every state write and every read is a new connection there), on SQS
  200 + 200 (moto serves every call of both sides, one at a time).  On DynamoDB Go's
  ``AsyncResult`` reads no ``int64`` result (Go's ``%v`` text): it reports ``<n> is not
  int64`` for each, which is checked instead.
* 200 delayed tasks (100 per producer, ETAs spread over one second): on Redis both workers
  move ``delayed_tasks`` every 50 ms (Go: WATCH/ZRANGEBYSCORE/MULTI/ZREM; Python: one Lua
  script); on AMQP both producers publish to Go's per-delay dead-letter queues and RabbitMQ
  delivers each when due; on SQS both send ``DelaySeconds`` (whole seconds, truncated, so
  up to 1 s early there).  Each runs exactly once, never before its ETA, on both workers.
* AMQP only: ``amqp.delayed_queue`` (one delay queue, per-message expiration) from both
  producers.
* A retried task handed over: attempt 1 on one side, attempts 2 (fails, retries) and 3 on
  the other, both ways.

On the AMQP backend a result can be read once (§6.4): each task is read by the side that
did not run it (Python's ``AsyncResult`` for the Go worker's tasks, Go's for the Python
worker's), and the stored bytes come from RabbitMQ's firehose.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from interop.tests.harness import (
    AMQP_EXCHANGE,
    BROKER_CASE_KINDS,
    MIXED,
    TASK_STATES_TABLE,
    GoWorker,
    Num,
    Observer,
    Stack,
    delay_queue,
    parse_go_time,
    results_bytes,
    task_properties,
    wait_for,
)
from interop.tests.pyapp import PyApp, stack_app
from machinery_compat import Arg, AsyncResult
from machinery_compat.worker import Worker

pytestmark = [pytest.mark.interop, pytest.mark.redis, pytest.mark.slow]

N_EACH = 500
N_EACH_AMQP_BACKEND = 250  # the AMQP backend: a connection per state write and per read
N_EACH_SQS = 200  # SQS: every call of both sides goes to one moto server
N_EACH_MONGODB = 100  # MongoDB: the test server (FerretDB on SQLite) takes ~0.2 s per task
SQS_EARLY = 1.05  # SQS: DelaySeconds is whole seconds, truncated: up to 1 s early
GO_BASE, PY_BASE = 1_000_000, 2_000_000
AMQP_EARLY = 0.005  # AMQP delays are whole ms, truncated: a task may start ≤ 1 ms early


class Pool:
    def __init__(self, stack: Stack, log_dir: Path) -> None:
        self.stack = stack
        self.flavour, self.queue = stack.flavour, stack.queue
        self.go = stack.go_worker(concurrency=4, delayed_poll_ms=50, log_dir=log_dir)
        self.py: PyApp = stack_app(stack, only={"add"})
        self.worker: Worker | None = None

    def start(self) -> Pool:
        self.go.start()
        self.worker = self.py.app.worker(concurrency=4, poll_timeout=self.stack.poll_timeout,
                                         delayed_poll_interval=0.05).start()
        return self

    def stop(self) -> None:
        try:
            if self.worker is not None:
                self.worker.stop(timeout=10)
        finally:
            self.py.close()
            self.go.stop()

    def run_counts(self) -> tuple[Counter[str], Counter[str]]:
        go = Counter(e["uuid"] for e in self.go.tasks())
        return go, self.py.executions.counts()


@pytest.fixture
def pool(flavour: str, go_bins: Path, new_stack: Callable[[str], Stack],
         tmp_path: Path) -> Iterator[Pool]:
    p = Pool(new_stack("mix"), tmp_path)
    p.start()
    try:
        yield p
    finally:
        p.stop()


def _go_lines(n: int, base: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"id": i, "name": "add", "wait": False, **extra,
             "args": [{"type": "int64", "value": i}, {"type": "int64", "value": base}]}
            for i in range(n)]


def _send_from_go_in_background(pool: Pool, lines: list[dict[str, Any]]) -> Callable[[], list]:
    out: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            out.extend(pool.stack.produce(lines, parallel=8, timeout=90))
        except subprocess.TimeoutExpired as e:
            done = len((e.stdout or b"").splitlines())
            errors.append(AssertionError(
                f"mcproducer did not finish within {e.timeout}s ({done} of {len(lines)} "
                f"lines answered); stderr tail:\n"
                f"{(e.stderr or b'').decode(errors='replace')[-3000:]}"))
        except BaseException as e:  # reported by join()
            errors.append(e)

    t = threading.Thread(target=produce, name="go-producer")
    t.start()

    def join() -> list[dict[str, Any]]:
        t.join(120)
        assert not t.is_alive(), "mcproducer did not finish"
        if errors:
            raise errors[0]
        assert all(o["sent"] is True and o["error"] == "" for o in out), out[:3]
        return out

    return join


def _check_exactly_once(pool: Pool, expected: dict[str, int],
                        timeout: float = 10) -> tuple[Counter[str], Counter[str]]:
    def all_counted() -> bool:
        go, py = pool.run_counts()
        return sum(go.values()) + sum(py.values()) >= len(expected)

    wait_for(all_counted, timeout=timeout, what="every run to be reported")
    go, py = pool.run_counts()
    both = go + py
    assert set(both) == set(expected), (len(both), len(expected))
    dupes = {u: f"Go {go[u]}, Python {py[u]}" for u, n in both.items() if n != 1}
    assert not dupes, f"tasks run more than once: {dupes}"
    assert sum(go.values()) > 0 and sum(py.values()) > 0, \
        f"one worker did nothing: go={sum(go.values())} python={sum(py.values())}"
    return go, py


def _check_results(pool: Pool, expected: dict[str, int], obs: Observer) -> None:
    """Every result readable by Python's and by Go's ``AsyncResult`` (on the AMQP backend:
    by the side that did not run the task), and stored with Go's exact bytes."""
    st = pool.stack
    app = pool.py.app
    if st.consuming_reads:
        _check_exactly_once(pool, expected, timeout=60)
        go_ran, _ = pool.run_counts()
        by_python = [u for u in expected if u in go_ran]
        by_go = [u for u in expected if u not in go_ran]
    else:
        by_python = by_go = list(expected)
    deadline = time.monotonic() + 60  # one budget for all: a stuck pool fails fast
    for uuid in by_python:
        left = max(0.5, deadline - time.monotonic())
        assert AsyncResult(uuid, app.backend).get(timeout=left) == expected[uuid]
    reads = st.produce([{"read": u, "timeout_ms": 10000} for u in by_go], parallel=16,
                       timeout=180)
    if st.dynamodb_backend:  # Go reads only strings from DynamoDB: its reflection error
        bad = [r for r in reads if (r["state"], r["error"], "results" in r)
               != ("SUCCESS", f"{expected[r['uuid']]} is not int64", False)]
    else:
        bad = [r for r in reads if (r["state"], r["error"]) != ("SUCCESS", "")
               or [(x["go_type"], x["exact"]) for x in r["results"]]
               != [("int64", Num(str(expected[r["uuid"]])))]]
    assert not bad, bad[:5]
    # the same bytes whichever worker ran it
    uuids = list(expected)
    if st.dynamodb_backend:  # the same item attributes: Go's %v text
        items = _dynamodb_items(st, uuids)
        wrong = {u: items.get(u, {}).get("Results") for u in uuids
                 if items.get(u, {}).get("Results") != {"L": [{"M": {
                     "Type": {"S": "int64"}, "Value": {"S": str(expected[u])}}}]}}
        assert not wrong, list(wrong.items())[:5]
        _check_drained(pool)
        return
    if st.merged_states and st.mongodb is None:
        client = pool.py.counters  # the backend's DB
        stored = [raw for i in range(0, len(uuids), 200)
                  for raw in client.mget(uuids[i:i + 200])]
    elif st.memcache is not None:  # (asking each node: on one only)
        stored = [st.memcache.get(u) for u in uuids]
    elif st.mongodb is not None:
        stored = st.stored_states(uuids)
    else:
        obs.stop()
        stored = [(obs.state_writes(u) or [None])[-1] for u in uuids]
    for uuid, raw in zip(uuids, stored, strict=True):
        assert results_bytes(raw) == f'[{{"Type":"int64","Value":{expected[uuid]}}}]'.encode(), raw
    _check_drained(pool)


def _check_drained(pool: Pool) -> None:
    """Nothing left in the queue, nothing dead-lettered, nothing still delayed."""
    st = pool.stack
    assert st.queue_depth() == 0
    if st.sqs_broker:
        assert st.queue_depth(f"{pool.queue}-dead") in (None, 0)
    elif st.amqp_broker or st.pubsub_broker:
        assert st.queue_depth(f"{pool.queue}.dead") in (None, 0)
    else:
        assert pool.py.counters.exists(f"{pool.queue}.dead", "delayed_tasks") == 0


def _dynamodb_items(st: Stack, uuids: list[str]) -> dict[str, dict[str, Any]]:
    """The ``task_states`` items of these tasks (BatchGetItem, 100 keys a call)."""
    client = st.dynamodb_client()
    out: dict[str, dict[str, Any]] = {}
    for i in range(0, len(uuids), 100):
        keys = [{"TaskUUID": {"S": u}} for u in uuids[i:i + 100]]
        request = {TASK_STATES_TABLE: {"Keys": keys, "ConsistentRead": True}}
        while request:
            got = client.batch_get_item(RequestItems=request)
            for item in got["Responses"].get(TASK_STATES_TABLE, []):
                out[item["TaskUUID"]["S"]] = item
            request = got.get("UnprocessedKeys") or {}
    return out


@pytest.mark.matrix(MIXED, "1,000 add tasks (500 Go + 500 Python producers; 250 + 250 on the "
                           "AMQP backend, 200 + 200 on SQS), Go + Python workers")
def test_mixed_pool(pool: Pool, record_property: Callable[[str, object], None]) -> None:
    obs = pool.stack.observer() if pool.stack.consuming_reads else None
    n = (N_EACH_SQS if pool.stack.sqs_broker else N_EACH_AMQP_BACKEND
         if pool.stack.consuming_reads else N_EACH_MONGODB
         if pool.stack.mongodb is not None else N_EACH)
    try:
        join = _send_from_go_in_background(pool, _go_lines(n, GO_BASE))
        app = pool.py.app
        expected: dict[str, int] = {}
        for i in range(n):
            res = app.send_task("add", args=[Arg("int64", i), Arg("int64", PY_BASE)])
            expected[res.id] = i + PY_BASE
        for o in join():
            expected[o["uuid"]] = o["id"] + GO_BASE
        assert len(expected) == 2 * n
        _check_results(pool, expected, obs)  # type: ignore[arg-type]
        go, py = _check_exactly_once(pool, expected)
    finally:
        if obs is not None:
            obs.stop()
    record_property("note", f"Go worker ran {sum(go.values())}, Python worker {sum(py.values())}")


@pytest.mark.kinds(*BROKER_CASE_KINDS)
@pytest.mark.matrix(MIXED, "200 delayed tasks (ETAs from both producers), run when due by "
                           "both workers (Redis: both move delayed_tasks; AMQP: delay queues; "
                           "SQS: DelaySeconds)")
def test_mixed_delayed(pool: Pool, record_property: Callable[[str, object], None]) -> None:
    st = pool.stack
    obs = st.observer()
    try:
        n = 100
        lines = _go_lines(n, GO_BASE)
        for line in lines:
            line["countdown_ms"] = 1000 + 10 * line["id"]
        join = _send_from_go_in_background(pool, lines)
        app = pool.py.app
        expected: dict[str, int] = {}
        python_sent = set()
        for i in range(n):
            res = app.send_task("add", args=[Arg("int64", i), Arg("int64", PY_BASE)],
                                countdown=1.0 + 0.01 * i)
            expected[res.id] = i + PY_BASE
            python_sent.add(res.id)
        for o in join():
            expected[o["uuid"]] = o["id"] + GO_BASE
        _check_results(pool, expected, obs)
        go, py = _check_exactly_once(pool, expected)
    finally:
        obs.stop()
    # nothing ran before its ETA (SQS: whole seconds, truncated)
    early = SQS_EARLY if st.sqs_broker else AMQP_EARLY if st.amqp_broker else 0.0
    go_early = 0  # Pub/Sub: Python's tasks a Go worker ran before their ETA
    for ev in pool.go.tasks():
        assert ev["eta"] is not None
        if st.pubsub_broker and ev["uuid"] in python_sent:
            # §5.4: Python publishes at once with the ETA in the JSON (Go's producer blocks
            # until it); a Go worker never looks at ETAs and runs such a task on delivery
            go_early += parse_go_time(ev["ts"]) < parse_go_time(ev["eta"])
            continue
        assert parse_go_time(ev["ts"]) >= parse_go_time(ev["eta"]) - early, ev
    for run in pool.py.executions.snapshot():
        assert run.eta is not None and run.at >= run.eta - early, run
    if st.sqs_broker:
        # every task was sent once, with DelaySeconds = the whole seconds left (0 or 1 here)
        assert obs.aws is not None
        sends = {u: obs.aws.sends(u) for u in expected}
        bad = {u: ss for u, ss in sends.items()
               if len(ss) != 1 or (ss[0].delay or 0) not in (0, 1)}
        assert not bad, list(bad.items())[:5]
        delays = Counter((ss[0].client.split("-")[0], ss[0].delay or 0)
                         for ss in sends.values())
        note = (f"DelaySeconds sent (producer, seconds): {dict(sorted(delays.items()))}; "
                f"run by the Go worker {sum(go.values())}, by Python {sum(py.values())}")
    elif st.pubsub_broker:
        note = (f"run by the Go worker {sum(go.values())} ({go_early} of Python's before their "
                f"ETA: Go ignores ETAs), by Python {sum(py.values())} (none early)")
    elif st.amqp_broker:
        # every task went through a Go-style delay queue, whichever producer sent it
        assert obs.tap is not None
        delayed = {u: [p for p in obs.tap.task_messages(u) if delay_queue(p.routing_key)]
                   for u in expected}
        bad = {u: [p.routing_key for p in ps] for u, ps in delayed.items()
               if len(ps) != 1 or delay_queue(ps[0].routing_key)[1] != pool.queue}  # type: ignore[index]
        assert not bad, list(bad.items())[:5]
        note = (f"all 200 published to delay queues (Go producer {n}, Python {n}); "
                f"run by the Go worker {sum(go.values())}, by Python {sum(py.values())}")
    else:
        # both sides moved some: Go with a plain ZREM, Python inside its Lua script
        assert obs.monitor is not None
        zrems = [c for c in obs.monitor.calls("ZREM") if c.args[1:2] == [b"delayed_tasks"]]
        by_lua = sum(1 for c in zrems if c.client == "lua")
        by_go = len(zrems) - by_lua
        assert by_lua + by_go >= 2 * n, (by_lua, by_go)
        assert by_go > 0 and by_lua > 0, (by_lua, by_go)
        note = f"delayed tasks moved by the Go worker {by_go}, by Python {by_lua}"
    record_property("note", note)


@pytest.mark.kinds(*BROKER_CASE_KINDS)
@pytest.mark.matrix(MIXED, "ETA through AMQP.DelayedQueue (one queue, per-message expiration) "
                           "from both producers, run when due")
@pytest.mark.skip_on("redis", reason="an AMQP setting (amqp.delayed_queue): on Redis every "
                                     "ETA goes to delayed_tasks")
@pytest.mark.skip_on("sqs+dynamodb", reason="an AMQP setting (amqp.delayed_queue): on SQS every "
                                            "ETA is the message's DelaySeconds")
@pytest.mark.skip_on("pubsub+redis", reason="an AMQP setting (amqp.delayed_queue): on Pub/Sub "
                                            "a Python ETA is published at once, Go's after "
                                            "blocking until due")
def test_delayed_queue(flavour: str, go_bins: Path, new_stack: Callable[[str], Stack],
                       tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    """With ``delayed_queue`` set, Go puts every delayed task into that one queue
    (dead-lettering to the task's routing key) with a per-message ``expiration`` (§5.1);
    Python must declare it identically (else PRECONDITION_FAILED on either side) and
    publish the same way.  RabbitMQ expires per-message TTLs at the queue head only, so
    both producers send increasing ETAs."""
    base = new_stack("dq")
    st = base.with_options(delayed_queue=f"{base.queue}.delayed")
    pool = Pool(st, tmp_path).start()
    obs = st.observer()
    try:
        app = pool.py.app
        expected: dict[str, int] = {}
        py_sent = []
        for i in range(5):
            res = app.send_task("add", args=[Arg("int64", i), Arg("int64", PY_BASE)],
                                countdown=1.0 + 0.1 * i)
            expected[res.id] = i + PY_BASE
            py_sent.append(res.id)
        lines = _go_lines(5, GO_BASE)
        for line in lines:
            line["countdown_ms"] = 1600 + 100 * line["id"]
        for o in st.produce(lines):
            assert o["sent"] is True, o
            expected[o["uuid"]] = o["id"] + GO_BASE
        assert st.queue_arguments([st.delayed_queue]) == {st.delayed_queue: [
            ["x-dead-letter-exchange", "longstr", AMQP_EXCHANGE],
            ["x-dead-letter-routing-key", "longstr", st.queue]]}
        _check_results(pool, expected, obs)
        go, py = _check_exactly_once_anywhere(pool, expected)
    finally:
        obs.stop()
        pool.stop()
    assert obs.tap is not None
    for uuid in expected:
        (pub,) = [p for p in obs.tap.task_messages(uuid) if p.routing_key == st.delayed_queue]
        props = dict(pub.properties)
        ms = int(props.pop("expiration"))
        assert 0 < ms <= (1500 if uuid in py_sent else 2000), (uuid, ms)
        assert props == task_properties(pub.body, delayed=True), pub
        assert pub.routed_queues == (st.delayed_queue,), pub
    for ev in pool.go.tasks():
        assert parse_go_time(ev["ts"]) >= parse_go_time(ev["eta"]) - AMQP_EARLY, ev
    for run in pool.py.executions.snapshot():
        assert run.eta is not None and run.at >= run.eta - AMQP_EARLY, run
    record_property("note", f"10 tasks through {st.delayed_queue} (5 per producer); run by "
                            f"the Go worker {sum(go.values())}, by Python {sum(py.values())}")


def _check_exactly_once_anywhere(pool: Pool, expected: dict[str, int]
                                 ) -> tuple[Counter[str], Counter[str]]:
    """Every task ran exactly once, on either worker (with few tasks one may get none)."""
    wait_for(lambda: sum(map(sum, (c.values() for c in pool.run_counts()))) >= len(expected),
             10, "every run to be reported")
    go, py = pool.run_counts()
    both = go + py
    assert set(both) == set(expected) and set(both.values()) == {1}, both
    return go, py


# --------------------------------------------------------------------------------------
# a retried task continued by the other side
# --------------------------------------------------------------------------------------

#: The Go worker's error for a Signature whose Headers hold a number, on AMQP: it decodes
#: the JSON with UseNumber and amqp091-go cannot put a json.Number into a headers table.
GO_HEADER_BUG = "value json.Number not supported"


@dataclass
class Handover:
    """One task (``fail_n_times``, fails twice, RetryCount 3) whose first attempt runs on
    ``first`` and whose retries run on the other side."""

    first: str  # "py" or "go"
    stack: Stack
    py: PyApp
    uuid: str = ""
    go: GoWorker | None = None
    worker: Worker | None = None
    runs: list[tuple[str, int]] = field(default_factory=list)  # (side, RetryCount) per run
    value: Any = None
    go_errors: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def handovers(flavour: str, go_bins: Path, new_stack: Callable[[str], Stack],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Handover]]:
    """Both hand-overs at once (each on its own queue): attempt 1 on one side, then that
    worker stops (waiting for the task, i.e. after the retry was scheduled) and a worker of
    the other side takes the queue and runs attempts 2 (fails, retries) and 3 (→ 3)."""
    log_dir = tmp_path_factory.mktemp("handover")
    stacks = [("py", new_stack("rxpy")), ("go", new_stack("rxgo"))]
    if stacks[0][1].sqs_broker:
        # a Go worker told to quit may still receive one more message, which it never runs
        # (its receive loop picks a free slot over the stop signal at random): the message
        # comes back after the receive visibility timeout, 5 s here instead of the queue's 30
        stacks = [(side, st.with_options(sqs_visibility_timeout=5)) for side, st in stacks]
    out = {side: Handover(side, st, stack_app(st, only={"fail_n_times"}))
           for side, st in stacks}
    try:
        for h in out.values():
            if h.first == "py":
                h.worker = h.py.app.worker(concurrency=1, poll_timeout=h.stack.poll_timeout,
                                           delayed_poll_interval=0.05).start()
            else:
                h.go = h.stack.go_worker(concurrency=1, delayed_poll_ms=50,
                                         log_dir=log_dir).start()
            # SQS truncates DelaySeconds: the first retry (1 s) would be sent with 0 and the
            # first side could take it before it stops; start the Fibonacci delays at 3 s
            h.uuid = h.py.app.send_task("fail_n_times", args=[f"rx-{h.stack.queue}", 2],
                                        retry_count=3,
                                        retry_timeout=2 if h.stack.sqs_broker else 0).id

        def first_done(h: Handover) -> bool:
            if h.first == "py":
                return len(h.py.executions.for_uuid(h.uuid)) >= 1
            assert h.go is not None
            return len(h.go.tasks(h.uuid)) >= 1

        def stop_first(h: Handover) -> None:
            """Stop the first side (waiting for the task, i.e. until its retry is
            scheduled)."""
            if h.first == "py":
                assert h.worker is not None
                h.worker.stop(timeout=10)
                h.worker = None
            else:
                assert h.go is not None
                h.go.stop()
                h.runs += [("go", e["retry_count"]) for e in h.go.tasks(h.uuid)]
                h.go = None

        # each first side stops as soon as its own first attempt started (one thread each, so
        # a slow stop of one does not delay the other): the retry is due 1 s later and must
        # not find it.  The other side's worker then takes the queue (started here, in the
        # main thread: mcworker gets SIGTERM when the thread that started it exits).
        errors: list[BaseException] = []

        def stop_after_first(h: Handover) -> None:
            try:
                wait_for(lambda: first_done(h), 15, f"the first attempt ({h.first})")
                stop_first(h)
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=stop_after_first, args=(h,), name=f"stop-{h.first}")
                   for h in out.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        if errors:
            raise errors[0]
        for h in out.values():
            if h.first == "py":
                h.go = h.stack.go_worker(concurrency=1, delayed_poll_ms=50,
                                         log_dir=log_dir).start()
            else:
                h.worker = h.py.app.worker(concurrency=1, poll_timeout=h.stack.poll_timeout,
                                           delayed_poll_interval=0.05).start()

        def finished(h: Handover) -> bool:
            if h.first == "py":  # the Go worker runs attempts 2 and 3 (or fails to retry)
                assert h.go is not None
                return (len(h.go.tasks(h.uuid)) >= 2
                        or any(GO_HEADER_BUG in e for e in _go_errors(h.go)))
            return len(h.py.executions.for_uuid(h.uuid)) >= 2 + sum(
                1 for side, _ in h.runs if side == "py")

        try:
            wait_for(lambda: all(finished(h) for h in out.values()),
                     30 if stacks[0][1].sqs_broker else 20, "both hand-overs")
        except AssertionError as e:
            state = {h.first: (h.runs, [r.retry_count for r in
                                         h.py.executions.for_uuid(h.uuid)],
                               [ev["retry_count"] for ev in h.go.tasks(h.uuid)] if h.go
                               else None, h.py.app.AsyncResult(h.uuid).state)
                     for h in out.values()}
            raise AssertionError(f"{e}: (runs so far, Python runs, Go runs, state) per first "
                                 f"side: {state}") from None
        for h in out.values():
            if h.first == "py":  # read by the other side: Python reads what Go stored
                assert h.go is not None
                h.runs = ([("py", r.retry_count) for r in h.py.executions.for_uuid(h.uuid)]
                          + [("go", e["retry_count"]) for e in h.go.tasks(h.uuid)])
                h.go_errors = _go_errors(h.go)
                if not any(GO_HEADER_BUG in e for e in h.go_errors):
                    h.value = AsyncResult(h.uuid, h.py.app.backend).get(timeout=10)
            else:  # Go reads what Python stored
                h.runs += [("py", r.retry_count) for r in h.py.executions.for_uuid(h.uuid)]
                (line,) = h.stack.produce([{"read": h.uuid, "timeout_ms": 10000}])
                if h.stack.dynamodb_backend:  # Go reads no int64 from DynamoDB: Python does
                    assert (line["state"], line["error"]) == ("SUCCESS", "3 is not int64"), line
                    h.value = AsyncResult(h.uuid, h.py.app.backend).get(timeout=10)
                else:
                    h.value = (int(line["results"][0]["value"])
                               if (line["state"], line["error"]) == ("SUCCESS", "") else line)
        yield out
    finally:
        for h in out.values():
            try:
                if h.worker is not None:
                    h.worker.stop(timeout=10)
                if h.go is not None:
                    h.go.stop()
            finally:
                h.py.close()


def _go_errors(go: GoWorker) -> list[str]:
    return [e["error"] for e in go.snapshot() if e.get("event") == "error_handler"]


@pytest.mark.matrix(MIXED, "retry continued by the other side: Python attempt 1, then a Go "
                           "worker fails attempt 2, retries, attempt 3 → 3")
def test_retry_python_then_go(handovers: dict[str, Handover]) -> None:
    h = handovers["py"]
    assert not [e for e in h.go_errors if GO_HEADER_BUG in e], h.go_errors
    assert h.runs == [("py", 3), ("go", 2), ("go", 1)], h.runs
    assert h.value == 3


@pytest.mark.matrix(MIXED, "retry continued by the other side: Go attempt 1, then a Python "
                           "worker fails attempt 2, retries, attempt 3 → 3")
def test_retry_go_then_python(handovers: dict[str, Handover]) -> None:
    h = handovers["go"]
    assert h.runs == [("go", 3), ("py", 2), ("py", 1)], h.runs
    assert h.value == 3
