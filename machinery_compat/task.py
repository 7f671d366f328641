"""Registered tasks (what ``@app.task`` returns) and the per-run request context."""

from __future__ import annotations

import inspect
import threading
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .canvas import Sig
from .exceptions import ConfigError, EncodeError, Retry
from .protocol import Arg, GoTime, Signature
from .protocol.gotypes import result_types_from_hint, type_from_hint
from .protocol.retry import fibonacci_next

if TYPE_CHECKING:
    from .app import Machinery
    from .result import AsyncResult


@dataclass(slots=True)
class Request:
    """What a bound task (``bind=True``) sees as ``self.request`` while it runs."""

    id: str
    name: str
    signature: Signature
    retries_left: int
    retry_timeout: int
    headers: dict[str, Any] = field(default_factory=dict)
    group: str = ""
    args: list[Any] = field(default_factory=list)

    @property
    def retries(self) -> int:
        """Celery's name: here, how many retries are still allowed (``RetryCount``)."""
        return self.retries_left


class Task:
    """A task registered with an app: callable locally, sendable to any worker."""

    def __init__(
        self,
        app: Machinery,
        fn: Callable[..., Any],
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
        retry_backoff: bool = True,
    ) -> None:
        if not retry_backoff:
            raise ConfigError(
                f"task {name}: retry_backoff=False cannot be expressed in Machinery, whose "
                "workers (Go and Python) always back off by Fibonacci steps"
            )
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
        self._local = threading.local()
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__wrapped__ = fn
        self._params, self._var_type, self.result_types = _inspect(fn, bind)

    # -- local call ---------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    def run(self, sig: Signature, args: list[Any]) -> Any:
        """Call the function for a received message (worker side); a bound task gets
        ``self.request`` built from the signature."""
        if self.bind:
            self._local.request = Request(sig.uuid, sig.name, sig, sig.retry_count,
                                          sig.retry_timeout, dict(sig.headers or {}),
                                          sig.group_uuid, args)
            try:
                return self.fn(self, *args)
            finally:
                self._local.request = None
        return self.fn(*args)

    @property
    def request(self) -> Request:
        req: Request | None = getattr(self._local, "request", None)
        if req is None:
            raise RuntimeError(f"task {self.name}: request is only available while it runs")
        return req

    def retry(self, countdown: float | None = None, exc: BaseException | None = None,
              max_retries: int | None = None) -> typing.NoReturn:
        """Celery's ``self.retry``: use up one of the message's retries (``RetryCount``).

        Without ``countdown`` the delay is Machinery's next Fibonacci step.  ``max_retries``
        caps the retries left.  With none left the task fails with ``exc``'s text.
        """
        raise Retry(str(exc) if exc else "", countdown, exc=exc, consume=True,
                    max_retries=max_retries)

    def should_autoretry(self, exc: BaseException) -> bool:
        """Whether an exception uses the RetryCount path (all do unless ``autoretry_for``)."""
        return self.autoretry_for is None or isinstance(exc, self.autoretry_for)

    # -- sending ------------------------------------------------------------------------
    def typed_args(self, args: Sequence[Any], kwargs: Mapping[str, Any] | None = None) -> list[Arg]:
        """Positional Args with Go types from the function's hints (else inferred)."""
        values = list(args)
        if kwargs:
            values = self._bind_kwargs(values, kwargs)
        out = []
        for i, v in enumerate(values):
            if isinstance(v, Arg):
                out.append(v)
                continue
            hint = self._params[i] if i < len(self._params) else self._var_type
            out.append(Arg.of(v, hint))
        return out

    def _bind_kwargs(self, values: list[Any], kwargs: Mapping[str, Any]) -> list[Any]:
        sig = inspect.signature(self.fn)
        params = list(sig.parameters.values())[1 if self.bind else 0:]
        bound = inspect.Signature(params).bind(*values, **kwargs)
        out: list[Any] = []
        for p in params:
            if p.name not in bound.arguments:
                continue
            if p.kind is p.VAR_POSITIONAL:
                out.extend(bound.arguments[p.name])
            elif p.kind is p.VAR_KEYWORD:
                raise EncodeError(f"task {self.name}: Machinery has no keyword arguments")
            else:
                out.append(bound.arguments[p.name])
        return out

    def signature(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
                  **options: Any) -> Signature:
        """A :class:`Signature` for this task with typed args and the given options."""
        opts = self._default_options({k: v for k, v in options.items() if v is not None})
        return self.app.build_signature(self.name, self.typed_args(args, kwargs), **opts)

    def s(self, *args: Any, **options: Any) -> Sig:
        """A canvas signature (partial: a chain appends the previous results to ``args``)."""
        return Sig(self.app, self.name, self.typed_args(args), **self._default_options(options))

    def si(self, *args: Any, **options: Any) -> Sig:
        """An immutable canvas signature (ignores the previous task's results)."""
        return Sig(self.app, self.name, self.typed_args(args), immutable=True,
                   **self._default_options(options))

    def _default_options(self, options: dict[str, Any]) -> dict[str, Any]:
        opts: dict[str, Any] = {"queue": self.queue, "retry_count": self.retry_count or None,
                                "retry_timeout": self.retry_timeout or None,
                                "ignore_when_task_not_registered":
                                    self.ignore_when_not_registered or None}
        opts.update(options)
        return opts

    def apply_async(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, *,
                    countdown: float | None = None, eta: GoTime | Any = None,
                    queue: str | None = None, priority: int | None = None,
                    headers: Mapping[str, Any] | None = None, task_id: str | None = None,
                    retry_count: int | None = None, retry_timeout: int | None = None,
                    immutable: bool | None = None, **extra: Any) -> AsyncResult:
        sig = self.signature(args, kwargs, countdown=countdown, eta=eta, queue=queue,
                             priority=priority, headers=headers, task_id=task_id,
                             retry_count=retry_count, retry_timeout=retry_timeout,
                             immutable=immutable, **extra)
        return self.app.send_signature(sig)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
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
