"""machinery_compat.celery without servers: install(), the checks, running Celery tasks in
Celery's real thread and solo pools, and the bootstep consuming a memory:// Machinery queue
(the interop suite runs it in a real ``celery worker`` against Go Machinery)."""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from billiard.einfo import ExceptionInfo
from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery import Celery, current_app
from celery.concurrency.base import BasePool
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.concurrency.solo import TaskPool as SoloPool
from celery.concurrency.thread import TaskPool as ThreadPool

from machinery_compat import Machinery, Retry
from machinery_compat.celery import (
    CALL_TASK,
    MachineryBridgeStep,
    bridge_of,
    go_task,
    install,
    machinery_send,
)
from machinery_compat.celery.pool import PoolRunner, PoolTaskError, _lost, run_in_child
from machinery_compat.celery.step import check_queue
from machinery_compat.exceptions import ConfigError, TaskFailed
from machinery_compat.task import Request

_serial = itertools.count(1)


def _celery() -> Any:
    app = Celery(f"bridge_unit_{next(_serial)}", broker="memory://", backend="cache+memory://")

    @app.task(name="t.add", shared=False)
    def add(*nums: int) -> int:
        return sum(nums)

    @app.task(name="t.whoami", bind=True, shared=False)
    def whoami(self: Any) -> str:
        return f"{self.request.id} {self.request.retries} {self.request.delivery_info['routing_key']}"

    @app.task(name="t.fail", shared=False)
    def fail(text: str) -> None:
        raise ValueError(text)

    @app.task(name="t.again", bind=True, shared=False)
    def again(self: Any) -> str:
        if self.request.retries == 0:
            raise self.retry()
        return f"retried {self.request.retries}"

    @app.task(name="t.again_exc", bind=True, shared=False)
    def again_exc(self: Any) -> None:
        raise self.retry(exc=KeyError("k"), countdown=9)

    return app


def _request(task_id: str = "task_1", retries: int = 0) -> Request:
    return Request(task_id, "x", None, 0, 0, {}, "", [], retries)  # type: ignore[arg-type]


@pytest.fixture
def thread_pool() -> Iterator[Any]:
    pool = ThreadPool(limit=2)
    pool.start()
    yield pool
    pool.stop()


def test_install_attaches_the_bridge_and_its_step() -> None:
    app = _celery()
    bridge = install(app, broker="memory://bridge_install", queue="mq", tasks=["t.add"])
    assert bridge_of(app) is bridge and bridge.queue == "mq"
    assert bridge.tasks == {"t.add": "t.add"}
    assert MachineryBridgeStep in app.steps["consumer"]
    assert CALL_TASK in app.tasks
    assert bridge.task_map(app) == {"t.add": "t.add"}
    install(app, broker="memory://bridge_install", tasks={"add": "t.add"})  # again: no duplicate
    assert len([s for s in app.steps["consumer"] if s is MachineryBridgeStep]) == 1
    assert bridge_of(app).queue == "machinery_tasks"  # the config's default queue


def test_install_refuses_bad_settings() -> None:
    app = _celery()
    with pytest.raises(ConfigError, match="Machinery app or broker"):
        install(app)
    with pytest.raises(ConfigError, match="either"):
        install(app, Machinery("memory://x"), broker="memory://y")
    with pytest.raises(ConfigError, match="not a string"):
        install(app, broker="memory://x", tasks="t.add")
    with pytest.raises(ConfigError, match="no Machinery bridge"):
        bridge_of(_celery())
    bridge = install(app, broker="memory://x", tasks={"add": "t.nope"})
    with pytest.raises(ConfigError, match=r"t\.nope not registered.*t\.add"):
        bridge.task_map(app)
    everything = install(app, broker="memory://x").task_map(app)
    assert everything == {n: n for n in ("t.add", "t.again", "t.again_exc", "t.fail", "t.whoami")}


def test_the_machinery_queue_must_not_be_celerys() -> None:
    app = _celery()
    with pytest.raises(ConfigError, match="one of the Celery app's own queues"):
        check_queue(install(app, broker="memory://x", queue="celery"), app)
    check_queue(install(app, broker="memory://x", queue="mq"), app)


def test_pools() -> None:
    with pytest.raises(ConfigError, match="without one"):  # prefork needs the event loop
        PoolRunner(_celery(), PreforkPool(limit=1))
    with pytest.raises(ConfigError, match=r"not celery\.concurrency\.base\.BasePool"):
        PoolRunner(_celery(), BasePool(limit=1))  # any other (eventlet, gevent …)
    assert PoolRunner(_celery(), SoloPool()).kind == "solo"


@pytest.mark.parametrize("kind", ["threads", "solo"])
def test_runner_calls_the_task_with_the_message_request(kind: str, thread_pool: Any) -> None:
    app = _celery()
    pool = thread_pool if kind == "threads" else SoloPool()
    runner = PoolRunner(app, pool)
    assert runner.call("t.add", _request(), [1, 2, 3], "mq") == 6
    assert runner.call("t.whoami", _request("task_9", 2), [], "mq") == "task_9 2 mq"
    with pytest.raises(ValueError, match="boom"):
        runner.call("t.fail", _request(), ["boom"], "mq")
    with pytest.raises(Retry) as info:  # self.retry(): one RetryCount, Fibonacci delay
        runner.call("t.again", _request(), [], "mq")
    assert info.value.consume and info.value.countdown is None
    with pytest.raises(KeyError):  # self.retry(exc=e): e, Machinery's RetryCount rules
        runner.call("t.again_exc", _request(), [], "mq")
    assert app.tasks["t.whoami"].request.id is None  # the request was popped


def test_what_a_prefork_child_sends_back() -> None:
    app = _celery()
    context = {"id": "task_7", "retries": 1, "headers": {}, "group": None,
               "delivery_info": {"routing_key": "mq"}}
    previous = current_app._get_current_object()
    app.set_current()  # what a prefork child's initializer does
    try:
        _child_outcomes(context)
    finally:
        previous.set_current()


def _child_outcomes(context: dict[str, Any]) -> None:
    assert run_in_child("t.whoami", context, []) == (True, "task_7 1 mq")
    ok, err = run_in_child("t.fail", context, ["boom"])
    assert not ok and isinstance(err, PoolTaskError) and str(err) == "boom"
    assert err.kind == "builtins.ValueError" and "raise ValueError(text)" in err.__notes__[0]
    back = pickle.loads(pickle.dumps(err))  # what billiard does with it
    assert str(back) == "boom" and back.kind == err.kind and back.__notes__ == err.__notes__
    ok, again = run_in_child("t.again_exc", context, [])  # self.retry(exc=KeyError)
    assert not ok and isinstance(again, PoolTaskError) and again.kind == "builtins.KeyError"
    ok, retry = run_in_child("t.again", {**context, "retries": 0}, [])
    assert not ok and isinstance(retry, Retry) and retry.consume
    assert pickle.loads(pickle.dumps(retry)).consume


def test_a_lost_prefork_child_fails_the_task_with_its_text() -> None:
    try:  # what billiard's mark_as_worker_lost hands the error callback
        raise WorkerLostError("Worker exited prematurely: signal 9 (SIGKILL) Job: 0.")
    except WorkerLostError:
        einfo = ExceptionInfo()
    lost = _lost(einfo)
    assert isinstance(lost, WorkerLostError)
    assert str(lost) == "Worker exited prematurely: signal 9 (SIGKILL) Job: 0."


def test_a_hard_time_limit_fails_the_task_saying_so() -> None:
    try:  # what billiard's on_hard_timeout hands the error callback
        raise TimeLimitExceeded(2)
    except TimeLimitExceeded:
        einfo = ExceptionInfo()
    lost = _lost(einfo)
    assert isinstance(lost, PoolTaskError) and str(lost) == "Hard time limit (2s) exceeded"


def test_a_pool_refusing_the_task_means_retry_later() -> None:
    pool = ThreadPool(limit=1)
    pool.start()
    pool.stop()  # its executor refuses new work
    with pytest.raises(Retry, match=r"refused task t\.add") as info:
        PoolRunner(_celery(), pool).call("t.add", _request(), [1], "mq")
    assert info.value.countdown == 1.0 and not info.value.consume


def test_step_consumes_a_machinery_queue_into_the_pool(thread_pool: Any) -> None:
    url = f"memory://bridge_step_{next(_serial)}"
    app = _celery()
    install(app, Machinery(url, url), queue="mq",
            tasks={"add": "t.add", "fail": "t.fail", "again": "t.again", "whoami": "t.whoami"},
            worker_options={"poll_timeout": 0.05})
    producer = Machinery(url, url, default_queue="mq")
    step = MachineryBridgeStep(SimpleNamespace())
    consumer = SimpleNamespace(app=app, pool=thread_pool)  # what the step reads of Celery's
    step.start(consumer)
    try:
        assert producer.send_task("add", [20, 22]).get(timeout=10) == 42
        with pytest.raises(TaskFailed, match="boom"):
            producer.send_task("fail", ["boom"]).get(timeout=10)
        sent = producer.send_task("whoami")
        assert sent.get(timeout=10) == f"{sent.id} 0 mq"
        assert producer.send_task("again", retry_count=1).get(timeout=15) == "retried 1"
        failed = producer.send_task("again").get(timeout=10, propagate=False)  # none left
        assert isinstance(failed, TaskFailed) and str(failed) == "Task again retried too many times"
        callback = producer.signature("add", [10], queue="mq", task_id=f"task_cb_{next(_serial)}")
        assert producer.send_task("add", [1, 2], link=callback).get(timeout=10) == 3
        assert producer.AsyncResult(callback.options["task_id"]).get(timeout=10) == 13
        worker = step.worker
        assert worker is not None and worker.concurrency == 2
        step.stop(consumer)
        step.start(consumer)  # a consumer restart: a new worker, the same tasks
        assert step.worker is not worker
        assert producer.send_task("add", [1]).get(timeout=10) == 1
        assert worker.outcomes["run"] == 8  # add, fail, whoami, again x2, again, add, link
    finally:
        step.stop(consumer)
        producer.close()


def test_machinery_send_and_go_task() -> None:
    url = f"memory://bridge_send_{next(_serial)}"
    app = _celery()
    install(app, Machinery(url, url), queue="mq")
    sent = machinery_send(app, "add", [1, 2], routing_key="go_q")
    assert [s.uuid for s in bridge_of(app).machinery.broker.pending_tasks("go_q")] == [sent.id]
    sig = go_task(app, "add", 1, routing_key="go_q", timeout=5)
    assert sig.task == CALL_TASK and sig.kwargs == {
        "name": "add", "args": [1], "timeout": 5, "options": {"routing_key": "go_q"}}
    worker = Machinery(url, url)
    worker.register_task("add", lambda *n: sum(n))
    with worker.worker(concurrency=1, queue="go_q", poll_timeout=0.05):
        assert sent.get(timeout=10) == 3
        assert app.tasks[CALL_TASK](10, **sig.kwargs) == 11  # the previous result appended
