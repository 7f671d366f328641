"""``install()``: the one call that turns the bridge on in a Celery app, and the calls from
Celery code to Machinery (Go) tasks: :func:`machinery_send` and :func:`go_task`."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from machinery_compat.app import Machinery
from machinery_compat.exceptions import ConfigError
from machinery_compat.result import AsyncResult

logger = logging.getLogger(__name__)

#: the attribute of the Celery app holding its :class:`Bridge`
ATTRIBUTE = "machinery_bridge"
#: the Celery task :func:`go_task` signatures call (registered by :func:`install`)
CALL_TASK = "machinery_compat.call"


@dataclass
class Bridge:
    """What :func:`install` attached to a Celery app (``celery_app.machinery_bridge``)."""

    #: the Machinery app: its broker and backend are the Go side's
    machinery: Machinery
    #: the Machinery queue the bridge consumes
    queue: str
    #: Machinery task name -> Celery task name; ``None``: every Celery task (but Celery's
    #: own ``celery.*``) under its own name, as registered when the worker starts
    tasks: dict[str, str] | None
    #: the bridge's consuming threads (0: the pool's size, ``-c``)
    concurrency: int = 0
    #: more :class:`machinery_compat.worker.Worker` options (``poll_timeout``, ``crash_safe``…)
    worker_options: dict[str, Any] = field(default_factory=dict)
    #: seconds a worker shutdown waits for bridged tasks running (None: until they end)
    stop_timeout: float | None = 60.0

    def task_map(self, celery_app: Any) -> dict[str, str]:
        """Machinery name -> Celery name, checked against the Celery app's tasks."""
        registered = set(celery_app.tasks.keys())
        if self.tasks is None:
            return {n: n for n in sorted(registered)
                    if not n.startswith("celery.") and n != CALL_TASK}
        missing = sorted(c for c in self.tasks.values() if c not in registered)
        if missing:
            raise ConfigError(
                f"Machinery bridge: Celery task(s) {', '.join(missing)} not registered in "
                f"{celery_app.main or 'the Celery app'} (it has: "
                f"{', '.join(sorted(n for n in registered if not n.startswith('celery.')))})")
        return dict(self.tasks)


def install(celery_app: Any, machinery: Machinery | None = None, *, broker: str | None = None,
            result_backend: str | None = None, queue: str | None = None,
            tasks: Mapping[str, str] | Iterable[str] | None = None, concurrency: int = 0,
            worker_options: Mapping[str, Any] | None = None,
            stop_timeout: float | None = 60.0) -> Bridge:
    """Turn the bridge on in ``celery_app``: every ``celery worker`` of this app then also
    consumes the Machinery queue ``queue`` and runs those tasks in its pool.

    ``machinery``: a configured :class:`~machinery_compat.Machinery` app (e.g.
    ``Machinery.from_yaml("config.yml")``, the Go worker's file), or give ``broker`` (and
    ``result_backend``, default: the broker) URLs.  ``queue``: the Machinery queue (default:
    the config's ``default_queue``); it must not be one of the Celery app's own queues.
    ``tasks``: ``{"machinery_name": "celery.task.name"}``, or a list of names served under
    their own names, or ``None``: every task of the Celery app under its own name.
    ``concurrency``: consuming threads (default: the pool's ``-c``).  ``worker_options``:
    more :class:`~machinery_compat.worker.Worker` options.  Returns the :class:`Bridge`,
    also ``celery_app.machinery_bridge``.  Also registers the Celery task
    ``machinery_compat.call`` used by :func:`go_task`.
    """
    from celery import bootsteps  # noqa: F401  (fails early, with the hint, without celery)

    from machinery_compat.celery.step import MachineryBridgeStep

    if machinery is None:
        if broker is None:
            raise ConfigError("install(): give a Machinery app or broker=<URL>")
        machinery = Machinery(broker, result_backend or broker)
    elif broker is not None or result_backend is not None:
        raise ConfigError("install(): give either a Machinery app or broker/result_backend URLs")
    if isinstance(tasks, str):
        raise ConfigError("install(tasks=...): a mapping or a list of names, not a string")
    mapping = None if tasks is None else (
        {str(k): str(v) for k, v in tasks.items()} if isinstance(tasks, Mapping)
        else {str(n): str(n) for n in tasks})
    q = queue or machinery.config.default_queue
    if not q:
        raise ConfigError("install(): no queue (and the Machinery config has no default_queue)")
    bridge = Bridge(machinery, q, mapping, concurrency, dict(worker_options or {}), stop_timeout)
    setattr(celery_app, ATTRIBUTE, bridge)
    if MachineryBridgeStep not in celery_app.steps["consumer"]:
        celery_app.steps["consumer"].add(MachineryBridgeStep)
    if CALL_TASK not in celery_app.tasks:
        _register_call_task(celery_app)
    return bridge


def bridge_of(celery_app: Any) -> Bridge:
    """The :class:`Bridge` :func:`install` attached to ``celery_app``."""
    bridge = getattr(celery_app, ATTRIBUTE, None)
    if not isinstance(bridge, Bridge):
        raise ConfigError(f"no Machinery bridge in Celery app {getattr(celery_app, 'main', '')!r}: "
                          "call machinery_compat.celery.install(celery_app, ...) first")
    return bridge


def machinery_send(celery_app: Any, name: str, args: Sequence[Any] = (),
                   **options: Any) -> AsyncResult:
    """Send Machinery task ``name`` (a Go task, say) with ``args`` through the Machinery app
    :func:`install` attached; returns the project's :class:`~machinery_compat.AsyncResult`
    (``.get(timeout=...)`` gives the Go-typed result as a Python value).  ``options``: those
    of :meth:`Machinery.send_task <machinery_compat.Machinery.send_task>` (``routing_key``
    for a Go worker's queue, ``retry_count``, ``countdown`` …)."""
    return bridge_of(celery_app).machinery.send_task(name, args, **options)


def go_task(celery_app: Any, name: str, *args: Any, timeout: float | None = 300.0,
            immutable: bool = False, **options: Any) -> Any:
    """A Celery signature of a Machinery (Go) task, to use as a step of a Celery workflow
    (``chain(prepare.s(5), go_task(app, "add", 1), report.s())``).

    It runs the Celery task ``machinery_compat.call``, which sends ``name`` with ``args``
    followed by the previous step's result (Machinery's callback rule: results are appended)
    unless ``immutable``, waits up to ``timeout`` seconds for the Go worker's result and
    returns it (so the next Celery step gets it).  ``options``: those of
    :func:`machinery_send` (``routing_key`` …), JSON-serialisable.  It occupies one Celery
    worker slot while the Go task runs."""
    kwargs = {"name": name, "args": list(args), "timeout": timeout, "options": options}
    return celery_app.signature(CALL_TASK, kwargs=kwargs, immutable=immutable)


def _register_call_task(celery_app: Any) -> None:
    def call(*previous: Any, name: str, args: Sequence[Any] = (), timeout: float | None = 300.0,
             options: Mapping[str, Any] | None = None) -> Any:
        sent = machinery_send(celery_app, name, [*args, *previous], **dict(options or {}))
        return sent.get(timeout=timeout)

    celery_app.task(name=CALL_TASK, shared=False)(call)
