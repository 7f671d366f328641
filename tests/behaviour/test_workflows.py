"""Chains, groups, chords and Celery-style retries on a real Redis, Python workers only.

The same workflows across Go and Python workers are in interop/tests/.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis

from machinery_compat import GroupMeta, Machinery, Signature, TaskFailed, chain, chord, group
from machinery_compat.worker import Worker

from .conftest import wait_for

StartWorker = Callable[..., Worker]


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


def test_chain_passes_results_along(app: Machinery, tasks: dict[str, Any], start_worker: StartWorker) -> None:
    add = tasks["add"]
    res = (add.s(1, 1) | add.s(5) | app.signature("multiply", args=[4])).apply_async()
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


def test_group_results_in_order(
    app: Machinery, tasks: dict[str, Any], redis_client: redis.Redis, start_worker: StartWorker
) -> None:
    add = tasks["add"]
    res = group(add.s(i, i) for i in range(10)).apply_async()
    meta = GroupMeta.from_json(redis_client.get(res.id) or b"")
    assert meta.task_uuids == [r.id for r in res.results] and not meta.chord_triggered
    assert all(r.state == "PENDING" for r in res.results)
    assert res.completed_count() == 0
    start_worker(concurrency=4)
    assert res.get(timeout=10) == [2 * i for i in range(10)]
    assert res.ready() and res.successful() and res.completed_count() == 10


def test_group_send_concurrency_without_pipeline(
    redis_url: str, start_worker: StartWorker, redis_client: redis.Redis
) -> None:
    # broker and backend in different DBs: no shared pipeline, threads publish
    app = Machinery(broker=redis_url, result_backend=redis_url.replace("/0", "/1"))

    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    res = group(add.s(i) for i in range(6)).apply_async(send_concurrency=2)
    start_worker(app)
    assert res.get(timeout=10) == list(range(6))


def test_chord_callback_gets_member_results_in_group_order(
    app: Machinery, tasks: dict[str, Any], start_worker: StartWorker
) -> None:
    add, collect = tasks["add"], tasks["collect"]
    res = chord([add.s(i) for i in range(8)], collect.s("first")).apply_async()
    assert res.id.startswith("chord_")
    start_worker(concurrency=4)
    assert res.get(timeout=10) == ["first"] + [str(i) for i in range(8)]
    assert tasks["runs"]["collect"] == 1


def test_chord_immutable_callback(app: Machinery, tasks: dict[str, Any], start_worker: StartWorker) -> None:
    add, collect = tasks["add"], tasks["collect"]
    res = (group(add.s(1), add.s(2)) | collect.si("only")).apply_async()
    start_worker()
    assert res.get(timeout=10) == ["only"]


def test_chord_failing_member_no_callback_on_error_fired(
    app: Machinery, tasks: dict[str, Any], start_worker: StartWorker
) -> None:
    add, fail, collect = tasks["add"], tasks["fail"], tasks["collect"]
    failing = fail.s("member broke")
    res = chord([add.s(1), failing, add.s(2)], collect.s()).apply_async()
    # attach an OnError to the failing member by rebuilding it: Machinery's OnError is per task
    start_worker()
    with pytest.raises(TaskFailed, match="member broke"):
        res.get(timeout=10)
    time.sleep(0.5)
    assert tasks["runs"]["collect"] == 0
    assert not res.callback.ready()


def test_on_error_of_a_group_member(
    app: Machinery, tasks: dict[str, Any], redis_client: redis.Redis, start_worker: StartWorker
) -> None:
    members, _ = chord([tasks["add"].s(1), tasks["fail"].s("bad")], tasks["collect"].s()).to_signatures()
    members[1].on_error = [app.build_signature("collect", args=["handled"])]
    errback_id = "task_errback"
    members[1].on_error[0].uuid = errback_id
    app.send_group(members)
    start_worker()
    assert app.AsyncResult(errback_id).get(timeout=10) == ["bad", "handled"]
    assert tasks["runs"]["collect"] == 1


def test_racing_chords_fire_each_callback_once(
    app: Machinery, redis_url: str, tasks: dict[str, Any], start_worker: StartWorker
) -> None:
    other = Machinery(broker=redis_url, default_queue="machinery_tasks")
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
    app: Machinery, redis_client: redis.Redis, start_worker: StartWorker
) -> None:
    attempts: list[tuple[int, float]] = []

    @app.task(name="flaky_celery", bind=True, max_retries=3, default_retry_delay=1)
    def flaky_celery(self: Any) -> str:
        attempts.append((self.request.retries, time.monotonic()))
        if len(attempts) < 3:
            raise self.retry(exc=RuntimeError(f"attempt {len(attempts)}"))
        return "ok"

    res = flaky_celery.delay()
    sent = Signature.from_json(redis_client.lindex("machinery_tasks", 0) or b"")
    assert (sent.retry_count, sent.retry_timeout) == (3, 0)
    start_worker()
    wait_for(lambda: redis_client.zcard("delayed_tasks"), what="retry scheduled")
    again = Signature.from_json(redis_client.zrange("delayed_tasks", 0, 0)[0])
    assert (again.uuid, again.retry_count, again.retry_timeout) == (res.id, 2, 1)
    assert res.get(timeout=15) == "ok"
    assert [a[0] for a in attempts] == [3, 2, 1]
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


def test_default_retry_delay_rounds_to_a_fibonacci_step(app: Machinery) -> None:
    from machinery_compat.task import timeout_for_first_delay

    assert [timeout_for_first_delay(d) for d in (1, 2, 4, 5, 10, 60)] == [0, 1, 3, 3, 8, 55]

    @app.task(name="t", default_retry_delay=10, max_retries=4)
    def t() -> None:
        return None

    sig = t.signature()
    assert (sig.retry_count, sig.retry_timeout) == (4, 8)  # delays 13, 21, 34, 55 s
    from machinery_compat import ConfigError

    with pytest.raises(ConfigError, match="Fibonacci"):
        app.task(name="u", retry_backoff=False)(lambda: None)


def test_chord_trigger_takes_gos_redsync_lock(app: Machinery, redis_client: redis.Redis) -> None:
    """Same key, NX + PX 8000, 16-byte base64 token, compare-and-delete release (redsync v4)."""
    backend = app.backend
    backend.init_group("group_lock", ["task_a"])  # type: ignore[attr-defined]
    # a Go worker holds the lock: we must wait for it, not barge in
    redis_client.set("TriggerChordMutex", b"go-token", px=400)
    start = time.monotonic()
    with redis_client.monitor() as mon:
        assert backend.trigger_chord("group_lock") is True
        cmds = []
        for event in mon.listen():
            cmds.append(event["command"])
            if event["command"].startswith("EVALSHA"):
                break
    assert time.monotonic() - start >= 0.3
    sets = [c for c in cmds if c.startswith("SET TriggerChordMutex")]
    assert sets, cmds
    parts = sets[-1].split()
    assert parts[3:] == ["NX", "PX", "8000"] and len(parts[2]) == 24  # base64 of 16 bytes
    assert redis_client.get("TriggerChordMutex") is None  # released
    assert backend.trigger_chord("group_lock") is False  # already triggered
    # release never deletes a lock someone else holds now
    redis_client.set("TriggerChordMutex", b"someone-else", px=5000)
    assert backend._unlock(keys=["TriggerChordMutex"], args=[b"not-ours"]) == 0  # type: ignore[attr-defined]
    assert redis_client.get("TriggerChordMutex") == b"someone-else"
