"""The app object: configuration, task registry, and the producer (Celery-shaped).

.. code-block:: python

    from machinery_compat import Machinery, Arg

    app = Machinery(broker="redis://127.0.0.1:6379/0",
                    result_backend="redis://127.0.0.1:6379/0",
                    default_queue="machinery_tasks")

    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    app.send_task("add", args=[1, 2]).get(timeout=10)     # by name: a Go task works too
    add.delay(1, 2).get(timeout=10)

Sending does what Go's ``server.SendTask`` does: a ``task_<uuid4>`` id, ``Headers`` set
to a non-nil map, the PENDING state written *before* the message is published (on Redis
both go in one round trip), then the publish.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar, overload

from . import signals
from .backends import Backend, create_backend
from .brokers import Broker, create_broker
from .canvas import Sig
from .config import Config, mask_url
from .exceptions import (
    BackendError,
    ConfigError,
    EncodeError,
    PublishError,
    TaskNotRegistered,
    UnsupportedOption,
)
from .options import translate
from .protocol import Arg, GoTime, Signature, task_id
from .protocol.sublime import check_dialect, prepare_publish
from .result import AsyncResult, ChainResult, GroupResult
from .task import RetryBackoff, Task

if TYPE_CHECKING:
    from .aio import AsyncMachinery
    from .periodic import PeriodicRegistry, PeriodicTask
    from .tracing import Tracing
    from .worker import Worker
    from .worker.processes import WorkerProcesses

logger = logging.getLogger(__name__)

#: Every live app, so that a forked child can replace their locks.
_apps: weakref.WeakSet[Machinery] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A lock another thread of the parent held at the fork stays held forever in the child:
    give every app a fresh one (its broker and backend connections handle the fork
    themselves, see :mod:`machinery_compat._redis`)."""
    for app in list(_apps):
        app._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


P = ParamSpec("P")
R = TypeVar("R")


def _to_gotime(eta: Any) -> GoTime:
    if isinstance(eta, GoTime):
        return eta
    if isinstance(eta, datetime):
        if eta.tzinfo is None or eta.utcoffset() is None:
            # Celery with enable_utc=False: a naive eta is local time (what datetime.now()
            # gives), sent as UTC; never read as UTC, which would be hours off.
            eta = eta.astimezone(UTC)
        return GoTime.from_datetime(eta)
    if isinstance(eta, (int, float)):
        return GoTime(int(eta * 1_000_000_000))
    if isinstance(eta, str):
        return GoTime.parse(eta)
    raise EncodeError(f"eta must be a datetime, GoTime, RFC 3339 string or Unix time, not {eta!r}")


class Machinery:
    """A Machinery-compatible app: holds the config, the broker, the backend and tasks.

    ``Machinery(broker=None, result_backend=None, default_queue=None, *, config=None,
    results_expire_in=None)``:

    * ``broker``: the broker URL (``redis://…``, ``amqp://…``, ``memory://``, ``eager://`` …),
      as Machinery's ``Broker`` setting;
    * ``result_backend``: the result backend URL; when not given it is the broker URL (given
      ``broker`` and no ``config``), else the config's;
    * ``default_queue``: Machinery's ``DefaultQueue``, where tasks without a queue go and what a
      worker consumes by default (``machinery_tasks``);
    * ``config``: a whole :class:`Config` (e.g. ``Config.from_yaml(path)``); the other
      arguments, when given, override its values;
    * ``results_expire_in``: seconds task states are kept (Machinery's ``ResultsExpireIn``;
      0 means 3600);
    * ``store_signatures``: also keep every Signature this app publishes next to its state
      (Redis, DynamoDB), for ``machinery-compat stuck --resend``
      (:mod:`machinery_compat.ops.signatures`);
    * ``wire_dialect``: the task-message layout written, ``"upstream"`` (Go Machinery,
      default) or ``"sublime"`` (the sublime-security fork: relative ``Delay``, 29 keys; on
      Redis the member carries ``"Delay":0`` and the due time is the ZSET score); overrides
      the config's ``wire_dialect``. Both layouts are read either way
      (:mod:`machinery_compat.protocol.sublime`).

    With no ``broker`` nor ``config`` the URLs are Machinery's defaults (a local RabbitMQ).
    Connections are made on first use; the app is safe to use from many threads and after
    ``fork`` (a child makes its own connections).
    """

    def __init__(
        self,
        broker: str | None = None,
        result_backend: str | None = None,
        default_queue: str | None = None,
        *,
        config: Config | None = None,
        results_expire_in: int | None = None,
        store_signatures: bool = False,
        wire_dialect: str | None = None,
    ) -> None:
        cfg = config if config is not None else Config.default()
        if broker is not None:
            cfg.broker = broker
            if result_backend is None and config is None:
                cfg.result_backend = broker
        if result_backend is not None:
            cfg.result_backend = result_backend
        if default_queue is not None:
            cfg.default_queue = default_queue
        if results_expire_in is not None:
            cfg.results_expire_in = results_expire_in
        if wire_dialect is not None:
            cfg.wire_dialect = wire_dialect
        try:
            check_dialect(cfg.wire_dialect)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.config = cfg
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._broker: Broker | None = None
        self._backend: Backend | None = None
        self._lock = threading.Lock()
        #: OpenTelemetry spans and context propagation, once :func:`machinery_compat.tracing.instrument` set it
        self.tracing: Tracing | None = None
        self._pre_publish_handler: Callable[[Signature], object] | None = None
        self._unknown_task_hook: Callable[[Signature], object] | None = None
        #: keep every published Signature next to its state (see :mod:`machinery_compat.ops.signatures`)
        self.store_signatures = store_signatures
        #: task events (machinery_compat.events): this process's emitter, its settings
        self._events: Any = None
        self._events_config: Any = None
        if os.environ.get("MACHINERY_COMPAT_SEND_EVENTS", "").strip():
            from .events.emitter import configure

            configure(self, None)  # reads the environment (a bad value: ConfigError)
        _apps.add(self)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str) -> Machinery:
        """An app configured from the same YAML file a Go worker reads."""
        return cls(config=Config.from_yaml(path))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Machinery:
        """An app configured from Machinery's environment variables (BROKER, …)."""
        return cls(config=Config.from_env(environ) if environ is not None else Config.from_env())

    @property
    def broker(self) -> Broker:
        """The broker for ``config.broker``, created on first use (a Redis one with the
        ``config.redis`` timeouts)."""
        if self._broker is None:
            with self._lock:
                if self._broker is None:
                    self._broker = create_broker(self.config, app=self)
        return self._broker

    @property
    def backend(self) -> Backend:
        """The result backend for ``config.result_backend``, created on first use (a Redis one
        with the ``config.redis`` timeouts)."""
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = create_backend(self.config)
        return self._backend

    _aio: AsyncMachinery | None = None

    @property
    def aio(self) -> AsyncMachinery:
        """This app's asyncio API (``await app.aio.send_task(...)``), see
        :mod:`machinery_compat.aio`."""
        if self._aio is None:
            from .aio import AsyncMachinery

            self._aio = AsyncMachinery(self)
        return self._aio

    # -- tasks --------------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(self, fn: None = None, /, *, name: str | None = None, bind: Literal[False] = False,
             queue: str | None = None, retry_count: int = 0, retry_timeout: int = 0,
             ignore_when_not_registered: bool = False, max_retries: int | None = None,
             default_retry_delay: float | None = None,
             autoretry_for: tuple[type[BaseException], ...] | None = None,
             retry_backoff: bool | RetryBackoff = True, **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    @overload
    def task(self, fn: None = None, /, *, name: str | None = None, bind: Literal[True],
             queue: str | None = None, retry_count: int = 0, retry_timeout: int = 0,
             ignore_when_not_registered: bool = False, max_retries: int | None = None,
             default_retry_delay: float | None = None,
             autoretry_for: tuple[type[BaseException], ...] | None = None,
             retry_backoff: bool | RetryBackoff = True,
             **options: Any) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...

    def task(self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None,
             bind: bool = False, queue: str | None = None, retry_count: int = 0,
             retry_timeout: int = 0, ignore_when_not_registered: bool = False,
             max_retries: int | None = None, default_retry_delay: float | None = None,
             autoretry_for: tuple[type[BaseException], ...] | None = None,
             retry_backoff: bool | RetryBackoff = True, **options: Any) -> Any:
        """Register a function as a task (``@app.task`` or ``@app.task(name="add")``).

        Machinery options: ``retry_count``/``retry_timeout`` (sent with every call).  Celery
        options map onto them: ``max_retries`` → ``RetryCount``; ``default_retry_delay`` →
        the ``RetryTimeout`` whose next Fibonacci step is the first ≥ that delay;
        ``autoretry_for`` limits which exceptions retry on a Python worker;
        ``retry_backoff``: True (Machinery's Fibonacci steps, what Go workers do) or a function
        ``(retry_timeout, retries) -> seconds`` giving a Python worker's delays (see
        :data:`machinery_compat.task.RetryBackoff`); False is refused.
        Further ``options`` are sending defaults (``priority``, ``expires``, ``link`` …, see
        :mod:`machinery_compat.options`); Celery options a Machinery message cannot carry
        (``time_limit``, ``rate_limit`` …) raise :class:`UnsupportedOption`.
        ``bind=True`` passes the task itself first (``self.request``, ``self.retry``).
        Registering a second function under a name already taken replaces the first, with a
        warning.
        """

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            return self._register(f, name or f.__name__, bind=bind, queue=queue,
                                  retry_count=retry_count, retry_timeout=retry_timeout,
                                  ignore_when_not_registered=ignore_when_not_registered,
                                  max_retries=max_retries, default_retry_delay=default_retry_delay,
                                  autoretry_for=autoretry_for, retry_backoff=retry_backoff,
                                  **options)

        return register(fn) if fn is not None else register

    def _register(self, f: Callable[..., Any], name: str, *, bind: bool = False,
                  queue: str | None = None, retry_count: int = 0, retry_timeout: int = 0,
                  ignore_when_not_registered: bool = False, max_retries: int | None = None,
                  default_retry_delay: float | None = None,
                  autoretry_for: tuple[type[BaseException], ...] | None = None,
                  retry_backoff: bool | RetryBackoff = True,
                  **options: Any) -> Task[Any, Any]:
        t: Task[Any, Any] = Task(
            self, f, name, bind=bind, queue=queue, retry_count=retry_count,
            retry_timeout=retry_timeout, ignore_when_not_registered=ignore_when_not_registered,
            max_retries=max_retries, default_retry_delay=default_retry_delay,
            autoretry_for=autoretry_for, retry_backoff=retry_backoff, options=options)
        old = self.tasks.get(t.name)
        if old is not None and old.fn is not f:
            logger.warning("task %r registered twice: %s replaces %s", t.name,
                           _qualname(f), _qualname(old.fn))
        self.tasks[t.name] = t
        return t

    def register_task(self, name: str, fn: Callable[..., Any], **options: Any) -> Task[Any, Any]:
        """Register ``fn`` under ``name`` (Machinery's ``RegisterTask``)."""
        return self._register(fn, name, **options)

    def get_task(self, name: str) -> Task[Any, Any]:
        """The task registered under ``name``; :class:`TaskNotRegistered` if there is none."""
        try:
            return self.tasks[name]
        except KeyError:
            raise TaskNotRegistered(name) from None

    # -- producing ----------------------------------------------------------------------
    def build_signature(self, name: str, args: Sequence[Any] = (), *,
                        where: str = "build_signature", **options: Any) -> Signature:
        """A Signature for task ``name``; plain values get Go types by inference.

        ``options``: ``countdown`` (seconds) or ``eta`` (a datetime — naive means local
        time —, a :class:`GoTime`, an RFC 3339 string or a Unix time), ``queue``,
        ``priority``, ``headers``, ``task_id``, ``retry_count``, ``retry_timeout``,
        ``immutable``, ``ignore_when_task_not_registered``, ``broker_message_group_id``,
        ``stop_task_deletion_on_error``, ``on_success``/``on_error`` (callback signatures),
        and Celery's ``routing_key``, ``link``, ``link_error``, ``max_retries``, ``expires``
        (see :mod:`machinery_compat.options`); anything else raises
        :class:`UnsupportedOption` naming it (``where``: the call to name in that error).
        """
        o = translate(options, where=where)
        when: GoTime | None = None
        if o.get("eta") is not None:
            when = _to_gotime(o["eta"])
        elif o.get("countdown") is not None and o["countdown"] > 0:
            when = GoTime.now().add_seconds(o["countdown"])
        headers = o.get("headers")
        return Signature(
            uuid=o.get("task_id") or "",
            name=name,
            routing_key=o.get("queue") or "",
            eta=when,
            args=[Arg.of(a) for a in args] or None,
            headers=dict(headers) if headers else None,
            priority=o.get("priority") or 0,
            immutable=_immutable(o),
            retry_count=o.get("retry_count") or 0,
            retry_timeout=o.get("retry_timeout") or 0,
            on_success=_callbacks(o.get("on_success")),
            on_error=_callbacks(o.get("on_error")),
            broker_message_group_id=o.get("broker_message_group_id") or "",
            stop_task_deletion_on_error=bool(o.get("stop_task_deletion_on_error")),
            ignore_when_task_not_registered=bool(o.get("ignore_when_task_not_registered")),
        )

    def send_task(self, name: str, args: Sequence[Any] = (),
                  kwargs: Mapping[str, Any] | None = None, **options: Any) -> AsyncResult:
        """Send task ``name`` (Python or Go) with positional ``args``; returns its AsyncResult.

        ``kwargs`` are mapped to positions for a task registered in this app (its parameters
        are known); for any other task (a Go task, say) they are refused: Machinery has
        positional arguments only.  Options: see :meth:`build_signature`.

        Upper bound: on Redis, this returns or raises :class:`PublishError` within about
        ``redis.connect_timeout`` + ``max(redis.read_timeout, redis.write_timeout)`` seconds
        (15 + 15 by default), even when the server stalls; see the README's "Timeouts".
        """
        return self.send_signature(self._task_signature(name, args, kwargs, options))

    def _task_signature(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any] | None,
                        options: dict[str, Any]) -> Signature:
        """The Signature :meth:`send_task` sends (also what ``app.aio.send_task`` sends)."""
        if kwargs:
            task = self.tasks.get(name)
            if task is None:
                raise EncodeError(
                    f"send_task({name!r}, kwargs=...): Machinery has positional arguments only, "
                    f"and {name!r} is not registered in this app, so the order of its parameters "
                    "is unknown; pass args=[...] in order")
            args = task._typed_args(args, kwargs)
        return self.build_signature(name, args, where="send_task", **options)

    def signature(self, name: str, args: Sequence[Any] = (), *, immutable: bool = False,
                  **options: Any) -> Sig:
        """A canvas signature for a task by name (e.g. one only Go workers have)."""
        return Sig(self, name, [Arg.of(a) for a in args], immutable=immutable, **options)

    def send_chain(self, sigs: Sequence[Signature]) -> ChainResult:
        """Go's ``SendChain``: send the first step (the rest travel nested in it)."""
        with self._producer_span(sigs[:1], "SendChain"):
            self.send_signature(sigs[0])
        return ChainResult([AsyncResult(s.uuid, self.backend, s.name) for s in sigs])

    def send_group(self, members: Sequence[Signature], send_concurrency: int = 0) -> GroupResult:
        """Go's ``SendGroup``: InitGroup, PENDING for every member, then publish them all.

        On Redis (broker and backend on one server) everything goes in one pipelined round
        trip, in that order; a broker with ``publish_many`` (SQS) sends them in batches;
        otherwise members are published by up to ``send_concurrency`` threads (0 = one per
        member).  Bounded as :meth:`send_task` is.
        """
        group_uuid = _stamp_group(members)
        chord = members[0].chord_callback is not None
        with self._producer_span(members, "SendChord" if chord else "SendGroup"):
            self._send_group(members, group_uuid, send_concurrency)
        return GroupResult(group_uuid, [AsyncResult(m.uuid, self.backend, m.name)
                                        for m in members])

    def _send_group(self, members: Sequence[Signature], group_uuid: str,
                    send_concurrency: int) -> None:
        broker, backend = self.broker, self.backend
        uuids = [m.uuid for m in members]
        fast = _shared_fast_path(broker, backend)
        # (Go calls its pre-publish handler in SendTask only, not for group members)
        if fast is not None:
            for m in members:
                self._before_publish(m)
            commands = [backend.init_group_command(group_uuid, uuids)]  # type: ignore[attr-defined]
            commands += [backend.pending_command(m) for m in members]  # type: ignore[attr-defined]
            commands += [broker.publish_command(m) for m in members]  # type: ignore[attr-defined]
            try:
                fast.execute(*commands)
            except Exception as e:
                raise PublishError(f"Publish group {group_uuid} error: {e} (its members may "
                                   f"not all have been stored or sent)") from e
        else:
            try:
                backend.init_group(group_uuid, uuids)
            except Exception as e:  # Go ignores this error too, but says nothing
                logger.warning("InitGroup %s failed: %s", group_uuid, e)
            for m in members:
                backend.set_state_pending(m)
            for m in members:
                self._before_publish(m)
            publish_many = getattr(broker, "publish_many", None)
            if publish_many is not None:  # batches (SQS: SendMessageBatch, 10 a call)
                publish_many(members)
            else:
                workers = send_concurrency if send_concurrency > 0 else len(members)
                with ThreadPoolExecutor(max_workers=min(workers, 64)) as pool:
                    list(pool.map(broker.publish, members))
        for m in members:
            self._after_publish(m)

    def send_many(self, tasks: Iterable[Any], *, chunk: int = 1000,
                  send_concurrency: int = 8) -> list[AsyncResult]:
        """``send_task`` for many tasks in bulk: each item a :class:`Signature`, a canvas
        ``Sig`` (``add.s(1, 2)``) or ``(name, args[, options])``; each task's PENDING state
        is written before its message, the hooks and signals run for each, but a whole
        ``chunk`` goes in one write on Redis (else: PENDINGs, then the messages in batches or
        from ``send_concurrency`` threads).  Returns one :class:`AsyncResult` per task, in
        order.  See :mod:`machinery_compat.bulk`."""
        from .bulk import send_many

        return send_many(self, tasks, chunk=chunk, send_concurrency=send_concurrency)

    def send_signature(self, sig: Signature) -> AsyncResult:
        """Go's ``SendTask``: id, headers, PENDING state, then publish."""
        sig.validate()
        return self._forward_signature(sig)

    def _forward_signature(self, sig: Signature) -> AsyncResult:
        """``send_signature`` without the send-time checks, for signatures received from the
        wire (callbacks, chord callbacks) whose values are forwarded as they came."""
        _stamp(sig)
        self._publish_with_pending(sig)
        return AsyncResult(sig.uuid, self.backend, sig.name)

    def _publish_with_pending(self, sig: Signature) -> None:
        """Write PENDING for ``sig`` and publish it (one write when both are on one Redis),
        inside a ``SendTask`` span when traced; the pre-publish handler and
        ``before_task_publish`` run between the two (before the one write on Redis)."""
        with self._producer_span((sig,), "SendTask"):
            self._publish_traced(sig)
        self._after_publish(sig)

    def _publish_traced(self, sig: Signature) -> None:
        broker, backend = self.broker, self.backend
        fast = _shared_fast_path(broker, backend)
        if fast is not None:
            self._pre_publish(sig)
            self._before_publish(sig)
            try:
                fast.execute(backend.pending_command(sig),  # type: ignore[attr-defined]
                             broker.publish_command(sig))  # type: ignore[attr-defined]
            except Exception as e:
                raise PublishError(
                    f"Publish message error: {e} (task {sig.uuid} {sig.name!r}: the PENDING "
                    f"state and the message may not have been stored on {mask_url(self.config.broker)})"
                ) from e
            return
        try:
            backend.set_state_pending(sig)
        except Exception as e:
            raise BackendError(
                f"Set state pending error: {e} (task {sig.uuid} {sig.name!r} was not published)"
            ) from e
        self._pre_publish(sig)
        self._before_publish(sig)
        broker.publish(sig)

    # -- hooks around publishing --------------------------------------------------------
    def set_pre_publish_handler(self, handler: Callable[[Signature], object] | None
                                ) -> Callable[[Signature], object] | None:
        """Go's ``Server.SetPreTaskHandler``: ``handler(signature)`` is called for every
        single-task send (``send_task``, ``apply_async``, the first step of a chain, and the
        callbacks and retries this app's workers send), after the PENDING state is written
        and before the message is published; changes it makes to the Signature (a header,
        say) are published.  As in Go, group and chord members do not go through it (use
        :data:`machinery_compat.signals.before_task_publish`, sent for every message).  On
        Redis, where PENDING and the message go in one write, it runs just before that write.
        An exception it raises is logged and the message is sent all the same.  ``None``
        removes it.  Returns ``handler``, so it works as a decorator.
        """
        self._pre_publish_handler = handler
        return handler

    #: Go's name for it (``Server.SetPreTaskHandler``), for code ported from Go.
    set_pre_task_handler = set_pre_publish_handler

    def on_unknown_task(self, hook: Callable[[Signature], object] | None
                        ) -> Callable[[Signature], object] | None:
        """The sublime fork's ``Server.SetUnknownTaskHandler`` (``wire_dialect="sublime"``
        only, else :class:`ConfigError`): this app's workers call ``hook(signature)`` for a
        message naming a task they do not have, instead of the ordinary rules.  It returns
        ``keep`` (a bool) or ``(keep, retry_in)`` (seconds ≥ 0, or a ``timedelta``): not kept
        = dropped (logged); kept = handed back, at once, or on SQS/Azure made visible again
        in ``retry_in`` (the fork ignores ``retry_in`` on Redis too).  A hook that raises or
        returns anything else is logged and the message handed back.  ``None`` removes it;
        returns ``hook``, so it works as a decorator."""
        if hook is not None and self.config.wire_dialect != "sublime":
            raise ConfigError("on_unknown_task is the sublime fork's hook: it needs "
                              "wire_dialect='sublime' (this app is "
                              f"{self.config.wire_dialect!r})")
        self._unknown_task_hook = hook
        return hook

    #: the fork's Go name, for code ported from Go.
    set_unknown_task_handler = on_unknown_task

    def _pre_publish(self, sig: Signature) -> None:
        handler = self._pre_publish_handler
        if handler is None:
            return
        try:
            handler(sig)
        except Exception:
            logger.exception("pre-publish handler %r raised for task %s[%s]; sending it anyway",
                             handler, sig.name, sig.uuid)

    def _before_publish(self, sig: Signature) -> None:
        if self.config.wire_dialect == "sublime" or sig.wire_dialect == "sublime":
            # the fork's relative Delay (Redis: "Delay":0 in the member, due time in the score)
            prepare_publish(sig, time.time_ns(), zero_delay=self.config.broker.startswith("redis"))
        if self.store_signatures:
            from .ops.signatures import store_quietly

            store_quietly(self.backend, sig)
        if not signals.before_task_publish.has_listeners(sig.name):
            return
        if sig.headers is None:
            sig.headers = {}
        signals.before_task_publish.send(
            sig.name, body=sig, exchange=self._exchange(), routing_key=self._routing_key(sig),
            headers=sig.headers, properties={}, declare=[], retry_policy=None)

    def _after_publish(self, sig: Signature) -> None:
        if self._events is not None:  # task-sent (after_task_publish carries no app)
            self._events.sent(sig, self._routing_key(sig))
        if not signals.after_task_publish.has_listeners(sig.name):
            return
        signals.after_task_publish.send(sig.name, body=sig, exchange=self._exchange(),
                                        routing_key=self._routing_key(sig))

    def _exchange(self) -> str:
        if not self.config.broker.startswith("amqp"):
            return ""
        amqp = getattr(self.config, "amqp", None)
        return str(getattr(amqp, "exchange", "") or "")

    def _routing_key(self, sig: Signature) -> str:
        return sig.routing_key or self.config.default_queue

    def _producer_span(self, sigs: Sequence[Signature], operation: str) -> AbstractContextManager[Any]:
        tracing = self.tracing
        if tracing is None:
            return nullcontext()
        return tracing.producer(sigs, operation)

    def AsyncResult(self, task_id: str) -> AsyncResult:
        """The result of the task with this id (sent by anyone, Go or Python)."""
        return AsyncResult(task_id, self.backend)

    # -- events and stats (machinery_compat.events) ---------------------------------------
    @property
    def events_config(self) -> Any:
        """The :class:`machinery_compat.events.EventsConfig` (``None``: from the environment);
        assigning one with ``send_events=True`` makes this app emit task-sent events."""
        return self._events_config

    @events_config.setter
    def events_config(self, value: Any) -> None:
        from .events.emitter import configure

        configure(self, value)

    def events(self, *, since: float | None = None, timeout: float | None = None) -> Any:
        """Iterate over task and worker events as they come (a blocking tail); ``since``: first
        the events kept from that Unix time on; ``timeout``: stop after that many seconds
        without one.  See :func:`machinery_compat.events.events`."""
        from .events import events

        return events(self, since=since, timeout=timeout)

    def stats(self) -> Any:
        """Counts per queue and task name, queue depths, runtime percentiles, workers: see
        :func:`machinery_compat.events.stats`."""
        from .events import stats

        return stats(self)

    # -- periodic tasks (machinery_compat.periodic) -------------------------------------
    _periodic: PeriodicRegistry | None = None

    @property
    def periodic_tasks(self) -> PeriodicRegistry:
        """This app's periodic tasks by name (what ``machinery-compat beat`` and
        ``worker -B`` fire); see :mod:`machinery_compat.periodic`."""
        if self._periodic is None:
            from .periodic import PeriodicRegistry

            with self._lock:
                if self._periodic is None:
                    self._periodic = PeriodicRegistry(self)
        return self._periodic

    @overload
    def periodic(self, spec: str, name: str, target: Any, *, send_concurrency: int = 0,
                 lock_program: str | None = None) -> PeriodicTask: ...

    @overload
    def periodic(self, spec: str, name: str | None = None, target: None = None, *,
                 send_concurrency: int = 0,
                 lock_program: str | None = None) -> Callable[[Any], Any]: ...

    def periodic(self, spec: str, name: str | None = None, target: Any = None, *,
                 send_concurrency: int = 0, lock_program: str | None = None) -> Any:
        """Send ``target`` on the cron ``spec`` (Go's ``RegisterPeriodicTask/Chain/Group/
        Chord``): ``app.periodic("*/5 * * * *", "report", report.s("daily"))``.

        ``target``: a signature, chain, group or chord (fresh ids at every firing), a task
        (sent without arguments) or a :class:`Signature`; without one, a decorator for a
        task or function (``@app.periodic("@every 1h")``; ``name`` defaults to the task's).
        ``spec``: robfig/cron's grammar, checked now (:class:`~machinery_compat.periodic.SpecError`);
        ``send_concurrency``: for groups and chords; ``lock_program``: the executable name in
        this task's lock key (default: the scheduler's).  A name registered again replaces
        the first.  Returns the :class:`~machinery_compat.periodic.PeriodicTask`.
        """
        if target is None:
            return self.periodic_tasks.decorator(spec, name, send_concurrency=send_concurrency,
                                                 lock_program=lock_program)
        if name is None:
            raise TypeError("app.periodic(spec, name, target): the name is required with a "
                            "target (it is part of Machinery's lock key)")
        return self.periodic_tasks.register(spec, name, target,
                                            send_concurrency=send_concurrency,
                                            lock_program=lock_program)

    def unregister_periodic(self, name: str) -> bool:
        """Stop sending the periodic task ``name`` (running schedulers drop it at once and
        let its lock key expire); False if there was none."""
        return self.periodic_tasks.unregister(name)

    # -- workers ------------------------------------------------------------------------
    @overload
    def worker(self, concurrency: int = 0, queue: str | None = None, *,
               queues: Sequence[str] | str | None = None, processes: Literal[1] = 1,
               **options: Any) -> Worker: ...

    @overload
    def worker(self, concurrency: int = 0, queue: str | None = None, *,
               queues: Sequence[str] | str | None = None, processes: int,
               **options: Any) -> Worker | WorkerProcesses: ...

    def worker(self, concurrency: int = 0, queue: str | None = None, *,
               queues: Sequence[str] | str | None = None, processes: int = 1,
               **options: Any) -> Worker | WorkerProcesses:
        """A worker with ``concurrency`` threads consuming ``queue``, or several ``queues``
        (a list or ``"a,b"``, served round-robin), or the default queue if neither is given.

        ``pool="asyncio"``: an :class:`~machinery_compat.aio.worker.AsyncioWorker`, running
        ``async def`` tasks on one event loop, ``concurrency`` (default 64) at once.

        ``processes`` > 1: a :class:`~machinery_compat.worker.processes.WorkerProcesses`
        (``run``, ``stop``, ``queues``, ``concurrency``): that many forked worker processes
        sharing ``concurrency`` (the total, split across them), each a Worker with the other
        options, supervised by this process (see :mod:`machinery_compat.worker.processes`)."""
        from .worker import Worker

        if options.get("pool", "threads") == "asyncio":  # async def tasks on one event loop
            if processes != 1:
                raise ConfigError("pool='asyncio' runs in one process (processes=1)")
            from .aio.worker import AsyncioWorker

            del options["pool"]
            return AsyncioWorker(self, concurrency=concurrency, queue=queue, queues=queues,
                                 **options)
        if options.pop("pool", "threads") != "threads":
            raise ConfigError("app.worker(pool=...): 'threads' or 'asyncio'")
        if processes != 1:
            from .worker.processes import WorkerProcesses

            return WorkerProcesses(self, processes, concurrency=concurrency, queue=queue,
                                   queues=queues, **options)
        return Worker(self, concurrency=concurrency, queue=queue, queues=queues, **options)

    def close(self) -> None:
        """Release the broker's and the backend's connections."""
        if self._events is not None:
            self._events.close()  # the last events are written first
        if self._broker is not None:
            self._broker.close()
        if self._backend is not None:
            self._backend.close()

    def __repr__(self) -> str:
        return (f"<Machinery broker={mask_url(self.config.broker)} "
                f"backend={mask_url(self.config.result_backend)} tasks={len(self.tasks)}>")


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _immutable(options: Mapping[str, Any]) -> bool:
    """The message's ``Immutable``: given, or what its ``link=`` canvas signatures ask for.

    Machinery reads the flag from the finishing task, not from its OnSuccess callbacks, so
    ``link=t.si()`` is expressed by making the linking message immutable.
    """
    if options.get("immutable") is not None:
        return bool(options["immutable"])
    wanted = {cb.immutable for cb in options.get("on_success") or () if isinstance(cb, Sig)}
    if len(wanted) > 1:
        raise UnsupportedOption("link", "apply_async", "Machinery passes results to every "
                                "OnSuccess callback or to none (the finishing task's Immutable "
                                "flag): give link= only .s() or only .si() signatures")
    return wanted == {True}


def _callbacks(value: Any) -> list[Signature] | None:
    """``on_success``/``on_error``/``link`` values as protocol Signatures (canvas ``Sig``s
    compiled, ids generated)."""
    if not value:
        return None
    out = []
    for cb in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(cb, Sig):
            cb = cb.to_signature()
        if not isinstance(cb, Signature):
            raise EncodeError(f"a callback must be a signature (task.s(...)), not {cb!r}")
        out.append(cb)
    return out


def _stamp(sig: Signature) -> None:
    """What Go's ``SendTask`` sets before sending: a ``task_<uuid4>`` id when there is none,
    a non-nil ``Headers`` map (shared with :mod:`machinery_compat.aio`)."""
    if not sig.uuid:
        sig.uuid = task_id()
    if sig.headers is None and not sig.split_span:  # (the fork's SplitSpan keeps null)
        sig.headers = {}


def _stamp_group(members: Sequence[Signature]) -> str:
    """Go's ``SendGroup`` checks: members validated, non-nil ``Headers``; the group UUID."""
    if not members:
        raise ValueError("an empty group cannot be sent")
    for m in members:
        m.validate()
        if m.headers is None:
            m.headers = {}
    return members[0].group_uuid


def _shared_fast_path(broker: Broker, backend: Backend) -> Any:
    """The broker's fast path when broker and backend share one Redis connection pool."""
    b_fast = getattr(broker, "fast", None)
    r_fast = getattr(backend, "fast", None)
    if (
        b_fast is not None
        and r_fast is not None
        and hasattr(broker, "publish_command")
        and hasattr(backend, "pending_command")
        and b_fast.pool is r_fast.pool
    ):
        return b_fast
    return None
