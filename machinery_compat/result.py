"""AsyncResult: poll a task's state through the result backend (Celery-shaped).

``get()`` returns the task's single result, a tuple for several, ``None`` for none
(a Go task returning only ``error``); a FAILURE raises :class:`TaskFailed` with the
error text the worker stored, unless ``propagate=False``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .exceptions import ResultTimeout, TaskFailed
from .protocol import FAILURE, PENDING, SUCCESS, TaskResult, TaskState

if TYPE_CHECKING:
    from .backends.base import Backend


class AsyncResult:
    """The result of one task, identified by its UUID."""

    def __init__(self, task_id: str, backend: Backend, task_name: str = "") -> None:
        self.id = task_id
        self.backend = backend
        self.task_name = task_name
        self._cache: TaskState | None = None

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
        st = self.task_state()
        return st is not None and st.ready

    def successful(self) -> bool:
        return self.state == SUCCESS

    def failed(self) -> bool:
        return self.state == FAILURE

    @property
    def results(self) -> list[TaskResult] | None:
        """The typed results (Go type name + value) once SUCCESS, else ``None``."""
        st = self.task_state()
        return st.results if st is not None and st.state == SUCCESS else None

    @property
    def error(self) -> str | None:
        st = self.task_state()
        return st.error if st is not None and st.state == FAILURE else None

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
                raise ResultTimeout(self.id, timeout or 0.0, st.state if st else None)
            time.sleep(sleep)
            sleep = min(sleep * 2, interval)

    def get(self, timeout: float | None = None, interval: float = 0.05, propagate: bool = True) -> Any:
        """Wait and return the value(s); see the module docstring."""
        st = self.wait_state(timeout, interval)
        if st.state == FAILURE:
            err = TaskFailed(self.id, st.error, st.task_name or self.task_name)
            if propagate:
                raise err
            return err
        values = st.python_results()
        if not values:
            return None
        if len(values) == 1:
            return values[0]
        return tuple(values)

    def forget(self) -> None:
        """Delete the stored state."""
        self.backend.purge_state(self.id)
        self._cache = None

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
        return all(r.ready() for r in self.results)

    def completed_count(self) -> int:
        """How many members finished (SUCCESS or FAILURE), like Machinery's GroupCompleted."""
        return sum(1 for r in self.results if r.ready())

    def successful(self) -> bool:
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
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
        return self.results[-1].id

    @property
    def state(self) -> str:
        return self.results[-1].state

    def ready(self) -> bool:
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
        return self.callback.id

    @property
    def results(self) -> list[AsyncResult]:
        return self.group.results

    def ready(self) -> bool:
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
