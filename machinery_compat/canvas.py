"""Celery-shaped canvas compiling to Machinery workflows (no I/O until ``apply_async``).

.. code-block:: python

    add.s(1, 2)                      # task call with partial args (results get appended)
    add.si(1, 2)                     # immutable: ignores the previous task's results
    app.signature("multiply", args=[4])          # by name, e.g. a task only Go workers have
    (add.s(1, 1) | add.s(5) | app.signature("multiply", args=[4])).apply_async()   # chain
    group(add.s(1, 1), add.s(2, 2)).apply_async(send_concurrency=0)                # GroupResult
    chord([add.s(1, 1), add.s(2, 2)], app.signature("multiply")).apply_async()     # callback's result

What each compiles to, exactly as Go Machinery builds it:

* chain → each step's ``OnSuccess`` is ``[next step]`` (replacing), only the first is sent;
* group → one ``group_<uuid4>`` ``GroupUUID`` and ``GroupTaskCount`` on every member,
  ``InitGroup`` then PENDING for every member before any publish;
* chord → a group whose members all carry the callback (``chord_<uuid4>``) in ``ChordCallback``.

Immutability: Celery's ``si()`` means "this step ignores the previous result".  Machinery reads
the flag from the *parent* for ``OnSuccess`` (and from the callback for chords), so a chain
step's wire ``Immutable`` is the next step's ``si()``-ness; a chord callback keeps its own.

Options given to ``apply_async`` of a chain or group (``queue``, ``priority``, ``headers``,
``retry_count``, ``retry_timeout``, …) apply to every task that does not set its own;
``countdown``/``eta`` apply to the first task of a chain and to every member of a group.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .options import translate
from .protocol import Arg, Signature, chord_id, group_id, task_id

if TYPE_CHECKING:
    from .app import Machinery
    from .result import AsyncResult, ChainResult, ChordResult, GroupResult

_FIRST_ONLY = ("countdown", "eta", "task_id")


class Sig:
    """One task call: name, typed args and options.  Build with ``task.s()`` or ``app.signature()``."""

    def __init__(self, app: Machinery, name: str, args: Sequence[Arg] = (), *,
                 immutable: bool = False, **options: Any) -> None:
        self.app = app
        self.name = name
        self.args = list(args)
        self.immutable = immutable
        self.options: dict[str, Any] = {}
        self.set(**options)

    # -- building -----------------------------------------------------------------------
    def set(self, **options: Any) -> Sig:
        """Set sending options (``queue=``, ``countdown=``, ``link=`` …, see
        :meth:`Machinery.build_signature`) in place; returns ``self``.  An option a Machinery
        message cannot carry raises :class:`UnsupportedOption` here, not at send time."""
        translate(options, where=f"{self.name}.set")
        self.options.update({k: v for k, v in options.items() if v is not None})
        return self

    def clone(self, args: Sequence[Any] = (), **options: Any) -> Sig:
        """A copy with ``args`` appended and ``options`` merged."""
        new = Sig(self.app, self.name, self.args + [Arg.of(a) for a in args],
                  immutable=self.immutable, **self.options)
        return new.set(**options)

    def to_signature(self, **defaults: Any) -> Signature:
        """The protocol Signature (UUID generated if none was given)."""
        opts = {**{k: v for k, v in defaults.items() if v is not None}, **self.options}
        opts.setdefault("immutable", self.immutable)
        sig = self.app.build_signature(self.name, self.args, where="apply_async", **opts)
        if not sig.uuid:
            sig.uuid = task_id()
        return sig

    # -- composing ----------------------------------------------------------------------
    def __or__(self, other: Sig | Chain) -> Chain:
        """``a | b``: a chain of this task then ``other``."""
        return Chain(self) | other

    # -- sending ------------------------------------------------------------------------
    def apply_async(self, args: Sequence[Any] = (), **options: Any) -> AsyncResult:
        """Send this task, with ``args`` appended and ``options`` added to its own."""
        sig = (self.clone(args) if args else self).to_signature(**options)
        return self.app.send_signature(sig)

    def delay(self, *args: Any) -> AsyncResult:
        """Send this task with ``args`` appended."""
        return self.apply_async(args)

    def __repr__(self) -> str:
        shown = ", ".join(repr(a.value) for a in self.args)
        return f"{self.name}{'.si' if self.immutable else ''}({shown})"


class Chain:
    """Tasks run one after the other, each getting the previous one's results appended."""

    def __init__(self, *tasks: Sig | Chain) -> None:
        self.tasks: list[Sig] = []
        for t in tasks:
            self._add(t)

    def _add(self, t: Any) -> None:
        if isinstance(t, Chain):
            self.tasks.extend(t.tasks)
        elif isinstance(t, Sig):
            self.tasks.append(t)
        elif isinstance(t, (Group, Chord)):
            raise TypeError("Machinery cannot run a group inside a chain; use a chord "
                            "(group | callback) or send the group from a task")
        else:
            raise TypeError(f"cannot chain {t!r}")

    def __or__(self, other: Sig | Chain) -> Chain:
        new = Chain(*self.tasks)
        new._add(other)
        return new

    def to_signatures(self, **options: Any) -> list[Signature]:
        """Every step as a protocol Signature, wired like Go's ``NewChain``.

        Returns the steps in order; ``[0]`` carries the whole chain nested in ``OnSuccess``.
        """
        if not self.tasks:
            raise ValueError("an empty chain cannot be sent")
        rest = {k: v for k, v in options.items() if k not in _FIRST_ONLY}
        sigs = [t.to_signature(**(options if i == 0 else rest)) for i, t in enumerate(self.tasks)]
        for i in range(len(sigs) - 1, -1, -1):
            nxt = self.tasks[i + 1] if i + 1 < len(self.tasks) else None
            sigs[i].immutable = nxt.immutable if nxt is not None else self.tasks[i].immutable
            if i + 1 < len(sigs):  # the next step first, then any link= of this step
                sigs[i].on_success = [sigs[i + 1], *(sigs[i].on_success or ())]
        return sigs

    def apply_async(self, **options: Any) -> ChainResult:
        """Send the chain (its first step carries the rest); see the module docstring."""
        return self.app.send_chain(self.to_signatures(**options))

    @property
    def app(self) -> Machinery:
        """The app of the first step."""
        return self.tasks[0].app

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks)


class Group:
    """Tasks run in parallel; ``apply_async`` returns a GroupResult (results in order)."""

    def __init__(self, *tasks: Sig | Iterable[Sig]) -> None:
        flat: list[Sig] = []
        for t in tasks:
            if isinstance(t, Sig):
                flat.append(t)
            elif isinstance(t, (Chain, Group, Chord)):
                raise TypeError("Machinery group members must be single tasks")
            else:
                flat.extend(t)
        self.tasks = flat

    def __or__(self, other: Sig) -> Chord:
        """``group | callback``: a chord."""
        return Chord(self, other)

    def to_signatures(self, group_uuid: str | None = None, **options: Any) -> list[Signature]:
        """Members as Go's ``NewGroup`` builds them (shared GroupUUID, GroupTaskCount)."""
        if not self.tasks:
            raise ValueError("an empty group cannot be sent")
        gid = group_uuid or group_id()
        sigs = [t.to_signature(**options) for t in self.tasks]
        for s in sigs:
            s.group_uuid = gid
            s.group_task_count = len(sigs)
        return sigs

    def apply_async(self, send_concurrency: int = 0, **options: Any) -> GroupResult:
        """Send every member (Go's ``SendGroup``); ``send_concurrency`` bounds the publishing
        threads when broker and backend are not one Redis (0: one per member)."""
        return self.app.send_group(self.to_signatures(**options), send_concurrency)

    @property
    def app(self) -> Machinery:
        """The app of the first member."""
        return self.tasks[0].app

    def __repr__(self) -> str:
        return f"group({', '.join(repr(t) for t in self.tasks)})"


class Chord:
    """A group whose results, once all succeeded, are appended to one callback task."""

    def __init__(self, header: Group | Iterable[Sig], body: Sig) -> None:
        self.header = header if isinstance(header, Group) else Group(header)
        if not isinstance(body, Sig):
            raise TypeError("a chord callback must be a single task")
        self.body = body

    def to_signatures(self, **options: Any) -> tuple[list[Signature], Signature]:
        """(members, callback) as Go's ``NewChord`` builds them."""
        rest = {k: v for k, v in options.items() if k not in _FIRST_ONLY}
        callback = self.body.to_signature(**rest, task_id=chord_id())
        members = self.header.to_signatures(**options)
        for m in members:
            m.chord_callback = callback
        return members, callback

    def apply_async(self, send_concurrency: int = 0, **options: Any) -> ChordResult:
        """Send the members (each carrying the callback); the last to finish sends it."""
        from .result import ChordResult

        members, callback = self.to_signatures(**options)
        group_result = self.header.app.send_group(members, send_concurrency)
        return ChordResult(group_result, self.header.app.AsyncResult(callback.uuid))

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"


def chain(*tasks: Sig | Chain) -> Chain:
    """Tasks run one after the other: ``chain(add.s(1, 1), add.s(5))`` (same as ``|``)."""
    return Chain(*tasks)


def group(*tasks: Sig | Iterable[Sig]) -> Group:
    """Tasks run in parallel: ``group(add.s(1, 1), add.s(2, 2))`` or ``group(generator)``."""
    return Group(*tasks)


def chord(header: Group | Iterable[Sig], body: Sig) -> Chord:
    """A group, then ``body`` with every member's results appended (Go's ``NewChord``)."""
    return Chord(header, body)


__all__ = ["Chain", "Chord", "Group", "Sig", "chain", "chord", "group"]
