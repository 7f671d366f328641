"""The result-backend interface.

The worker writes states through the ``set_state_*`` methods; each backend implements
Machinery's merge rules for its store.  :meth:`Backend.mark_received_started` and
:meth:`Backend.finish` exist so that a backend can batch writes into fewer round trips
(the Redis backend does); their defaults call the single-state methods in order.

**Exception records.**  Machinery's TaskState has no room for an exception's type or
traceback, so a Python worker stores them beside a FAILURE state: a small JSON object
(:class:`ExceptionRecord`) under the key :func:`exception_record_key` gives, ``<task
UUID>.exc``, with the state's expiry, written just before the state (so whoever reads FAILURE
finds it).  Go never reads or writes it; ``AsyncResult`` uses it for ``TaskFailed.exc_type`` /
``exc_module`` / ``traceback`` and the ``except OriginalError:`` behaviour.  A backend that
cannot store one keeps the defaults here (nothing stored, ``None`` read), and readers then see
``exc_type=None``, as for a task a Go worker ran.
"""

from __future__ import annotations

import abc
import json
import logging
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..exceptions import DecodeError
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
#: appended to a task UUID: the key of its :class:`ExceptionRecord`
EXCEPTION_RECORD_SUFFIX = ".exc"

logger = logging.getLogger(__name__)


def exception_record_key(task_uuid: str) -> str:
    """Where a task's :class:`ExceptionRecord` is stored: ``<task UUID>.exc``."""
    return task_uuid + EXCEPTION_RECORD_SUFFIX


@dataclass(frozen=True, slots=True)
class ExceptionRecord:
    """The exception behind a FAILURE state, as a Python worker saw it.

    Stored as JSON, e.g. ``{"exc_type":"ZeroDivisionError","exc_module":"builtins",
    "exc_qualname":"ZeroDivisionError","traceback":"Traceback (most recent call last):\\n...",
    "error":"division by zero"}``.  ``error`` is the state's ``Error`` text the record belongs
    to: a record whose ``error`` differs from the stored state's (left over from an earlier run
    of the same UUID) is ignored by readers.
    """

    exc_type: str
    exc_module: str
    exc_qualname: str
    traceback: str
    error: str

    @classmethod
    def from_exception(cls, exc: BaseException, error: str) -> ExceptionRecord:
        t = type(exc)
        return cls(t.__name__, t.__module__, t.__qualname__,
                   "".join(traceback.format_exception(exc)), error)

    def to_json(self) -> bytes:
        # ASCII-only JSON: lone surrogates in an exception message survive the round trip
        return json.dumps({
            "exc_type": self.exc_type,
            "exc_module": self.exc_module,
            "exc_qualname": self.exc_qualname,
            "traceback": self.traceback,
            "error": self.error,
        }, separators=(",", ":")).encode("ascii")

    @classmethod
    def from_json(cls, raw: bytes | str) -> ExceptionRecord:
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise DecodeError(f"undecodable exception record: {e}", raw) from e
        fields = ("exc_type", "exc_module", "exc_qualname", "traceback", "error")
        if not isinstance(obj, dict) or not all(isinstance(obj.get(f), str) for f in fields):
            raise DecodeError("exception record is not an object of strings "
                              f"{', '.join(fields)}", raw)
        return cls(*(obj[f] for f in fields))


def decode_exception_record(task_uuid: str, raw: bytes | str | None) -> ExceptionRecord | None:
    """:meth:`ExceptionRecord.from_json`, or ``None`` (logged) when the bytes are not one: the
    record is an extra, never a reason for ``get()`` to fail."""
    if raw is None:
        return None
    try:
        return ExceptionRecord.from_json(raw)
    except DecodeError as e:
        logger.warning("ignoring the exception record of task %s: %s; raw=%r", task_uuid, e, raw)
        return None


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

    def set_final_state(self, state: TaskState, token: Any = None,
                        exc_record: ExceptionRecord | None = None) -> None:
        """Write SUCCESS/FAILURE/RETRY after :meth:`mark_received_started` (merging), and a
        FAILURE's ``exc_record`` before it."""
        if exc_record is not None:
            self.set_exception_record(state.task_uuid, exc_record)
        self.set_state(state, merge=True)

    def set_exception_record(self, task_uuid: str, record: ExceptionRecord) -> None:  # noqa: B027
        """Store ``record`` under :func:`exception_record_key`; this default stores nothing."""

    def get_exception_record(self, task_uuid: str) -> ExceptionRecord | None:
        """The stored :class:`ExceptionRecord` (``None``: none, or this backend keeps none)."""
        return None

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
        """Delete the task's state and its :class:`ExceptionRecord`."""
        raise NotImplementedError

    def purge_group_meta(self, group_uuid: str) -> None:
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def pending_state(sig: Signature) -> TaskState:
    """What Go's ``NewPendingTaskState`` builds: name and a fresh UTC CreatedAt."""
    return TaskState(sig.uuid, PENDING, task_name=sig.name, created_at=GoTime.now())
