"""``worker --pool asyncio``: ``async def`` tasks on one event loop, ``concurrency`` at once.

:class:`AsyncioWorker` is the threaded :class:`~machinery_compat.worker.Worker` — the same
consumer, state machine (RECEIVED → STARTED → SUCCESS | FAILURE | RETRY, Go's bytes),
retries, callbacks, chord trigger, crash-safe processing lists and exactly-one settlement
per message — with one difference: a task whose call returns an awaitable (an ``async def``
task) is run on the worker's single event loop, in a thread of its own, while the pool
thread that took the message waits for it.  ``concurrency`` coroutines run at once on that
loop (default :data:`DEFAULT_CONCURRENCY`); plain ``def`` tasks of the same app still run
in the pool's threads.  Nothing about a message's path differs from the threaded pool,
because it is that code.

.. code-block:: python

    @app.task(name="fetch")
    async def fetch(url: str) -> int:
        async with httpx.AsyncClient() as client:
            return (await client.get(url)).status_code

    app.worker(pool="asyncio", concurrency=100).run()    # machinery-compat worker -P asyncio

Limits: a ``bind=True`` async task cannot read ``self.request`` (it is set for the call that
creates the coroutine only; ``self.retry()`` works); the loop is shared, so an ``async def``
task that blocks (``time.sleep``, sync I/O) stalls every other async task; a task that
outlives :meth:`~machinery_compat.worker.Worker.stop`'s timeout keeps running on the loop,
its message unsettled (re-queued after a crash, as with threads).  Signals get the task as
a thin wrapper with the task's attributes: filter receivers by name (``sender="fetch"``),
not by the task object (signals compare objects by identity).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from ..worker import Worker

if TYPE_CHECKING:
    from ..app import Machinery
    from ..brokers.base import Delivery
    from ..protocol import Signature
    from ..task import Task
    from ..worker.lookahead import Ahead
    from ..worker.worker import RunningTask

#: concurrent ``async def`` tasks when ``concurrency`` is not given
DEFAULT_CONCURRENCY = 64


class LoopThread:
    """One event loop running in a daemon thread; :meth:`run` from any other thread."""

    def __init__(self, name: str = "mc-asyncio") -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self.loop = loop
            ready.set()
            try:
                loop.run_forever()
            finally:
                _cancel_all(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=main, name=self.name, daemon=True)
        self._thread.start()
        ready.wait()

    def run(self, awaitable: Awaitable[Any]) -> Any:
        """Run ``awaitable`` on the loop and wait for its value (its exception is raised)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the asyncio pool's event loop is not running")

        async def wrapped() -> Any:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wrapped(), loop).result()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the loop (cancelling what still runs on it) and wait for its thread."""
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in tasks:
        t.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


class _OnLoop:
    """A registered task whose awaitable results are run on the worker's loop; every other
    attribute is the task's."""

    __slots__ = ("_loop", "_task")

    def __init__(self, task: Task[Any, Any], loop: LoopThread) -> None:
        self._task = task
        self._loop = loop

    def run(self, sig: Signature, args: list[Any]) -> Any:
        value = self._task.run(sig, args)
        if inspect.isawaitable(value):
            return self._loop.run(value)
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)

    def __repr__(self) -> str:
        return f"<{self._task!r} on the asyncio pool>"


class AsyncioWorker(Worker):
    """A :class:`~machinery_compat.worker.Worker` running ``async def`` tasks on one loop
    (build it with ``app.worker(pool="asyncio", ...)``)."""

    def __init__(self, app: Machinery, *, concurrency: int = 0, **options: Any) -> None:
        super().__init__(app, concurrency=concurrency if concurrency > 0 else DEFAULT_CONCURRENCY,
                         **options)
        self.loop_thread = LoopThread()

    def start(self) -> AsyncioWorker:
        self.loop_thread.start()
        try:
            super().start()
        except BaseException:
            self.loop_thread.stop(5.0)
            raise
        return self

    def process(self, sig: Signature, task: Task[Any, Any], *,
                delivery: Delivery | None = None, ahead: Ahead | None = None) -> None:
        wrapped: Any = _OnLoop(task, self.loop_thread)
        super().process(sig, wrapped, delivery=delivery, ahead=ahead)

    def stop(self, timeout: float | None = None) -> list[RunningTask]:
        still = super().stop(timeout)
        if not still:  # else they go on, on the loop, as threads would (see the module doc)
            self.loop_thread.stop(5.0)
        return still
