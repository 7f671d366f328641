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
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, overload

from .backends import Backend, create_backend
from .brokers import Broker, create_broker
from .canvas import Sig
from .config import Config, mask_url
from .exceptions import BackendError, EncodeError, PublishError, TaskNotRegistered
from .protocol import Arg, GoTime, Signature, task_id
from .result import AsyncResult, ChainResult, GroupResult
from .task import Task

if TYPE_CHECKING:
    from .worker import Worker

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


def _is_redis(url: str) -> bool:
    from .brokers import scheme_of

    return scheme_of(url) in ("redis", "rediss", "redis+socket")


def _to_gotime(eta: Any) -> GoTime:
    if isinstance(eta, GoTime):
        return eta
    if isinstance(eta, datetime):
        return GoTime.from_datetime(eta)
    if isinstance(eta, (int, float)):
        return GoTime(int(eta * 1_000_000_000))
    if isinstance(eta, str):
        return GoTime.parse(eta)
    raise EncodeError(f"eta must be a datetime, GoTime, RFC 3339 string or Unix time, not {eta!r}")


class Machinery:
    """A Machinery-compatible app: holds the config, the broker, the backend and tasks."""

    def __init__(
        self,
        broker: str | None = None,
        result_backend: str | None = None,
        default_queue: str | None = None,
        *,
        config: Config | None = None,
        results_expire_in: int | None = None,
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
        self.config = cfg
        self.tasks: dict[str, Task] = {}
        self._broker: Broker | None = None
        self._backend: Backend | None = None
        self._lock = threading.Lock()
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
                    if _is_redis(self.config.broker):  # with config.redis's timeouts
                        from .brokers.redis import RedisBroker

                        self._broker = RedisBroker.from_config(self.config)
                    else:
                        self._broker = create_broker(self.config, app=self)
        return self._broker

    @property
    def backend(self) -> Backend:
        """The result backend for ``config.result_backend``, created on first use (a Redis one
        with the ``config.redis`` timeouts)."""
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    if _is_redis(self.config.result_backend):  # with config.redis's timeouts
                        from .backends.redis import RedisBackend

                        self._backend = RedisBackend.from_config(self.config)
                    else:
                        self._backend = create_backend(self.config)
        return self._backend

    # -- tasks --------------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[..., Any], /) -> Task: ...

    @overload
    def task(self, fn: None = None, /, *, name: str | None = None, bind: bool = False,
             queue: str | None = None, retry_count: int = 0, retry_timeout: int = 0,
             ignore_when_not_registered: bool = False, max_retries: int | None = None,
             default_retry_delay: float | None = None,
             autoretry_for: tuple[type[BaseException], ...] | None = None,
             retry_backoff: bool = True) -> Callable[[Callable[..., Any]], Task]: ...

    def task(self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None,
             bind: bool = False, queue: str | None = None, retry_count: int = 0,
             retry_timeout: int = 0, ignore_when_not_registered: bool = False,
             max_retries: int | None = None, default_retry_delay: float | None = None,
             autoretry_for: tuple[type[BaseException], ...] | None = None,
             retry_backoff: bool = True) -> Task | Callable[[Callable[..., Any]], Task]:
        """Register a function as a task (``@app.task`` or ``@app.task(name="add")``).

        Machinery options: ``retry_count``/``retry_timeout`` (sent with every call).  Celery
        options map onto them: ``max_retries`` → ``RetryCount``; ``default_retry_delay`` →
        the ``RetryTimeout`` whose next Fibonacci step is the first ≥ that delay;
        ``autoretry_for`` limits which exceptions retry on a Python worker;
        ``retry_backoff`` must stay True (Machinery always backs off by Fibonacci).
        """

        def register(f: Callable[..., Any]) -> Task:
            t = Task(self, f, name or f.__name__, bind=bind, queue=queue,
                     retry_count=retry_count, retry_timeout=retry_timeout,
                     ignore_when_not_registered=ignore_when_not_registered,
                     max_retries=max_retries, default_retry_delay=default_retry_delay,
                     autoretry_for=autoretry_for, retry_backoff=retry_backoff)
            self.tasks[t.name] = t
            return t

        return register(fn) if fn is not None else register

    def register_task(self, name: str, fn: Callable[..., Any], **options: Any) -> Task:
        """Register ``fn`` under ``name`` (Machinery's ``RegisterTask``)."""
        return self.task(name=name, **options)(fn)

    def get_task(self, name: str) -> Task:
        try:
            return self.tasks[name]
        except KeyError:
            raise TaskNotRegistered(name) from None

    # -- producing ----------------------------------------------------------------------
    def build_signature(
        self,
        name: str,
        args: Sequence[Any] = (),
        *,
        countdown: float | None = None,
        eta: Any = None,
        queue: str | None = None,
        priority: int | None = None,
        headers: Mapping[str, Any] | None = None,
        task_id: str | None = None,
        retry_count: int | None = None,
        retry_timeout: int | None = None,
        immutable: bool | None = None,
        ignore_when_task_not_registered: bool | None = None,
        broker_message_group_id: str | None = None,
        stop_task_deletion_on_error: bool | None = None,
    ) -> Signature:
        """A Signature for task ``name``; plain values get Go types by inference."""
        when: GoTime | None = None
        if eta is not None:
            when = _to_gotime(eta)
        elif countdown is not None and countdown > 0:
            when = GoTime.now().add_seconds(countdown)
        return Signature(
            uuid=task_id or "",
            name=name,
            routing_key=queue or "",
            eta=when,
            args=[Arg.of(a) for a in args] or None,
            headers=dict(headers) if headers else None,
            priority=priority or 0,
            immutable=bool(immutable),
            retry_count=retry_count or 0,
            retry_timeout=retry_timeout or 0,
            broker_message_group_id=broker_message_group_id or "",
            stop_task_deletion_on_error=bool(stop_task_deletion_on_error),
            ignore_when_task_not_registered=bool(ignore_when_task_not_registered),
        )

    def send_task(self, name: str, args: Sequence[Any] = (), **options: Any) -> AsyncResult:
        """Send task ``name`` (Python or Go) with positional ``args``; see ``build_signature``."""
        if "kwargs" in options and options.pop("kwargs"):
            raise EncodeError("Machinery tasks take positional arguments only (no kwargs)")
        return self.send_signature(self.build_signature(name, args, **options))

    def signature(self, name: str, args: Sequence[Any] = (), *, immutable: bool = False,
                  **options: Any) -> Sig:
        """A canvas signature for a task by name (e.g. one only Go workers have)."""
        return Sig(self, name, [Arg.of(a) for a in args], immutable=immutable, **options)

    def send_chain(self, sigs: Sequence[Signature]) -> ChainResult:
        """Go's ``SendChain``: send the first step (the rest travel nested in it)."""
        self.send_signature(sigs[0])
        return ChainResult([AsyncResult(s.uuid, self.backend, s.name) for s in sigs])

    def send_group(self, members: Sequence[Signature], send_concurrency: int = 0) -> GroupResult:
        """Go's ``SendGroup``: InitGroup, PENDING for every member, then publish them all.

        On Redis (broker and backend on one server) everything goes in one pipelined round
        trip, in that order; otherwise members are published by up to ``send_concurrency``
        threads (0 = one per member).
        """
        if not members:
            raise ValueError("an empty group cannot be sent")
        group_uuid = members[0].group_uuid
        for m in members:
            m.validate()
            if m.headers is None:
                m.headers = {}
        broker, backend = self.broker, self.backend
        uuids = [m.uuid for m in members]
        fast = _shared_fast_path(broker, backend)
        if fast is not None:
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
            workers = send_concurrency if send_concurrency > 0 else len(members)
            with ThreadPoolExecutor(max_workers=min(workers, 64)) as pool:
                list(pool.map(broker.publish, members))
        return GroupResult(group_uuid, [AsyncResult(u, backend, m.name)
                                        for u, m in zip(uuids, members, strict=True)])

    def send_signature(self, sig: Signature) -> AsyncResult:
        """Go's ``SendTask``: id, headers, PENDING state, then publish."""
        sig.validate()
        return self.forward_signature(sig)

    def forward_signature(self, sig: Signature) -> AsyncResult:
        """``send_signature`` without the send-time checks, for signatures received from the
        wire (callbacks, chord callbacks) whose values are forwarded as they came."""
        if not sig.uuid:
            sig.uuid = task_id()
        if sig.headers is None:
            sig.headers = {}
        self.publish_with_pending(sig)
        return AsyncResult(sig.uuid, self.backend, sig.name)

    def publish_with_pending(self, sig: Signature) -> None:
        """Write PENDING for ``sig`` and publish it (one write when both are on one Redis)."""
        broker, backend = self.broker, self.backend
        fast = _shared_fast_path(broker, backend)
        if fast is not None:
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
        broker.publish(sig)

    def AsyncResult(self, task_id: str) -> AsyncResult:
        return AsyncResult(task_id, self.backend)

    # -- workers ------------------------------------------------------------------------
    def worker(self, concurrency: int = 0, queue: str | None = None, *,
               queues: Sequence[str] | str | None = None, **options: Any) -> Worker:
        """A worker with ``concurrency`` threads consuming ``queue``, or several ``queues``
        (a list or ``"a,b"``, served round-robin), or the default queue if neither is given."""
        from .worker import Worker

        return Worker(self, concurrency=concurrency, queue=queue, queues=queues, **options)

    def close(self) -> None:
        if self._broker is not None:
            self._broker.close()
        if self._backend is not None:
            self._backend.close()

    def __repr__(self) -> str:
        return (f"<Machinery broker={mask_url(self.config.broker)} "
                f"backend={mask_url(self.config.result_backend)} tasks={len(self.tasks)}>")


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
