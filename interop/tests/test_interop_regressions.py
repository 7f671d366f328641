"""Regression tests for machinery_compat bugs the interop matrix exposed (no Go needed).

* A task raising a BaseException (``sys.exit(msg)``, a custom ``BaseException``) killed the
  worker's pool thread: the task stayed STARTED forever (a Go producer's ``Get`` waited
  until its timeout) and after ``concurrency`` such tasks the worker ran nothing more.
  Go's worker recovers every panic into a FAILURE; so must the Python worker.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

from interop.tests.pyapp import make_app
from machinery_compat import TaskFailed

pytestmark = [pytest.mark.interop, pytest.mark.redis]


class Panic(BaseException):
    pass


def test_base_exception_in_task_is_a_failure_and_the_pool_survives(
    new_db: Callable[[], str],
) -> None:
    py = make_app(new_db(), "q_regress_base_exc", only={"add"})
    app = py.app

    @app.task(name="exit_task")
    def exit_task(msg: str) -> int:
        sys.exit(msg)

    @app.task(name="base_exc")
    def base_exc() -> int:
        raise Panic()

    concurrency = 2
    worker = app.worker(concurrency=concurrency, poll_timeout=0.1).start()
    try:
        # more BaseException tasks than pool threads: none may take a thread down
        exits = [app.send_task("exit_task", args=[f"bye {i}"]) for i in range(concurrency + 1)]
        bare = app.send_task("base_exc")
        for i, res in enumerate(exits):
            with pytest.raises(TaskFailed) as info:
                res.get(timeout=5)
            assert info.value.error == f"bye {i}"
        with pytest.raises(TaskFailed) as info:
            bare.get(timeout=5)
        assert info.value.error == "Panic"  # no message: the type name, like an empty Go error
        assert app.send_task("add", args=[1, 2]).get(timeout=5) == 3
        pool = [t for t in worker._threads if t.name.startswith("mc-worker-")]
        assert len(pool) == concurrency and all(t.is_alive() for t in pool)
    finally:
        worker.stop(timeout=10)
        py.close()
