"""The result-backend interface.

The worker writes states through the ``set_state_*`` methods; each backend implements
Machinery's merge rules for its store.  :meth:`Backend.mark_received_started` and
:meth:`Backend.finish` exist so that a backend can batch writes into fewer round trips
(the Redis backend does); their defaults call the single-state methods in order.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from ..protocol import (
    FAILURE,
    PENDING,
    RECEIVED,
    RETRY,
    STARTED,
    SUCCESS,
    GoTime,
    GroupMeta,
    Signature,
    TaskResult,
    TaskState,
)

DEFAULT_RESULTS_EXPIRE_IN = 3600


class Backend(abc.ABC):
    """Base class of every result backend."""

    schemes: tuple[str, ...] = ()

    def __init__(self, results_expire_in: int = 0) -> None:
        self.expire_in = results_expire_in or DEFAULT_RESULTS_EXPIRE_IN

    # -- state writes -------------------------------------------------------------------
    @abc.abstractmethod
    def set_state(self, state: TaskState, *, merge: bool) -> None:
        """Store one state; ``merge`` keeps TaskName/CreatedAt of the stored state (§6.1)."""

    def set_state_pending(self, sig: Signature) -> None:
        self.set_state(pending_state(sig), merge=False)

    def set_state_received(self, sig: Signature) -> None:
        self.set_state(TaskState(sig.uuid, RECEIVED), merge=True)

    def set_state_started(self, sig: Signature) -> None:
        self.set_state(TaskState(sig.uuid, STARTED), merge=True)

    def set_state_retry(self, sig: Signature) -> None:
        self.set_state(TaskState(sig.uuid, RETRY), merge=True)

    def set_state_success(self, sig: Signature, results: list[TaskResult]) -> None:
        self.set_state(TaskState(sig.uuid, SUCCESS, results=results), merge=True)

    def set_state_failure(self, sig: Signature, error: str) -> None:
        self.set_state(TaskState(sig.uuid, FAILURE, error=error), merge=True)

    def mark_received_started(self, sig: Signature) -> Any:
        """RECEIVED then STARTED (one round trip where the store allows).

        Returns an opaque token that :meth:`set_final_state` may use to skip re-reading
        the stored state (``None`` when the backend has no use for one).
        """
        self.set_state_received(sig)
        self.set_state_started(sig)
        return None

    def set_final_state(self, state: TaskState, token: Any = None) -> None:
        """Write SUCCESS/FAILURE/RETRY after :meth:`mark_received_started` (merging)."""
        self.set_state(state, merge=True)

    # -- reads --------------------------------------------------------------------------
    @abc.abstractmethod
    def get_state(self, task_uuid: str) -> TaskState | None:
        """The stored state, or ``None`` if there is none (yet)."""

    def get_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        return [self.get_state(u) for u in task_uuids]

    # -- groups and chords --------------------------------------------------------------
    @abc.abstractmethod
    def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None: ...

    @abc.abstractmethod
    def get_group_meta(self, group_uuid: str) -> GroupMeta | None: ...

    def group_completed(self, group_uuid: str, group_task_count: int) -> bool:
        meta = self.get_group_meta(group_uuid)
        if meta is None:
            raise LookupError(f"group {group_uuid} has no stored meta")
        states = self.get_states(meta.task_uuids)
        done = sum(1 for s in states if s is not None and s.ready)
        return done == group_task_count

    def group_task_states(self, group_uuid: str, group_task_count: int) -> list[TaskState]:
        meta = self.get_group_meta(group_uuid)
        if meta is None:
            raise LookupError(f"group {group_uuid} has no stored meta")
        states = self.get_states(meta.task_uuids)
        missing = [u for u, s in zip(meta.task_uuids, states, strict=True) if s is None]
        if missing:
            raise LookupError(f"group {group_uuid}: no state for {', '.join(missing)}")
        return [s for s in states if s is not None]

    @abc.abstractmethod
    def trigger_chord(self, group_uuid: str) -> bool:
        """True for exactly one caller per group."""

    # -- housekeeping -------------------------------------------------------------------
    def purge_state(self, task_uuid: str) -> None:
        raise NotImplementedError

    def purge_group_meta(self, group_uuid: str) -> None:
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def pending_state(sig: Signature) -> TaskState:
    """What Go's ``NewPendingTaskState`` builds: name and a fresh UTC CreatedAt."""
    return TaskState(sig.uuid, PENDING, task_name=sig.name, created_at=GoTime.now())
