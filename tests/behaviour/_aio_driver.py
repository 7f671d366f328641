"""The producer side of the behaviour tests, through the sync API or through ``app.aio``.

Behaviour tests marked ``both_apis`` take the ``producer`` fixture and send and read through
it; they run twice on the kinds :data:`AIO_KINDS`: once with ``producer_api="sync"``
(``app.send_task``, ``sig.apply_async()``, ``app.AsyncResult``: the sync objects themselves)
and once with ``producer_api="aio"``: every send and every read is ``app.aio``'s, awaited on
one event loop running in a helper thread (:class:`~machinery_compat.aio.worker.LoopThread`,
the asyncio pool's), and the awaitable results are seen through :class:`ResultView`, which
offers the sync result's interface (``id``, ``state``, ``get``, ``ready``, ``results``,
``callback``, ...) by awaiting the matching coroutine on that loop.  So one test body checks
both APIs against the same expectations; nothing of a test is copied.

The aio variant's workers use the asyncio pool: ``start_worker`` gets ``pool="asyncio"`` and
first turns the app's plain tasks into ``async def`` ones (:func:`as_coroutines`), so the
tasks of those tests run as coroutines on the pool's loop.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from machinery_compat import Machinery
from machinery_compat.aio import AioChainResult, AioChordResult, AioGroupResult, AioResult
from machinery_compat.aio.worker import LoopThread
from machinery_compat.protocol import FAILURE, SUCCESS, Signature

#: the kinds where ``both_apis`` tests also run through ``app.aio`` (its brokers: Redis and
#: AMQP; its result backends: Redis and AMQP; Redis Sentinel, with wait_replicas)
AIO_KINDS = ("redis", "amqp+redis", "amqp", "redis-sentinel")
PRODUCER_APIS = ("sync", "aio")


class SyncProducer:
    """The sync API, as the tests always used it."""

    api = "sync"

    def __init__(self, app: Machinery) -> None:
        self.app = app

    def send_task(self, name: str, args: Sequence[Any] = (),
                  kwargs: Mapping[str, Any] | None = None, **options: Any) -> Any:
        return self.app.send_task(name, args=args, kwargs=kwargs, **options)

    def apply_async(self, target: Any, **options: Any) -> Any:
        return target.apply_async(**options)

    def send_group(self, members: Sequence[Signature], send_concurrency: int = 0) -> Any:
        return self.app.send_group(members, send_concurrency)

    def AsyncResult(self, task_id: str) -> Any:
        return self.app.AsyncResult(task_id)

    def close(self) -> None:
        """Nothing to close (the app is the test's)."""


class AioProducer:
    """``app.aio`` awaited on a loop of its own, its results behind :class:`ResultView`."""

    api = "aio"

    def __init__(self, app: Machinery) -> None:
        self.app = app
        self.loop = LoopThread("behaviour-aio")
        self.loop.start()

    def run(self, coro: Any) -> Any:
        return self.loop.run(coro)

    def send_task(self, name: str, args: Sequence[Any] = (),
                  kwargs: Mapping[str, Any] | None = None, **options: Any) -> ResultView:
        return ResultView(self, self.run(self.app.aio.send_task(name, args, kwargs, **options)))

    def apply_async(self, target: Any, **options: Any) -> ResultView:
        return ResultView(self, self.run(self.app.aio.apply_async(target, **options)))

    def send_group(self, members: Sequence[Signature], send_concurrency: int = 0) -> ResultView:
        return ResultView(self, self.run(self.app.aio.send_group(members, send_concurrency)))

    def AsyncResult(self, task_id: str) -> ResultView:
        return ResultView(self, self.app.aio.AsyncResult(task_id))

    def close(self) -> None:
        try:
            self.run(self.app.aio.close())
        finally:
            self.loop.stop(5.0)


class ResultView:
    """An :class:`AioResult` / group / chain / chord result with the sync result's methods."""

    def __init__(self, producer: AioProducer, target: Any) -> None:
        self._p = producer
        self.target = target

    @property
    def id(self) -> str:
        return str(self.target.id)

    def get(self, timeout: float | None = None, interval: float = 0.05,
            propagate: bool = True) -> Any:
        return self._p.run(self.target.get(timeout=timeout, interval=interval,
                                           propagate=propagate))

    def _members(self) -> list[AioResult]:
        t = self.target
        if isinstance(t, AioResult):
            return [t]
        if isinstance(t, AioChordResult):
            return t.group.results
        return list(t.results)

    @property
    def results(self) -> Any:
        """Members (group, chord), steps (chain), or one task's typed results."""
        if isinstance(self.target, AioResult):
            return self._p.run(self.target.results())
        return [ResultView(self._p, r) for r in self._members()]

    @property
    def callback(self) -> ResultView:
        assert isinstance(self.target, AioChordResult), self.target
        return ResultView(self._p, self.target.callback)

    def _states(self) -> list[str]:
        async def states() -> list[str]:
            return [await r.state() for r in self._members()]

        return list(self._p.run(states()))

    @property
    def state(self) -> str:
        t = self.target
        if isinstance(t, AioChainResult):
            return ResultView(self._p, t.results[-1]).state
        if isinstance(t, AioChordResult):
            return ResultView(self._p, t.callback).state
        assert isinstance(t, AioResult), t
        return str(self._p.run(t.state()))

    status = state

    @property
    def error(self) -> str | None:
        assert isinstance(self.target, AioResult), self.target
        st = self._p.run(self.target.task_state())
        return st.error if st is not None and st.state == FAILURE else None

    def ready(self) -> bool:
        t = self.target
        if isinstance(t, AioChainResult):
            return ResultView(self._p, t.results[-1]).ready()
        if isinstance(t, AioChordResult):
            return ResultView(self._p, t.callback).ready()
        if isinstance(t, AioGroupResult):
            return bool(self._p.run(t.ready()))
        return bool(self._p.run(t.ready()))

    def completed_count(self) -> int:
        assert isinstance(self.target, AioGroupResult), self.target
        return int(self._p.run(self.target.completed_count()))

    def successful(self) -> bool:
        return all(s == SUCCESS for s in self._states())

    def failed(self) -> bool:
        return any(s == FAILURE for s in self._states())

    def __len__(self) -> int:
        return len(self._members())

    def __repr__(self) -> str:
        return f"<ResultView {self.target!r}>"


def as_coroutines(app: Machinery) -> None:
    """Turn ``app``'s plain (not ``bind=True``) tasks into ``async def`` ones that yield to the
    loop once and then call the function: the asyncio pool runs them on its loop (a plain
    pool would store the coroutine object as the result, and the test fails)."""
    for task in app.tasks.values():
        fn = task.fn
        if task.bind or inspect.iscoroutinefunction(fn):
            continue
        task.fn = _on_loop(fn)


def _on_loop(fn: Any) -> Any:
    @functools.wraps(fn)  # keeps the signature: argument types are read from it
    async def run(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0)
        return fn(*args, **kwargs)

    return run


def make_producer(app: Machinery, api: str) -> SyncProducer | AioProducer:
    if api == "aio":
        return AioProducer(app)
    if api == "sync":
        return SyncProducer(app)
    raise ValueError(f"producer_api: 'sync' or 'aio', not {api!r}")


#: what the ``producer`` fixture gives
Producer = SyncProducer | AioProducer
