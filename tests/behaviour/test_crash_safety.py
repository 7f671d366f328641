"""Crash-safe consumption and outages: a message a worker took is never lost and never run
twice when nothing crashed.

On Redis (the default ``crash_safe`` mode) a taken message waits in the worker's processing
list until it is settled, dead workers' lists go back to the head of their queues, and the
extra keys all live under ``machinery_compat:``.  The outage behaviour (final states retried
until the backend is back; on stop, the message pushed back) holds on every broker kind that
can push back (redis, memory).  Real ``kill -9`` loops and Redis restarts are in
``tests/integration/test_redis_crash.py``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from machinery_compat import Arg, Machinery, Signature, recovery
from machinery_compat.brokers import redis as redis_broker
from machinery_compat.config import Config, RedisConfig
from machinery_compat.exceptions import BackendError
from machinery_compat.worker import worker as worker_module
from tests.helpers import GOLDEN_BODY

from .conftest import Probe, StartWorker, wait_for

PREFIX = "machinery_compat:"
QUEUE = "machinery_tasks"


def _keys(app: Machinery) -> list[str]:
    client = app.broker.client  # type: ignore[attr-defined]
    return sorted(k.decode() for k in client.keys(PREFIX + "*"))


def _processing(app: Machinery, worker: Any, queue: str = QUEUE) -> list[bytes]:
    key = redis_broker.processing_key(worker.broker.worker_id, queue)
    return list(app.broker.client.lrange(key, 0, -1))  # type: ignore[attr-defined]


def _dead_worker(app: Machinery, worker_id: str, *bodies: bytes, queue: str = QUEUE) -> None:
    """What a worker killed while holding ``bodies`` leaves behind (no heartbeat key)."""
    client = app.broker.client  # type: ignore[attr-defined]
    client.hset(redis_broker.REGISTRY_KEY, worker_id, json.dumps({"queues": [queue]}))
    client.rpush(redis_broker.processing_key(worker_id, queue), *bodies)


def _sig(uuid: str, name: str = "add", *args: int) -> bytes:
    return Signature(uuid=uuid, name=name, routing_key=QUEUE, headers={},
                     args=[Arg("int64", a) for a in args]).to_json()


# -- Redis: processing lists, heartbeats, recovery ---------------------------------------------


@pytest.mark.kinds("redis")
def test_message_waits_in_the_processing_list_until_its_final_state(
    app: Machinery, start_worker: StartWorker
) -> None:
    gate = threading.Event()

    @app.task(name="slow")
    def slow() -> int:
        gate.wait(10)
        return 7

    worker = start_worker(concurrency=1)
    res = app.send_task("slow")
    held = wait_for(lambda: _processing(app, worker), what="the message in the processing list")
    assert [Signature.from_json(b).uuid for b in held] == [res.id]
    assert app.broker.client.llen(QUEUE) == 0  # type: ignore[attr-defined]
    wid = worker.broker.worker_id  # type: ignore[attr-defined]
    assert set(_keys(app)) >= {f"{PREFIX}heartbeat:{wid}", f"{PREFIX}workers",
                                f"{PREFIX}processing:{wid}:{QUEUE}"}
    gate.set()
    assert res.get(timeout=5) == 7
    wait_for(lambda: not _processing(app, worker), what="the message removed after SUCCESS")
    worker.stop()
    assert _keys(app) == []  # a clean stop unregisters and leaves nothing behind


@pytest.mark.kinds("redis")
def test_every_outcome_leaves_nothing_held(app: Machinery, probe: Probe,
                                           start_worker: StartWorker) -> None:
    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    @app.task(name="boom")
    def boom() -> None:
        raise ValueError("no")

    @app.task(name="flaky")
    def flaky() -> None:
        raise RuntimeError("once")

    bodies = [
        _sig("task_ok", "add", 1, 2),
        _sig("task_fail", "boom"),
        Signature(uuid="task_retry", name="flaky", routing_key=QUEUE, headers={},
                  retry_count=1).to_json(),
        Signature(uuid="task_ignored", name="nobody_has_it", routing_key=QUEUE,
                  ignore_when_task_not_registered=True).to_json(),
        b"not json at all",
        b'{"UUID":"task_noname"}',
    ]
    probe.push(QUEUE, *bodies)
    worker = start_worker(max_message_size=100_000)
    wait_for(lambda: sum(worker.outcomes.values()) == len(bodies), what="all six settled")
    assert worker.outcomes == {"run": 3, "dropped": 1, "dead_lettered": 2}
    wait_for(lambda: not _processing(app, worker), what="nothing held")
    assert len(probe.delayed()) == 1  # the retry, published with the ack in one MULTI
    assert sorted(probe.dead()) == sorted([b"not json at all", b'{"UUID":"task_noname"}'])
    worker.stop()
    assert _keys(app) == []


@pytest.mark.kinds("redis")
def test_dead_workers_messages_go_back_to_the_head_and_run_again(
    app: Machinery, probe: Probe, start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    order: list[tuple[str, Any]] = []

    @app.task(name="add", bind=True)
    def add(self: Any, *nums: int) -> int:
        order.append((self.request.id, self.request.headers.get("redeliveries")))
        return sum(nums)

    _dead_worker(app, "host-1-dead", _sig("task_a", "add", 1), _sig("task_b", "add", 2))
    probe.push(QUEUE, _sig("task_c", "add", 3))
    # a worker on another queue re-queues them (its reaper waits one TTL after its start);
    # only then does a worker on this queue start, to see the order they were put back in
    reaper = start_worker(queues=["elsewhere"], heartbeat_ttl=0.5)
    wait_for(lambda: len(probe.messages()) == 3, timeout=5,
             what="the dead worker's list re-queued")
    queued = probe.messages()
    assert [Signature.from_json(b).uuid for b in queued] == ["task_a", "task_b", "task_c"]
    assert queued[0] == _sig("task_a", "add", 1).replace(
        b'"Headers":{}', b'"Headers":{"redeliveries":"1"}')
    assert reaper.broker.recovered == 2  # type: ignore[attr-defined]
    worker = start_worker(concurrency=1)
    wait_for(lambda: len(order) == 3, what="all three run")
    assert order == [("task_a", "1"), ("task_b", "1"), ("task_c", None)]
    client = app.broker.client  # type: ignore[attr-defined]
    assert "host-1-dead" not in {k.decode() for k in client.hkeys(redis_broker.REGISTRY_KEY)}
    assert any("re-queued 2 message(s) of dead worker host-1-dead" in r.getMessage()
               for r in caplog.records)
    assert any("redelivered (1 time(s))" in r.getMessage() for r in caplog.records)
    worker.stop()


@pytest.mark.kinds("redis")
def test_a_slow_task_on_a_live_worker_is_never_taken_from_it(
    app: Machinery, start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    runs: Counter[str] = Counter()

    @app.task(name="slow", bind=True)
    def slow(self: Any, seconds: float) -> float:
        runs[self.request.id] += 1
        time.sleep(seconds)
        return seconds

    start_worker(concurrency=1, heartbeat_ttl=0.5)
    start_worker(concurrency=1, heartbeat_ttl=0.5)  # a live reaper next to it
    res = app.send_task("slow", args=[2.5])  # five heartbeat TTLs
    assert res.get(timeout=10) == 2.5
    time.sleep(1.0)
    assert runs == {res.id: 1}
    assert not any("re-queued" in r.getMessage() or "no longer in its processing list" in
                   r.getMessage() for r in caplog.records)


@pytest.mark.kinds("redis")
def test_two_reapers_never_both_recover_a_list(app: Machinery) -> None:
    bodies = [_sig(f"task_{i}", "add", i) for i in range(300)]
    _dead_worker(app, "host-2-dead", *bodies)
    totals: list[int] = []
    barrier = threading.Barrier(8)

    def reap() -> None:
        other = Machinery(broker=app.config.broker, result_backend=app.config.result_backend)
        barrier.wait()
        totals.append(redis_broker.recover_workers(other.broker))  # type: ignore[arg-type]
        other.close()

    threads = [threading.Thread(target=reap) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(totals) == [0] * 7 + [300]
    client = app.broker.client  # type: ignore[attr-defined]
    queued = client.lrange(QUEUE, 0, -1)
    assert [Signature.from_json(b).uuid for b in queued] == [f"task_{i}" for i in range(300)]


@pytest.mark.kinds("redis")
def test_redeliveries_header_changes_nothing_else(app: Machinery) -> None:
    client = app.broker.client  # type: ignore[attr-defined]
    odd = [b"not json", b'{"UUID":"task_x","Name":"add"}', b'[1,2]']
    _dead_worker(app, "host-3-dead", GOLDEN_BODY, *odd)
    assert redis_broker.recover_workers(app.broker) == 4  # type: ignore[arg-type]
    once = client.lrange(QUEUE, 0, -1)
    assert once[0] == GOLDEN_BODY.replace(b'"Headers":{}', b'"Headers":{"redeliveries":"1"}')
    assert once[1:] == odd  # no Headers object to count in: left exactly as they were
    assert Signature.from_json(once[0]).headers == {"redeliveries": "1"}
    client.delete(QUEUE)
    _dead_worker(app, "host-4-dead", once[0])
    redis_broker.recover_workers(app.broker)  # type: ignore[arg-type]
    assert client.lrange(QUEUE, 0, -1) == [
        GOLDEN_BODY.replace(b'"Headers":{}', b'"Headers":{"redeliveries":"2"}')]


@pytest.mark.kinds("redis")
def test_a_fetch_whose_reply_was_lost_is_repaired(
    app: Machinery, probe: Probe, start_worker: StartWorker
) -> None:
    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    worker = start_worker(concurrency=1)
    consumer = worker.broker
    # as if a BLMOVE ran but its reply never came back: in the list, unknown to the worker
    body = _sig("task_orphan", "add", 4, 5)
    app.broker.client.rpush(  # type: ignore[attr-defined]
        redis_broker.processing_key(consumer.worker_id, QUEUE), body)  # type: ignore[attr-defined]
    consumer._needs_repair = True  # type: ignore[attr-defined] # set by a failed fetch
    assert app.AsyncResult("task_orphan").get(timeout=5) == 9
    wait_for(lambda: not _processing(app, worker), what="nothing held")


@pytest.mark.kinds("redis")
def test_several_queues_are_served_promptly(app: Machinery, start_worker: StartWorker) -> None:
    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    start_worker(queues=["q_a", "q_b", "q_c"], poll_timeout=3.0)
    time.sleep(0.3)  # idle: blocked on one of them (BLMOVE takes one source list)
    for q in ("q_c", "q_b", "q_a"):
        began = time.monotonic()
        res = app.send_task("add", args=[1, 2], routing_key=q)
        assert res.get(timeout=5) == 3
        assert time.monotonic() - began < 1.5, q  # not the 3 s poll period


@pytest.mark.kinds("redis")
def test_crash_safe_off_is_gos_lpop_blpop(app: Machinery, make_app: Callable[..., Machinery],
                                          start_worker: StartWorker) -> None:
    plain = make_app(config=Config.from_url(app.config.broker, default_queue=QUEUE,
                                            redis=RedisConfig(crash_safe=False)))

    @plain.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    worker = start_worker(plain)
    assert worker.broker is plain.broker and not worker.crash_safe
    assert app.send_task("add", args=[2, 2]).get(timeout=5) == 4
    assert _keys(app) == []
    other = start_worker(app, crash_safe=False)
    assert other.broker is app.broker


# -- outages (every kind that can push back) ---------------------------------------------------


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "_FIRST_RETRY", 0.02)
    monkeypatch.setattr(worker_module, "_MAX_RETRY", 0.1)


def _failing_backend(app: Machinery, monkeypatch: pytest.MonkeyPatch,
                     until: Callable[[], bool]) -> list[float]:
    """The backend's final-state writes fail while ``until()`` is false."""
    backend = app.backend
    real = backend.set_final_state
    attempts: list[float] = []

    def set_final_state(*args: Any, **kwargs: Any) -> None:
        attempts.append(time.monotonic())
        if not until():
            raise BackendError("backend unreachable (simulated)")
        real(*args, **kwargs)

    monkeypatch.setattr(backend, "set_final_state", set_final_state)
    return attempts


@pytest.mark.kinds("redis", "memory", "redis+memory")
def test_final_state_is_retried_until_the_backend_is_back(
    app: Machinery, probe: Probe, start_worker: StartWorker, monkeypatch: pytest.MonkeyPatch,
    fast_retries: None,
) -> None:
    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    back = threading.Event()
    attempts = _failing_backend(app, monkeypatch, back.is_set)
    worker = start_worker(concurrency=1)
    res = app.send_task("add", args=[20, 22])
    wait_for(lambda: len(attempts) >= 20, what="20 failed attempts")  # far past 4 tries
    assert res.state == "STARTED"
    back.set()
    assert res.get(timeout=5) == 42
    assert worker.outcomes == {"run": 1}
    assert probe.messages() == []
    if app.config.broker.startswith("redis"):
        wait_for(lambda: not _processing(app, worker), what="acknowledged once stored")


@pytest.mark.kinds("redis", "memory")
def test_stopping_during_a_backend_outage_pushes_the_message_back(
    app: Machinery, make_app: Callable[..., Machinery], probe: Probe,
    start_worker: StartWorker, monkeypatch: pytest.MonkeyPatch, fast_retries: None,
) -> None:
    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    attempts = _failing_backend(app, monkeypatch, lambda: False)
    worker = start_worker(concurrency=1)
    res = app.send_task("add", args=[1, 1])
    wait_for(lambda: len(attempts) >= 3, what="the final state failing")
    worker.stop(timeout=10)
    assert worker.outcomes == {"not_stored": 1}
    assert [Signature.from_json(b).uuid for b in probe.messages()] == [res.id]
    assert res.state == "STARTED"
    if app.config.broker.startswith("redis"):
        assert _keys(app) == []
    fresh = make_app()  # the backend is back: another worker finishes it
    fresh.task(name="add")(lambda *nums: sum(nums))
    start_worker(fresh)
    assert res.get(timeout=5) == 2


@pytest.mark.kinds("redis", "memory")
def test_an_unexpected_error_dead_letters_instead_of_holding(
    app: Machinery, probe: Probe, start_worker: StartWorker, monkeypatch: pytest.MonkeyPatch,
) -> None:
    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug in the worker")

    worker = start_worker(concurrency=1)
    monkeypatch.setattr(worker, "process", broken)
    body = _sig("task_bug", "add", 1)
    probe.push(QUEUE, body)
    wait_for(lambda: probe.dead() == [body], what="dead-lettered")
    if app.config.broker.startswith("redis"):
        wait_for(lambda: not _processing(app, worker), what="nothing held")


# -- finding and re-sending stuck tasks --------------------------------------------------------


@pytest.mark.kinds("redis")
def test_find_and_resend_stuck_tasks(app: Machinery, probe: Probe,
                                     start_worker: StartWorker) -> None:
    client = app.backend.client  # type: ignore[attr-defined]
    expire = app.backend.expire_in

    def state(uuid: str, st: str, idle: int) -> None:
        body = (f'{{"TaskUUID":"{uuid}","TaskName":"add","State":"{st}","Results":null,'
                f'"Error":"","CreatedAt":"2024-05-01T12:00:00Z","TTL":0}}').encode()
        client.set(uuid, body, ex=expire - idle)

    state("task_gone", "STARTED", 700)  # its Go worker died: no message anywhere
    state("task_gone2", "RECEIVED", 900)
    state("task_queued", "STARTED", 700)  # still queued (e.g. re-queued): not stuck
    probe.push(QUEUE, _sig("task_queued", "add", 1))
    state("task_held", "STARTED", 700)  # in a dead Python worker's list: recovered first
    _dead_worker(app, "host-5-dead", _sig("task_held", "add", 2))
    state("task_recent", "STARTED", 10)
    state("task_done", "SUCCESS", 700)
    stuck = recovery.find_stuck_tasks(app, older_than=600)
    assert [(s.task_uuid, s.state) for s in stuck] == [("task_gone2", "RECEIVED"),
                                                       ("task_gone", "STARTED")]
    assert 890 < (stuck[0].idle_for or 0) < 910 and stuck[0].task_name == "add"
    assert [Signature.from_json(b).uuid for b in probe.messages()] == ["task_held", "task_queued"]
    with pytest.raises(recovery.NotStuck):
        recovery.resend(app, Signature.from_json(_sig("task_queued", "add", 1)))
    with pytest.raises(recovery.NotStuck):
        recovery.resend(app, Signature.from_json(_sig("task_done", "add", 1)))

    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    res = recovery.resend(app, Signature.from_json(_sig("task_gone", "add", 40, 2)))
    start_worker()
    assert res.get(timeout=5) == 42
    assert recovery.find_stuck_tasks(app, older_than=600)[0].task_uuid == "task_gone2"


def test_config_keys_for_the_mode() -> None:
    cfg = Config.from_yaml(__import__("io").StringIO(
        "broker: redis://127.0.0.1:6379/0\nredis:\n  crash_safe: false\n  heartbeat_ttl: 2\n"))
    assert cfg.redis is not None and not cfg.redis.crash_safe and cfg.redis.heartbeat_ttl == 2
    env = Config.from_env({"REDIS_CRASH_SAFE": "false", "REDIS_HEARTBEAT_TTL": "3"})
    assert env.redis is not None and not env.redis.crash_safe and env.redis.heartbeat_ttl == 3
    assert "crash_safe" not in Config().to_yaml()  # defaults are not written for Go
    assert Config(redis=RedisConfig(crash_safe=False)).to_yaml_dict()["redis"] == {
        "crash_safe": False}
    app = Machinery(config=Config.from_url("redis://127.0.0.1:1/0",
                                           redis=RedisConfig(heartbeat_ttl=0)))
    assert app.worker().heartbeat_ttl == 5 and app.worker().crash_safe
