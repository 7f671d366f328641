"""Chains, groups, chords and Celery-style retries, Python workers only, on every broker and
backend.

Run both ways (sync API and app.aio, marker ``both_apis``, the aio variant on redis,
amqp+redis, amqp and redis-sentinel, with asyncio-pool workers running the tasks as async def): the chain, group and chord tests that send
through the ``producer`` fixture (test_chain_passes_results_along, test_group_results_in_order,
test_chord_callback_gets_member_results_in_group_order,
test_chord_failing_member_no_callback_on_error_fired, test_on_error_of_a_group_member).

The same workflows across Go and Python workers are in interop/tests/; the Redis chord lock
is in tests/integration/test_redis_layout.py.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from machinery_compat import GroupMeta, Machinery, Signature, TaskFailed, chain, chord, group

from ._aio_driver import Producer
from .conftest import Probe, StartWorker, wait_for


@pytest.fixture
def tasks(app: Machinery) -> dict[str, Any]:
    runs: Counter[str] = Counter()
    lock = threading.Lock()

    def count(name: str) -> None:
        with lock:
            runs[name] += 1

    @app.task(name="add")
    def add(*nums: int) -> int:
        count("add")
        return sum(nums)

    @app.task(name="multiply")
    def multiply(*nums: int) -> int:
        count("multiply")
        out = 1
        for n in nums:
            out *= n
        return out

    @app.task(name="fail")
    def fail(msg: str, *previous: Any) -> int:
        count("fail")
        raise RuntimeError(msg)

    @app.task(name="collect")
    def collect(*values: Any) -> list[str]:
        count("collect")
        return [str(v) for v in values]

    return {"add": add, "multiply": multiply, "fail": fail, "collect": collect, "runs": runs}


@pytest.mark.mixed
@pytest.mark.both_apis
def test_chain_passes_results_along(app: Machinery, tasks: dict[str, Any], start_worker: StartWorker,
                                    producer: Producer) -> None:
    add = tasks["add"]
    res = producer.apply_async(add.s(1, 1) | add.s(5) | app.signature("multiply", args=[4]))
    start_worker()
    assert res.get(timeout=10) == 28
    assert [r.get(timeout=1) for r in res.results] == [2, 7, 28]


def test_chain_with_immutable_step(app: Machinery, tasks: dict[str, Any], start_worker: StartWorker) -> None:
    add = tasks["add"]
    res = chain(add.s(1, 1), add.si(10), add.s(5)).apply_async()
    start_worker()
    assert res.get(timeout=10) == 15  # 2 is not passed to the si() step; 10 is passed on


def test_chain_failure_stops_and_raises(app: Machinery, tasks: dict[str, Any], start_worker: StartWorker) -> None:
    add, fail = tasks["add"], tasks["fail"]
    res = (add.s(1) | fail.s("broken") | add.s(1)).apply_async()
    start_worker()
    with pytest.raises(TaskFailed, match="broken"):
        res.get(timeout=10)
    time.sleep(0.3)
    assert tasks["runs"]["add"] == 1


@pytest.mark.mixed
@pytest.mark.both_apis
def test_group_results_in_order(
    app: Machinery, tasks: dict[str, Any], probe: Probe, start_worker: StartWorker,
    producer: Producer
) -> None:
    add = tasks["add"]
    res = producer.apply_async(group(add.s(i, i) for i in range(10)))
    meta = GroupMeta.from_json(probe.state_bytes(res.id) or b"")
    assert meta.task_uuids == [r.id for r in res.results] and not meta.chord_triggered
    assert all(r.state == "PENDING" for r in res.results)
    assert res.completed_count() == 0
    start_worker(concurrency=4)
    assert res.get(timeout=10) == [2 * i for i in range(10)]
    assert res.ready() and res.successful() and res.completed_count() == 10


@pytest.mark.mixed
@pytest.mark.both_apis
def test_chord_callback_gets_member_results_in_group_order(
    app: Machinery, tasks: dict[str, Any], start_worker: StartWorker, producer: Producer
) -> None:
    add, collect = tasks["add"], tasks["collect"]
    res = producer.apply_async(chord([add.s(i) for i in range(8)], collect.s("first")))
    assert res.id.startswith("chord_")
    start_worker(concurrency=4)
    assert res.get(timeout=10) == ["first"] + [str(i) for i in range(8)]
    assert tasks["runs"]["collect"] == 1


def test_chord_immutable_callback(app: Machinery, tasks: dict[str, Any], start_worker: StartWorker) -> None:
    add, collect = tasks["add"], tasks["collect"]
    res = (group(add.s(1), add.s(2)) | collect.si("only")).apply_async()
    start_worker()
    assert res.get(timeout=10) == ["only"]


@pytest.mark.both_apis
def test_chord_failing_member_no_callback_on_error_fired(
    app: Machinery, tasks: dict[str, Any], start_worker: StartWorker, producer: Producer
) -> None:
    add, fail, collect = tasks["add"], tasks["fail"], tasks["collect"]
    failing = fail.s("member broke")
    res = producer.apply_async(chord([add.s(1), failing, add.s(2)], collect.s()))
    # attach an OnError to the failing member by rebuilding it: Machinery's OnError is per task
    start_worker()
    with pytest.raises(TaskFailed, match="member broke"):
        res.get(timeout=10)
    time.sleep(0.5)
    assert tasks["runs"]["collect"] == 0
    assert not res.callback.ready()


@pytest.mark.mixed
@pytest.mark.both_apis
def test_on_error_of_a_group_member(
    app: Machinery, tasks: dict[str, Any], start_worker: StartWorker, producer: Producer
) -> None:
    members, _ = chord([tasks["add"].s(1), tasks["fail"].s("bad")], tasks["collect"].s()).to_signatures()
    members[1].on_error = [app.build_signature("collect", args=["handled"])]
    errback_id = "task_errback"
    members[1].on_error[0].uuid = errback_id
    producer.send_group(members)
    start_worker()
    assert producer.AsyncResult(errback_id).get(timeout=10) == ["bad", "handled"]
    assert tasks["runs"]["collect"] == 1


@pytest.mark.mixed
def test_racing_chords_fire_each_callback_once(
    app: Machinery, make_app: Callable[..., Machinery], tasks: dict[str, Any], start_worker: StartWorker
) -> None:
    other = make_app()
    fired: Counter[str] = Counter()
    lock = threading.Lock()

    def register(target: Machinery) -> None:
        @target.task(name="noop")
        def noop(i: int) -> int:
            return i

        @target.task(name="done", bind=True)
        def done(self: Any, *values: int) -> int:
            with lock:
                fired[self.request.id] += 1
            return sum(values)

    register(app)
    register(other)
    n = 60
    results = [chord([app.signature("noop", args=[i]), app.signature("noop", args=[i])],
                     app.signature("done")).apply_async() for i in range(n)]
    start_worker(concurrency=4)
    start_worker(other, concurrency=4)
    for i, r in enumerate(results):
        assert r.get(timeout=30) == 2 * i
    time.sleep(0.5)
    assert len(fired) == n and set(fired.values()) == {1}


def test_celery_style_retry_maps_onto_retry_count(
    app: Machinery, probe: Probe, start_worker: StartWorker
) -> None:
    attempts: list[tuple[int, float]] = []

    @app.task(name="flaky_celery", bind=True, max_retries=3, default_retry_delay=1)
    def flaky_celery(self: Any) -> str:
        attempts.append((self.request.retries, time.monotonic()))
        if len(attempts) < 3:
            raise self.retry(exc=RuntimeError(f"attempt {len(attempts)}"))
        return "ok"

    res = flaky_celery.delay()
    sent = Signature.from_json(probe.messages()[0])
    assert (sent.retry_count, sent.retry_timeout) == (3, 0)
    start_worker()
    wait_for(probe.delayed, what="retry scheduled")
    again = Signature.from_json(probe.delayed()[0][0])
    assert (again.uuid, again.retry_count, again.retry_timeout) == (res.id, 2, 1)
    assert res.get(timeout=15) == "ok"
    assert [a[0] for a in attempts] == [0, 1, 2]  # Celery's meaning: retries done so far
    gaps = [b[1] - a[1] for a, b in itertools.pairwise(attempts)]
    assert 0.9 < gaps[0] < 1.6 and 1.9 < gaps[1] < 2.6


def test_self_retry_exhausted_fails_with_exc_text(app: Machinery, start_worker: StartWorker) -> None:
    @app.task(name="never", bind=True, max_retries=1)
    def never(self: Any) -> None:
        raise self.retry(exc=ValueError("still broken"), countdown=0.1)

    res = never.delay()
    start_worker()
    with pytest.raises(TaskFailed, match="still broken"):
        res.get(timeout=10)


def test_self_retry_max_retries_caps(app: Machinery, start_worker: StartWorker) -> None:
    runs = []

    @app.task(name="capped", bind=True, max_retries=5)
    def capped(self: Any) -> None:
        runs.append(1)
        raise self.retry(exc=ValueError("x"), countdown=0.05, max_retries=1)

    res = capped.delay()
    start_worker()
    with pytest.raises(TaskFailed):
        res.get(timeout=10)
    assert len(runs) == 2


def test_autoretry_for_only_listed_exceptions(app: Machinery, start_worker: StartWorker) -> None:
    runs: list[str] = []

    @app.task(name="picky", max_retries=2, autoretry_for=(ConnectionError,))
    def picky(kind: str) -> str:
        runs.append(kind)
        if kind == "value":
            raise ValueError("not retried")
        if runs.count("conn") < 2:
            raise ConnectionError("retried")
        return "ok"

    bad = picky.delay("value")
    good = picky.delay("conn")
    start_worker()
    with pytest.raises(TaskFailed, match="not retried"):
        bad.get(timeout=10)
    assert good.get(timeout=10) == "ok"
    assert runs.count("value") == 1 and runs.count("conn") == 2
