"""AsyncResult: poll a task's state through the result backend (Celery-shaped).

``get()`` (alias ``wait()``) returns the task's single result, a tuple for several, ``None``
for none (a Go task returning only ``error``); a FAILURE raises :class:`TaskFailed` with the
error text the worker stored, unless ``propagate=False`` (then it is returned).

When a Python worker ran the failed task, the TaskFailed also carries the exception's class
name, module and traceback (``exc_type``, ``exc_module``, ``traceback``), read from the record
stored beside the state (``<task UUID>.exc``, see :mod:`machinery_compat.backends.base`), and
is also an instance of the original exception class when that class is already imported here
(``except ZeroDivisionError:`` works; see :func:`~machinery_compat.exceptions.task_failed`).
A Go worker writes no such record: ``exc_type`` and ``traceback`` are then ``None``.

As in Celery, an id nobody knows reads as PENDING (``state``, and the ``ResultTimeout``
message of ``get(timeout=...)``); ``result``/``info`` are the value (or the TaskFailed) once
the task is ready, else ``None``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .exceptions import ResultTimeout, TaskFailed, task_failed
from .protocol import FAILURE, PENDING, SUCCESS, TaskResult, TaskState

if TYPE_CHECKING:
    from .backends.base import Backend, ExceptionRecord


class AsyncResult:
    """The result of one task, identified by its UUID."""

    def __init__(self, task_id: str, backend: Backend, task_name: str = "") -> None:
        self.id = task_id
        self.backend = backend
        self.task_name = task_name
        self._cache: TaskState | None = None
        #: (the FAILURE state it was read for, its exception record or None)
        self._record: tuple[TaskState, ExceptionRecord | None] | None = None

    @property
    def task_id(self) -> str:
        """The task's UUID (Celery's name for ``id``)."""
        return self.id

    # -- state --------------------------------------------------------------------------
    def task_state(self) -> TaskState | None:
        """The stored TaskState (cached once SUCCESS/FAILURE), or ``None`` if absent."""
        if self._cache is not None:
            return self._cache
        st = self.backend.get_state(self.id)
        if st is not None and st.ready:
            self._cache = st
        return st

    @property
    def state(self) -> str:
        """PENDING, RECEIVED, STARTED, RETRY, SUCCESS or FAILURE (PENDING when unknown)."""
        st = self.task_state()
        return st.state if st is not None and st.state else PENDING

    status = state

    def ready(self) -> bool:
        """Whether the task finished (SUCCESS or FAILURE)."""
        st = self.task_state()
        return st is not None and st.ready

    def successful(self) -> bool:
        """Whether the task finished in SUCCESS."""
        return self.state == SUCCESS

    def failed(self) -> bool:
        """Whether the task finished in FAILURE."""
        return self.state == FAILURE

    @property
    def results(self) -> list[TaskResult] | None:
        """The typed results (Go type name + value) once SUCCESS, else ``None``."""
        st = self.task_state()
        return st.results if st is not None and st.state == SUCCESS else None

    @property
    def error(self) -> str | None:
        """The stored error text once FAILURE (exactly what the worker wrote), else ``None``."""
        st = self.task_state()
        return st.error if st is not None and st.state == FAILURE else None

    @property
    def result(self) -> Any:
        """The value as :meth:`get` returns it once SUCCESS, the :class:`TaskFailed` once
        FAILURE, ``None`` before (Celery's ``AsyncResult.result``)."""
        st = self.task_state()
        if st is None or not st.ready:
            return None
        return self._outcome(st)

    info = result

    @property
    def traceback(self) -> str | None:
        """The traceback text a Python worker recorded for a FAILURE; ``None`` otherwise (not
        failed, a Go worker ran it, or the backend keeps no record)."""
        st = self.task_state()
        if st is None or st.state != FAILURE:
            return None
        record = self._exception_record(st)
        return record.traceback if record is not None else None

    def _exception_record(self, st: TaskState) -> ExceptionRecord | None:
        """The record stored beside this FAILURE state, if it belongs to it (read once)."""
        if self._record is not None and self._record[0] is st:
            return self._record[1]
        record = self.backend.get_exception_record(self.id)
        if record is not None and record.error != st.error:
            record = None  # left over from an earlier run of this UUID
        self._record = (st, record)
        return record

    def _failure(self, st: TaskState) -> TaskFailed:
        record = self._exception_record(st)
        name = st.task_name or self.task_name
        if record is None:
            return TaskFailed(self.id, st.error, name)
        return task_failed(self.id, st.error, name, exc_type=record.exc_type,
                           exc_module=record.exc_module, exc_qualname=record.exc_qualname,
                           traceback=record.traceback)

    def _outcome(self, st: TaskState) -> Any:
        """What a ready state gives: the TaskFailed, or the value(s)."""
        if st.state == FAILURE:
            return self._failure(st)
        values = st.python_results()
        if not values:
            return None
        if len(values) == 1:
            return values[0]
        return tuple(values)

    # -- waiting ------------------------------------------------------------------------
    def wait_state(self, timeout: float | None = None, interval: float = 0.05) -> TaskState:
        """Poll until SUCCESS or FAILURE; :class:`ResultTimeout` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        sleep = min(0.005, interval)
        while True:
            st = self.task_state()
            if st is not None and st.ready:
                return st
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeout(self.id, timeout or 0.0,
                                    st.state if st is not None and st.state else PENDING)
            time.sleep(sleep)
            sleep = min(sleep * 2, interval)

    def get(self, timeout: float | None = None, interval: float = 0.05, propagate: bool = True) -> Any:
        """Wait and return the value(s); see the module docstring."""
        outcome = self._outcome(self.wait_state(timeout, interval))
        if propagate and isinstance(outcome, TaskFailed):
            raise outcome
        return outcome

    def wait(self, timeout: float | None = None, interval: float = 0.05,
             propagate: bool = True) -> Any:
        """:meth:`get` (Celery's older name)."""
        return self.get(timeout=timeout, interval=interval, propagate=propagate)

    def forget(self) -> None:
        """Delete the stored state and the exception record beside it."""
        self.backend.purge_state(self.id)
        self._cache = None
        self._record = None

    def __repr__(self) -> str:
        return f"<AsyncResult {self.task_name or 'task'}[{self.id}]>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)


class GroupResult:
    """The results of a group's members, in the order they were given."""

    def __init__(self, group_id: str, results: list[AsyncResult]) -> None:
        self.id = group_id
        self.results = results

    def ready(self) -> bool:
        """Whether every member finished."""
        return all(r.ready() for r in self.results)

    def completed_count(self) -> int:
        """How many members finished (SUCCESS or FAILURE), like Machinery's GroupCompleted."""
        return sum(1 for r in self.results if r.ready())

    def successful(self) -> bool:
        """Whether every member finished in SUCCESS."""
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        """Whether any member finished in FAILURE."""
        return any(r.failed() for r in self.results)

    def get(self, timeout: float | None = None, interval: float = 0.05,
            propagate: bool = True) -> list[Any]:
        """Every member's value, in order; the first FAILURE raises unless ``propagate=False``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out = []
        for r in self.results:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            out.append(r.get(timeout=left, interval=interval, propagate=propagate))
        return out

    def __iter__(self) -> Any:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} ({len(self.results)} tasks)>"


class ChainResult:
    """The results of a chain's steps; ``get()`` is the last step's value (Go's ChainAsyncResult)."""

    def __init__(self, results: list[AsyncResult]) -> None:
        self.results = results

    @property
    def id(self) -> str:
        """The last step's task UUID."""
        return self.results[-1].id

    @property
    def state(self) -> str:
        """The last step's state."""
        return self.results[-1].state

    def ready(self) -> bool:
        """Whether the last step finished, or a step failed (later steps never run)."""
        return self.results[-1].ready() or any(r.failed() for r in self.results)

    def get(self, timeout: float | None = None, interval: float = 0.05,
            propagate: bool = True) -> Any:
        """Wait for each step in order; a failed step raises (later steps never run)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        value: Any = None
        for r in self.results:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            value = r.get(timeout=left, interval=interval, propagate=propagate)
            if isinstance(value, TaskFailed):
                return value
        return value

    def __repr__(self) -> str:
        return f"<ChainResult {' | '.join(r.task_name or r.id for r in self.results)}>"


class ChordResult:
    """A chord: its members' GroupResult and the callback's AsyncResult; ``get()`` = callback value."""

    def __init__(self, group: GroupResult, callback: AsyncResult) -> None:
        self.group = group
        self.callback = callback

    @property
    def id(self) -> str:
        """The callback's task UUID."""
        return self.callback.id

    @property
    def results(self) -> list[AsyncResult]:
        """The members' AsyncResults, in order."""
        return self.group.results

    def ready(self) -> bool:
        """Whether the callback finished, or a member failed (the callback never runs)."""
        return self.callback.ready() or self.group.failed()

    def get(self, timeout: float | None = None, interval: float = 0.05,
            propagate: bool = True) -> Any:
        """Wait for every member (a failed member raises: the callback never runs), then the callback."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = self.group.get(timeout=timeout, interval=interval, propagate=propagate)
        failed = next((v for v in values if isinstance(v, TaskFailed)), None)
        if failed is not None:
            return failed
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self.callback.get(timeout=left, interval=interval, propagate=propagate)

    def __repr__(self) -> str:
        return f"<ChordResult {self.callback.id} ({len(self.group)} members)>"
