"""Registered tasks (what ``@app.task`` returns) and the per-run request context."""

from __future__ import annotations

import inspect
import logging
import math
import random
import threading
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from .canvas import Sig
from .exceptions import ConfigError, EncodeError, Retry
from .options import MACHINERY_OPTIONS, MAPPED_OPTIONS, translate
from .protocol import Arg, Signature
from .protocol.gojson import plain
from .protocol.gotypes import result_types_from_hint, type_from_hint
from .protocol.retry import fibonacci_next

if TYPE_CHECKING:
    from .app import Machinery
    from .result import AsyncResult

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: The message header in which Python workers count the retries done (Celery's name for it), as
#: a decimal string: Go decodes header numbers as ``json.Number``, which its AMQP publish cannot
#: put in a field table.  Go workers ignore it and keep it unchanged when they retry.
RETRIES_HEADER = "retries"

#: A retry back-off for Python workers: ``backoff(retry_timeout, retries) -> seconds``, the
#: delay before the next run of a task that failed and has retries left (``RetryCount > 0``,
#: or ``self.retry()`` without a countdown).  ``retry_timeout`` is the message's current
#: ``RetryTimeout`` (the previous delay, in seconds; 0 before the first retry) and
#: ``retries`` how many retries were done so far (0 before the first).  The worker writes the
#: delay, rounded up to whole seconds, as the message's new ``RetryTimeout`` and sets ``ETA``
#: to now + the delay, so a Go worker that takes the message over goes on from there with
#: Fibonacci steps.  Default: :func:`fibonacci_backoff` (what Go workers do).
RetryBackoff = Callable[[int, int], float]

#: The largest ``RetryTimeout`` written (seconds; Go's int is 64-bit, its ETA must stay a
#: valid time): about 31 years.
MAX_RETRY_TIMEOUT = 1_000_000_000


def fibonacci_backoff(retry_timeout: int, retries: int) -> float:
    """Machinery's back-off: the next Fibonacci number above ``retry_timeout`` (1, 2, 3, 5,
    8 … s from 0)."""
    return float(fibonacci_next(retry_timeout))


def exponential_backoff(factor: float = 1.0, maximum: float = 600.0,
                        jitter: bool = True) -> RetryBackoff:
    """Celery's ``retry_backoff``: ``factor * 2**retries`` seconds, at most ``maximum``
    (Celery's ``retry_backoff_max``); with ``jitter`` (Celery's ``retry_jitter``) a random
    whole number of seconds between 0 and that."""
    if factor <= 0 or maximum <= 0:
        raise ConfigError(f"exponential_backoff: factor and maximum must be > 0, got "
                          f"{factor!r} and {maximum!r}")

    def backoff(retry_timeout: int, retries: int) -> float:
        delay = min(maximum, factor * 2.0 ** min(retries, 64))
        if jitter:
            delay = float(random.randrange(int(delay) + 1))
        return delay

    backoff.__qualname__ = f"exponential_backoff(factor={factor!r}, maximum={maximum!r}, jitter={jitter!r})"
    return backoff


class KeepAndRetry(Retry):
    """The sublime fork's ``ErrKeepAndRetryTaskLater`` (``raise task.retry(countdown=d,
    keep_message=True)``, or raise it directly): RETRY, ``RetryCount`` untouched.  In an app
    with ``wire_dialect="sublime"`` on a broker whose messages have a visibility (SQS,
    Azure) the message being processed is kept and made visible again in ``countdown``
    seconds (no new message, no PENDING write; ``AttemptCount`` then counts its receipts);
    elsewhere (Redis, upstream dialect) it is re-sent like :class:`Retry`, with
    ``AttemptCount`` + 1 in the sublime dialect."""

    keep_message = True

    def __init__(self, message: str = "", countdown: float = 1.0,
                 exc: BaseException | None = None) -> None:
        super().__init__(message, countdown, exc=exc)


def retry_delay(backoff: RetryBackoff | None, retry_timeout: int, retries: int) -> tuple[float, int]:
    """``(delay in seconds, RetryTimeout to write)`` for the next retry.  A back-off that
    raises or returns something unusable (not a finite number ≥ 0) falls back to Fibonacci,
    logged."""
    if backoff is None:
        nxt = fibonacci_next(retry_timeout)
        return float(nxt), nxt
    try:
        delay = float(backoff(retry_timeout, retries))
        if not math.isfinite(delay) or delay < 0:
            raise ValueError(f"returned {delay!r}")
    except Exception as e:
        logger.error(
            "retry back-off %r failed (%s); using Machinery's Fibonacci step", backoff, e)
        nxt = fibonacci_next(retry_timeout)
        return float(nxt), nxt
    delay = min(delay, float(MAX_RETRY_TIMEOUT))
    return delay, math.ceil(delay)


@dataclass(slots=True)
class Request:
    """What a bound task (``bind=True``) sees as ``self.request`` while it runs.

    ``retries`` is Celery's: how many times this task has been retried so far (0 on the
    first run).  ``retries_left`` is Machinery's ``RetryCount``: how many retries the message
    still allows.
    """

    id: str
    name: str
    signature: Signature
    retries_left: int
    retry_timeout: int
    headers: dict[str, Any] = field(default_factory=dict)
    group: str = ""
    args: list[Any] = field(default_factory=list)
    retries: int = 0


def retries_done(sig: Signature, configured: int) -> int:
    """How many times ``sig`` was retried: the ``retries`` header Python workers keep, and
    at least the task's configured retry count minus the retries the message has left
    (which also counts retries made by Go workers)."""
    counted = plain((sig.headers or {}).get(RETRIES_HEADER))
    if isinstance(counted, str) and counted.isdigit() and len(counted) <= 18:
        counted = int(counted)  # written as a string: Go's AMQP publish refuses JSON numbers
    from_header = counted if isinstance(counted, int) and not isinstance(counted, bool) else 0
    return max(from_header, configured - sig.retry_count, 0)


class Task(Generic[P, R]):
    """A task registered with an app: callable locally, sendable to any worker.

    ``Task[P, R]`` keeps the function's parameters ``P`` and return type ``R`` for type
    checkers: ``add.delay("x")`` is a mypy error when ``add`` takes ints.
    """

    def __init__(
        self,
        app: Machinery,
        fn: Callable[..., R],
        name: str,
        *,
        bind: bool = False,
        queue: str | None = None,
        retry_count: int = 0,
        retry_timeout: int = 0,
        ignore_when_not_registered: bool = False,
        max_retries: int | None = None,
        default_retry_delay: float | None = None,
        autoretry_for: tuple[type[BaseException], ...] | None = None,
        retry_backoff: bool | RetryBackoff = True,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        if retry_backoff is False:
            raise ConfigError(
                f"task {name}: retry_backoff=False cannot be expressed in Machinery, whose "
                "workers back off between retries (Go's by Fibonacci steps); pass a function "
                "for other delays"
            )
        #: this task's back-off on Python workers (None: the worker's, Fibonacci by default)
        self.retry_backoff: RetryBackoff | None
        if retry_backoff is True:
            self.retry_backoff = None
        elif isinstance(retry_backoff, (int, float)):  # Celery's retry_backoff=<factor>
            self.retry_backoff = exponential_backoff(float(retry_backoff))
        elif callable(retry_backoff):
            self.retry_backoff = retry_backoff
        else:
            raise ConfigError(f"task {name}: retry_backoff must be True, a number (Celery's "
                              f"factor) or a function (retry_timeout, retries) -> seconds, "
                              f"not {retry_backoff!r}")
        if max_retries is not None:
            retry_count = max_retries
        if default_retry_delay is not None:
            retry_timeout = timeout_for_first_delay(default_retry_delay)
        self.app = app
        self.autoretry_for = tuple(autoretry_for) if autoretry_for else None
        self.fn = fn
        self.name = name
        self.bind = bind
        self.queue = queue
        self.retry_count = retry_count
        self.retry_timeout = retry_timeout
        self.ignore_when_not_registered = ignore_when_not_registered
        #: Further sending defaults (``priority``, ``expires``, ``link`` …), checked now.
        self.options = dict(options or {})
        translate(self.options, where=f"@app.task {name}")
        self._local = threading.local()
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__wrapped__ = fn
        self._params, self._var_type, self.result_types = _inspect(fn, bind)

    # -- local call ---------------------------------------------------------------------
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now (no message, no worker)."""
        if self.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    def run(self, sig: Signature, args: list[Any]) -> R:
        """Call the function for a received message (worker side); a bound task gets
        ``self.request`` built from the signature."""
        if self.bind:
            self._local.request = Request(sig.uuid, sig.name, sig, sig.retry_count,
                                          sig.retry_timeout, dict(sig.headers or {}),
                                          sig.group_uuid, args,
                                          retries_done(sig, self.retry_count))
            try:
                return self.fn(self, *args)
            finally:
                self._local.request = None
        return self.fn(*args)

    @property
    def request(self) -> Request:
        """The running message's :class:`Request` (``bind=True`` tasks, while they run)."""
        req: Request | None = getattr(self._local, "request", None)
        if req is None:
            raise RuntimeError(f"task {self.name}: request is only available while it runs")
        return req

    def retry(self, countdown: float | None = None, exc: BaseException | None = None,
              max_retries: int | None = None, *, keep_message: bool = False) -> typing.NoReturn:
        """Celery's ``self.retry``: use up one of the message's retries (``RetryCount``).

        Without ``countdown`` the delay is Machinery's next Fibonacci step.  ``max_retries``
        caps the retries left.  With none left the task fails with ``exc``'s text.
        ``keep_message=True``: the sublime fork's ``ErrKeepAndRetryTaskLater`` instead (see
        :class:`KeepAndRetry`; ``countdown`` required, ``RetryCount`` untouched).
        """
        if keep_message:
            if countdown is None:
                raise ValueError("retry(keep_message=True) needs a countdown (the fork's "
                                 "ErrKeepAndRetryTaskLater always has one)")
            raise KeepAndRetry(str(exc) if exc else "", countdown, exc=exc)
        raise Retry(str(exc) if exc else "", countdown, exc=exc, consume=True,
                    max_retries=max_retries)

    def _should_autoretry(self, exc: BaseException) -> bool:
        """Whether an exception uses the RetryCount path (all do unless ``autoretry_for``)."""
        return self.autoretry_for is None or isinstance(exc, self.autoretry_for)

    # -- sending ------------------------------------------------------------------------
    def _typed_args(self, args: Sequence[Any], kwargs: Mapping[str, Any] | None = None, *,
                   partial: bool = False) -> list[Arg]:
        """Positional Args with Go types from the function's hints (else inferred).

        ``kwargs`` are mapped to their positions (Machinery has positional arguments only);
        skipped parameters before a given one take their defaults.  ``partial``: a canvas
        signature, whose missing arguments come later (appended results), so every keyword
        must follow the given positional arguments without a gap.
        """
        values = list(args)
        if kwargs:
            values = self._bind_kwargs(values, kwargs, partial)
        out = []
        for i, v in enumerate(values):
            if isinstance(v, Arg):
                out.append(v)
                continue
            hint = self._params[i] if i < len(self._params) else self._var_type
            out.append(Arg.of(v, hint))
        return out

    def _bind_kwargs(self, values: list[Any], kwargs: Mapping[str, Any], partial: bool) -> list[Any]:
        params = list(inspect.signature(self.fn).parameters.values())[1 if self.bind else 0:]
        if any(p.kind is p.VAR_KEYWORD for p in params):
            raise EncodeError(f"task {self.name}: Machinery has positional arguments only, so "
                              f"**{next(p.name for p in params if p.kind is p.VAR_KEYWORD)} "
                              "cannot be sent; give the task named parameters")
        try:
            bound = inspect.Signature(params).bind_partial(*values, **kwargs)
        except TypeError as e:
            names = {p.name for p in params}
            options = sorted(k for k in kwargs if k not in names
                             and (k in MACHINERY_OPTIONS or k in MAPPED_OPTIONS))
            hint = (f" ({', '.join(options)}: sending option(s), not task arguments: use "
                    f".s(...).set({options[0]}=...) or apply_async({options[0]}=...))"
                    if options else "")
            raise EncodeError(f"task {self.name}: {e}{hint}") from None
        last = max(i for i, p in enumerate(params) if p.name in bound.arguments)
        out: list[Any] = []
        for p in params[:last + 1]:
            if p.kind is p.KEYWORD_ONLY:
                if p.name in bound.arguments:
                    raise EncodeError(f"task {self.name}: keyword-only parameter {p.name!r} "
                                      "cannot be sent (Machinery has positional arguments only)")
                continue
            if p.name in bound.arguments:
                arg = bound.arguments[p.name]
                out.extend(arg if p.kind is p.VAR_POSITIONAL else [arg])
            elif p.kind is p.VAR_POSITIONAL:
                continue
            elif p.default is not p.empty and not partial:
                out.append(p.default)
            else:
                given = ", ".join(repr(k) for k in kwargs)
                raise EncodeError(
                    f"task {self.name}: cannot place keyword argument(s) {given} by position: "
                    f"parameter {p.name!r} before them is not given"
                    + (" (in a canvas signature, results of the previous task are appended "
                       "after the given arguments)" if partial else ""))
        return out

    def signature(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
                  **options: Any) -> Signature:
        """A :class:`Signature` for this task with typed args and the given options."""
        return self.app.build_signature(self.name, self._typed_args(args, kwargs),
                                        where="apply_async", **self._default_options(options))

    def s(self, *args: Any, **kwargs: Any) -> Sig:
        """A canvas signature (partial: a chain appends the previous results to ``args``).

        Keyword arguments are the task's (mapped to positions), as in Celery; set sending
        options with ``.set(queue=…, countdown=…)``.
        """
        return Sig(self.app, self.name, self._typed_args(args, kwargs, partial=True),
                   **self._default_options({}))

    def si(self, *args: Any, **kwargs: Any) -> Sig:
        """An immutable canvas signature (ignores the previous task's results)."""
        return Sig(self.app, self.name, self._typed_args(args, kwargs, partial=True),
                   immutable=True, **self._default_options({}))

    def _default_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        opts: dict[str, Any] = {"queue": self.queue, "retry_count": self.retry_count or None,
                                "retry_timeout": self.retry_timeout or None,
                                "ignore_when_task_not_registered":
                                    self.ignore_when_not_registered or None, **self.options}
        opts.update({k: v for k, v in options.items() if v is not None})
        return opts

    def apply_async(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
                    **options: Any) -> AsyncResult:
        """Send this task: ``args``/``kwargs`` are the task's arguments (kwargs are mapped to
        positions); options as :meth:`Machinery.send_task` (``countdown``, ``eta``, ``queue``,
        ``priority``, ``headers``, ``task_id``, ``retry_count``, ``link``, ``expires`` …).

        Returns or raises within the broker's and backend's configured timeouts (see
        :meth:`Machinery.send_task`).
        """
        return self.app.send_signature(self.signature(args, kwargs, **options))

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult:
        """Send this task with these arguments and the task's default options."""
        return self.apply_async(args, kwargs or None)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"


def _inspect(fn: Callable[..., Any], bind: bool) -> tuple[list[str | None], str | None, list[str | None] | None]:
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # unresolvable forward references: no pinned types
        hints = {}
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return [], None, None
    if bind and params:
        params = params[1:]
    positional: list[str | None] = []
    var_type: str | None = None
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional.append(type_from_hint(hints.get(p.name)))
        elif p.kind is p.VAR_POSITIONAL:
            var_type = type_from_hint(hints.get(p.name))
    results = result_types_from_hint(hints["return"]) if "return" in hints else None
    return positional, var_type, results


def timeout_for_first_delay(delay: float) -> int:
    """The ``RetryTimeout`` whose next Fibonacci step is the first one ≥ ``delay`` seconds.

    Celery's ``default_retry_delay=5`` → ``RetryTimeout=3``: retries after 5, 8, 13 … s.
    """
    t = 0
    while fibonacci_next(t) < delay:
        t = fibonacci_next(t)
    return t
