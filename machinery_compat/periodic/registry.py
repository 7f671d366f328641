"""An app's periodic tasks: what Machinery's ``RegisterPeriodicTask/Chain/Group/Chord`` record.

A :class:`PeriodicTask` is a name, a spec (checked at once, as Go's ``ParseStandard``) and
what to send at every firing: a canvas signature, chain, group or chord, a registered task
(sent without arguments) or a protocol :class:`~machinery_compat.protocol.Signature`.  Each
firing builds fresh messages: new task/group/chord ids, ``countdown`` counted from then; an id
fixed on the template (``task_id=``, a Signature's ``UUID``) is reused every time, as Go does.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from ..canvas import Chain, Chord, Group, Sig
from ..protocol import Signature
from ..task import Task
from .cron import Schedule, parse_spec
from .lock import DEFAULT_PROGRAM, lock_key

if TYPE_CHECKING:
    from ..app import Machinery

logger = logging.getLogger(__name__)

#: What a periodic task sends
Target: TypeAlias = Sig | Chain | Group | Chord | Signature


@dataclass(eq=False)
class PeriodicTask:
    """One periodic registration.

    ``spec``/``name``: as given to Go's ``RegisterPeriodic*`` (both are part of the lock
    key); ``target``: what is sent; ``send_concurrency``: Go's argument of the same name for
    groups and chords; ``lock_program``: the executable name in the lock key (None: the
    scheduler's, see :class:`~machinery_compat.periodic.Scheduler`)."""

    spec: str
    name: str
    target: Target
    schedule: Schedule
    send_concurrency: int = 0
    lock_program: str | None = None
    app: Machinery | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        """``task``, ``chain``, ``group`` or ``chord`` (which Go ``RegisterPeriodic*`` it is)."""
        if isinstance(self.target, Chain):
            return "chain"
        if isinstance(self.target, Chord):
            return "chord"
        if isinstance(self.target, Group):
            return "group"
        return "task"

    def describe(self) -> str:
        """The target, briefly (``add(1, 2)``, ``a() | b()``, ``group(…)``, ``chord(…)``)."""
        t = self.target
        if isinstance(t, Signature):
            args = ", ".join(repr(a.value) for a in t.args or ())
            return f"{t.name}({args})"
        return repr(t)

    def key(self, program: str = DEFAULT_PROGRAM) -> str:
        """Machinery's lock key for this task, for a scheduler named ``program`` (this task's
        own ``lock_program`` wins)."""
        return lock_key(self.lock_program or program, self.name, self.spec)

    def send(self) -> Any:
        """Send one firing's messages now; returns the AsyncResult/ChainResult/GroupResult/
        ChordResult."""
        t = self.target
        if isinstance(t, Signature):
            if self.app is None:
                raise RuntimeError(f"periodic task {self.name!r} has no app to send through")
            return self.app.send_signature(t.copy())
        if isinstance(t, Group | Chord):
            return t.apply_async(send_concurrency=self.send_concurrency)
        return t.apply_async()


def make_periodic(app: Machinery | None, spec: str, name: str, target: Any, *,
                  send_concurrency: int = 0, lock_program: str | None = None) -> PeriodicTask:
    """A checked :class:`PeriodicTask` (:class:`~machinery_compat.periodic.SpecError` for a
    spec Go refuses; TypeError for a target that cannot be sent)."""
    if not isinstance(name, str) or not name:
        raise ValueError("a periodic task needs a non-empty name (it is part of the lock key)")
    schedule = parse_spec(spec)
    if isinstance(target, Task):
        target = target.s()
    if not isinstance(target, Sig | Chain | Group | Chord | Signature):
        raise TypeError(f"periodic task {name!r}: cannot send {target!r}; give a signature "
                        "(task.s(...), app.signature(...)), a chain, group or chord, a task, "
                        "or a machinery_compat.Signature")
    if isinstance(target, Chain | Group) and not target.tasks:
        raise ValueError(f"periodic task {name!r}: an empty {type(target).__name__.lower()}")
    if isinstance(target, Signature):
        target.validate()
    return PeriodicTask(spec, name, target, schedule, send_concurrency, lock_program, app)


class PeriodicRegistry:
    """An app's periodic tasks by name (``app.periodic_tasks``), watched by its schedulers.

    ``program``: the executable name Python schedulers of this app put in lock keys by
    default (``machinery-compat``); set it to a Go binary's name to share its locks::

        app.periodic_tasks.program = "myworker"    # Go: filepath.Base(os.Args[0])
    """

    def __init__(self, app: Machinery | None = None) -> None:
        self.app = app
        self.program = DEFAULT_PROGRAM
        self._tasks: dict[str, PeriodicTask] = {}
        self._cond = threading.Condition()
        #: bumped at every change, so schedulers notice
        self.version = 0
        _registries.add(self)

    # -- registering --------------------------------------------------------------------
    def add(self, task: PeriodicTask) -> PeriodicTask:
        """Add ``task``, replacing one of the same name (with a warning)."""
        with self._cond:
            old = self._tasks.get(task.name)
            if old is not None:
                logger.warning("periodic task %r registered again: %s %s replaces %s %s",
                               task.name, task.spec, task.describe(), old.spec, old.describe())
            self._tasks[task.name] = task
            self.version += 1
            self._cond.notify_all()
        return task

    def register(self, spec: str, name: str, target: Any, *, send_concurrency: int = 0,
                 lock_program: str | None = None) -> PeriodicTask:
        """Check and add a periodic task (see :func:`make_periodic`)."""
        return self.add(make_periodic(self.app, spec, name, target,
                                      send_concurrency=send_concurrency,
                                      lock_program=lock_program))

    def decorator(self, spec: str, name: str | None = None, *, send_concurrency: int = 0,
                  lock_program: str | None = None) -> Callable[[Any], Any]:
        """``@app.periodic(spec)`` over a task (or a plain function, registered as a task
        first): it is sent without arguments at every firing; returns the task."""

        def wrap(obj: Any) -> Any:
            task = obj
            if not isinstance(obj, Task):
                if self.app is None or not callable(obj):
                    raise TypeError(f"@periodic({spec!r}) goes over a task or a function, "
                                    f"not {obj!r}")
                task = self.app.task(obj)
            self.register(spec, name or task.name, task, send_concurrency=send_concurrency,
                          lock_program=lock_program)
            return task

        return wrap

    def unregister(self, name: str) -> bool:
        """Remove the periodic task ``name``; False if there was none.  Running schedulers
        stop firing it at once and make sure its lock key expires."""
        with self._cond:
            if self._tasks.pop(name, None) is None:
                return False
            self.version += 1
            self._cond.notify_all()
        return True

    # -- reading ------------------------------------------------------------------------
    def get(self, name: str) -> PeriodicTask | None:
        """The periodic task ``name``, or None."""
        with self._cond:
            return self._tasks.get(name)

    def snapshot(self) -> tuple[int, dict[str, PeriodicTask]]:
        """(version, name → task) at one instant."""
        with self._cond:
            return self.version, dict(self._tasks)

    def wait(self, version: int, timeout: float) -> None:
        """Block until the registry differs from ``version``, :meth:`wake` is called, or
        ``timeout`` seconds passed."""
        with self._cond:
            if self.version == version:
                self._cond.wait(timeout)

    def wake(self) -> None:
        """Wake every scheduler waiting in :meth:`wait`."""
        with self._cond:
            self._cond.notify_all()

    def __iter__(self) -> Iterator[PeriodicTask]:
        return iter(self.snapshot()[1].values())

    def __len__(self) -> int:
        with self._cond:
            return len(self._tasks)

    def __contains__(self, name: object) -> bool:
        with self._cond:
            return name in self._tasks

    def __repr__(self) -> str:
        return f"<PeriodicRegistry {sorted(self.snapshot()[1])}>"


_registries: weakref.WeakSet[PeriodicRegistry] = weakref.WeakSet()


def _after_fork_in_child() -> None:  # a condition another thread held at fork stays held
    for reg in list(_registries):
        reg._cond = threading.Condition()


os.register_at_fork(after_in_child=_after_fork_in_child)
