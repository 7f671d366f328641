"""What only Redis shows: Machinery's exact commands (MONITOR), TTLs, the Redis fast path,
server outages and Go's redsync chord lock.

Behaviour common to every broker and backend (the same messages, states and workflows) is in
tests/behaviour/, which runs it on Redis too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from machinery_compat import Arg, Machinery, PublishError, Signature, group
from machinery_compat.worker import Worker
from tests.helpers import GO_PENDING, GOLDEN_BODY, UUID, state_bytes

from .conftest import wait_for

StartWorker = Callable[..., Worker]


def _register_basics(app: Machinery) -> None:
    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)


def test_go_produced_message_states_byte_for_byte(
    app: Machinery, redis_client: redis.Redis, redis_server: Any, start_worker: StartWorker
) -> None:
    _register_basics(app)
    created = "2024-05-01T12:34:56.123456789Z"
    # play the Go producer: SET PENDING, then RPUSH the exact body
    redis_client.set(UUID, GO_PENDING, ex=3600)
    monitor_client = redis_server.client()
    seen: list[str] = []
    ready = threading.Event()

    def watch() -> None:
        with monitor_client.monitor() as mon:
            ready.set()
            for event in mon.listen():
                cmd = event["command"]
                if cmd.startswith(f"SET {UUID}"):
                    seen.append(cmd)
                    if "SUCCESS" in cmd:
                        return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    ready.wait(5)
    redis_client.rpush("machinery_tasks", GOLDEN_BODY)
    start_worker()
    wait_for(lambda: b"SUCCESS" in (redis_client.get(UUID) or b""), what="SUCCESS")
    t.join(5)
    final = redis_client.get(UUID)
    assert final == state_bytes(UUID, "add", "SUCCESS", created, '[{"Type":"int64","Value":2}]')
    assert 3590 < redis_client.ttl(UUID) <= 3600
    # the intermediate writes were RECEIVED then STARTED, each merged, then SUCCESS
    states = [s.split('"State":"')[1].split('"')[0] for s in seen]
    assert states == ["RECEIVED", "STARTED", "SUCCESS"]
    assert all(f'"CreatedAt":"{created}"' in s and '"TaskName":"add"' in s for s in seen)
    assert all(s.endswith('"EX" "3600"') or s.endswith("EX 3600") for s in seen), seen


def test_pending_written_before_publish(app: Machinery, redis_client: redis.Redis) -> None:
    with redis_client.monitor() as mon:
        app.send_task("add", args=[1], task_id="task_order")
        cmds = []
        for event in mon.listen():
            cmds.append(event["command"].split()[0].upper())
            if cmds[-1] == "RPUSH":
                break
    assert cmds.index("SET") < cmds.index("RPUSH")


def test_publish_error_when_redis_is_down(redis_server_factory) -> None:  # type: ignore[no-untyped-def]
    server = redis_server_factory()
    app = Machinery(broker=server.url)
    app.send_task("add", args=[1])
    server.stop()
    with pytest.raises(PublishError, match="not have been stored"):
        app.send_task("add", args=[1])
    server.start()
    res = app.send_task("add", args=[1])
    assert res.state == "PENDING"


def test_worker_survives_broker_outage(redis_server_factory, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    server = redis_server_factory()
    app = Machinery(broker=server.url)

    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    w = app.worker(concurrency=2, poll_timeout=0.1).start()
    try:
        assert app.send_task("add", args=[1, 1]).get(timeout=5) == 2
        server.stop()
        time.sleep(1.0)
        server.start()
        res = wait_for(lambda: _try_send(app), timeout=10, what="producer reconnect")
        assert res.get(timeout=15) == 5
    finally:
        w.stop(timeout=10)
    assert any("broker unreachable" in r.getMessage() for r in caplog.records)


def _try_send(app: Machinery) -> Any:
    try:
        return app.send_task("add", args=[2, 3])
    except Exception:
        return None


def test_backend_outage_before_start_pushes_the_message_back(
    redis_url: str, redis_client: redis.Redis, redis_server_factory: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend_server = redis_server_factory()
    app = Machinery(broker=redis_url, result_backend=backend_server.url)
    runs = []

    @app.task(name="add")
    def add(*nums: int) -> int:
        runs.append(nums)
        return sum(nums)

    backend_server.stop()
    redis_client.rpush("machinery_tasks", Signature(uuid="task_bo", name="add", args=[Arg("int64", 4)],
                                                    headers={}).to_json())
    w = app.worker(concurrency=1, poll_timeout=0.1).start()
    try:
        wait_for(lambda: any("not started: result backend error" in r.getMessage()
                             for r in caplog.records), timeout=30, what="backend error log")
        assert runs == []
        backend_server.start()
        assert app.AsyncResult("task_bo").get(timeout=30) == 4
    finally:
        w.stop(timeout=10)
    assert runs == [(4,)]


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
