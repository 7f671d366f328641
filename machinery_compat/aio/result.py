"""Awaitable results of :mod:`machinery_compat.aio` (the async side of :mod:`~machinery_compat.result`).

``await result.get(timeout=10)`` returns what the sync ``AsyncResult.get`` returns (the value,
a tuple for several, ``None`` for none; a FAILURE raises :class:`~machinery_compat.exceptions.
TaskFailed`, carrying a Python worker's exception record); ``await result.state()`` is
PENDING for an unknown id; ``async for st in result.states():`` yields every new state until
SUCCESS or FAILURE (what a web handler streams).  Polling sleeps with ``asyncio.sleep``,
never blocking the loop.  The outcome is computed by the sync :class:`~machinery_compat.result.
AsyncResult` code from the state read here: one logic for both APIs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..exceptions import ResultTimeout, TaskFailed
from ..protocol import FAILURE, PENDING, SUCCESS, TaskResult, TaskState
from ..result import AsyncResult

if TYPE_CHECKING:
    from ..backends.base import ExceptionRecord
    from .app import AsyncMachinery


class AioResult:
    """The result of one task, identified by its UUID, read with ``await``."""

    def __init__(self, task_id: str, aio: AsyncMachinery, task_name: str = "") -> None:
        self.id = task_id
        self.aio = aio
        self.task_name = task_name
        self._cache: TaskState | None = None

    @property
    def task_id(self) -> str:
        return self.id

    async def task_state(self) -> TaskState | None:
        """The stored TaskState (cached once SUCCESS/FAILURE), or ``None`` if absent."""
        if self._cache is not None:
            return self._cache
        st = await (await self.aio._result_backend()).get_state(self.id)
        if st is not None and st.ready:
            self._cache = st
        return st

    async def state(self) -> str:
        """PENDING, RECEIVED, STARTED, RETRY, SUCCESS or FAILURE (PENDING when unknown)."""
        st = await self.task_state()
        return st.state if st is not None and st.state else PENDING

    async def ready(self) -> bool:
        st = await self.task_state()
        return st is not None and st.ready

    async def successful(self) -> bool:
        return await self.state() == SUCCESS

    async def failed(self) -> bool:
        return await self.state() == FAILURE

    async def results(self) -> list[TaskResult] | None:
        """The typed results (Go type name + value) once SUCCESS, else ``None``."""
        st = await self.task_state()
        return st.results if st is not None and st.state == SUCCESS else None

    async def states(self, timeout: float | None = None,
                     interval: float = 0.05) -> AsyncIterator[TaskState]:
        """Each new state (PENDING, RECEIVED, STARTED, RETRY…) as it is seen, ending with the
        SUCCESS or FAILURE one; :class:`ResultTimeout` after ``timeout`` seconds.  A state
        that lasted less than ``interval`` may be skipped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: str | None = None
        sleep = min(0.005, interval)
        while True:
            st = await self.task_state()
            shown = st.state if st is not None and st.state else PENDING
            if shown != last:
                last = shown
                yield st if st is not None else TaskState(self.id, PENDING)
            if st is not None and st.ready:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeout(self.id, timeout or 0.0, shown)
            await asyncio.sleep(sleep)
            sleep = min(sleep * 2, interval)

    async def wait_state(self, timeout: float | None = None, interval: float = 0.05) -> TaskState:
        """Poll until SUCCESS or FAILURE; :class:`ResultTimeout` after ``timeout`` seconds."""
        final: TaskState | None = None
        async for st in self.states(timeout, interval):
            final = st
        assert final is not None
        return final

    async def _outcome(self, st: TaskState) -> Any:
        record: ExceptionRecord | None = None
        if st.state == FAILURE:
            record = await (await self.aio._result_backend()).get_exception_record(self.id)
            if record is not None and record.error != st.error:
                record = None  # left over from an earlier run of this UUID
        sync = AsyncResult(self.id, self.aio.app.backend, self.task_name)
        sync._record = (st, record)  # read above: the sync code does no I/O
        return sync._outcome(st)

    async def get(self, timeout: float | None = None, interval: float = 0.05,
                  propagate: bool = True) -> Any:
        """Wait and return the value(s), as the sync ``AsyncResult.get``."""
        outcome = await self._outcome(await self.wait_state(timeout, interval))
        if propagate and isinstance(outcome, TaskFailed):
            raise outcome
        return outcome

    async def forget(self) -> None:
        """Delete the stored state and the exception record beside it."""
        await (await self.aio._result_backend()).purge_state(self.id)
        self._cache = None

    def __repr__(self) -> str:
        return f"<AioResult {self.task_name or 'task'}[{self.id}]>"


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class AioGroupResult:
    """A group's member results, in order; ``await get()`` gives every value."""

    def __init__(self, group_id: str, results: list[AioResult]) -> None:
        self.id = group_id
        self.results = results

    async def completed_count(self) -> int:
        return sum([await r.ready() for r in self.results])

    async def ready(self) -> bool:
        return await self.completed_count() == len(self.results)

    async def get(self, timeout: float | None = None, interval: float = 0.05,
                  propagate: bool = True) -> list[Any]:
        """Every member's value in order; the first FAILURE raises unless ``propagate=False``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return [await r.get(timeout=_left(deadline), interval=interval, propagate=propagate)
                for r in self.results]

    def __len__(self) -> int:
        return len(self.results)

    def __repr__(self) -> str:
        return f"<AioGroupResult {self.id} ({len(self.results)} tasks)>"


class AioChainResult:
    """A chain's step results; ``await get()`` is the last step's value."""

    def __init__(self, results: list[AioResult]) -> None:
        self.results = results

    @property
    def id(self) -> str:
        return self.results[-1].id

    async def get(self, timeout: float | None = None, interval: float = 0.05,
                  propagate: bool = True) -> Any:
        """Each step in order; a failed step raises (later steps never run)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        value: Any = None
        for r in self.results:
            value = await r.get(timeout=_left(deadline), interval=interval, propagate=propagate)
            if isinstance(value, TaskFailed):
                return value
        return value


class AioChordResult:
    """A chord's members and callback; ``await get()`` is the callback's value."""

    def __init__(self, group: AioGroupResult, callback: AioResult) -> None:
        self.group = group
        self.callback = callback

    @property
    def id(self) -> str:
        return self.callback.id

    async def get(self, timeout: float | None = None, interval: float = 0.05,
                  propagate: bool = True) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        values = await self.group.get(timeout=timeout, interval=interval, propagate=propagate)
        failed = next((v for v in values if isinstance(v, TaskFailed)), None)
        if failed is not None:
            return failed
        return await self.callback.get(timeout=_left(deadline), interval=interval,
                                       propagate=propagate)
