"""The consumer bootstep: a Machinery worker inside the Celery worker's consumer.

:class:`MachineryBridgeStep` is a ``StartStopStep`` of the consumer blueprint
(``app.steps['consumer']``).  When the Celery consumer starts it starts a
:class:`machinery_compat.worker.Worker` on the bridge's queue, whose consuming thread takes
messages with the project's own broker (Redis: Machinery's lists, crash-safe; AMQP:
Machinery's exchange, queue and binding, acknowledged after the task; SQS, Pub/Sub …) and
whose threads hand each task to the Celery pool (:mod:`.pool`).  Every message ends in
exactly one place, as with ``machinery-compat worker`` (see
:data:`machinery_compat.worker.OUTCOMES`).  When the consumer stops (warm shutdown, or a
restart after Celery's broker connection was lost) the worker stops: it pushes back what
it took but did not start and waits for the running tasks.
"""

from __future__ import annotations

import logging
import typing
from typing import Any

from celery import bootsteps

from machinery_compat.celery.bridge import Bridge, bridge_of
from machinery_compat.celery.pool import PoolRunner, pool_size
from machinery_compat.exceptions import ConfigError
from machinery_compat.protocol.gotypes import result_types_from_hint
from machinery_compat.task import Task
from machinery_compat.worker import Worker

logger = logging.getLogger(__name__)


class MachineryBridgeStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumes the Machinery queue of ``celery_app.machinery_bridge`` (see ``install()``)."""

    label = "Machinery bridge"
    name = "machinery_compat.celery.step.MachineryBridgeStep"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.worker: Worker | None = None

    def start(self, parent: Any) -> None:
        if self.worker is not None:
            return
        bridge = bridge_of(parent.app)
        check_queue(bridge, parent.app)
        runner = PoolRunner(parent.app, parent.pool, getattr(parent, "hub", None))
        names = bridge.task_map(parent.app)
        for mname, cname in names.items():
            register_proxy(bridge, runner, mname, cname)
        if not names:
            logger.warning("Machinery bridge: no Celery task to serve; every message on %s "
                           "goes back to its queue for another worker", bridge.queue)
        concurrency = bridge.concurrency or pool_size(parent.pool)
        worker = Worker(bridge.machinery, concurrency=concurrency, queue=bridge.queue,
                        **bridge.worker_options)
        worker.start()
        self.worker = worker
        logger.info("Machinery bridge consuming %s with %d thread(s) into the %s pool: %s",
                    bridge.queue, concurrency, runner.kind,
                    ", ".join(f"{m}->{c}" if m != c else m for m, c in names.items()))

    def stop(self, parent: Any) -> None:
        self._stop(bridge_of(parent.app).stop_timeout)

    def shutdown(self, parent: Any) -> None:
        self._stop(bridge_of(parent.app).stop_timeout)

    def terminate(self, parent: Any) -> None:
        """Cold shutdown: do not wait for running tasks; their messages stay unacknowledged
        (AMQP redelivers them; on Redis they are re-queued from the processing list once
        this worker's heartbeat expires)."""
        self._stop(0.0)

    def _stop(self, timeout: float | None) -> None:
        worker, self.worker = self.worker, None
        if worker is None:
            return
        still = worker.stop(timeout=timeout)
        if still:
            logger.warning("Machinery bridge stopped with %d task(s) still running: %s",
                           len(still), ", ".join(f"{r.name}[{r.id}]" for r in still[:20]))


def check_queue(bridge: Bridge, celery_app: Any) -> None:
    """The Machinery queue must not be one of Celery's own queues (Celery's consumer would
    take Machinery's messages, and on Redis both use a list of the queue's name)."""
    own = set(celery_app.amqp.queues.keys()) | {celery_app.conf.task_default_queue}
    if bridge.queue in own:
        raise ConfigError(
            f"the Machinery queue {bridge.queue!r} is one of the Celery app's own queues "
            f"({', '.join(sorted(own))}): give the bridge a queue Celery does not consume")


def register_proxy(bridge: Bridge, runner: PoolRunner, mname: str, cname: str) -> None:
    """Register, in the Machinery app, a task ``mname`` that runs Celery task ``cname`` in
    the pool; its result types come from the Celery function's return annotation, if any."""
    queue = bridge.queue

    def proxy(task: Task[Any, Any], *args: Any) -> Any:
        return runner.call(cname, task.request, args, queue)

    proxy.__name__ = f"celery:{cname}"
    proxy.machinery_bridge = cname  # type: ignore[attr-defined]
    earlier = bridge.machinery.tasks.get(mname)
    if earlier is not None and hasattr(earlier.fn, "machinery_bridge"):
        del bridge.machinery.tasks[mname]  # the bridge's own, from before a consumer restart
    registered = bridge.machinery.register_task(mname, proxy, bind=True)
    celery_task = runner.celery_app.tasks[cname]
    try:
        hints = typing.get_type_hints(celery_task.run)
    except Exception:
        hints = {}
    if "return" in hints:
        try:
            registered.result_types = result_types_from_hint(hints["return"])
        except Exception as e:
            raise ConfigError(f"Celery task {cname}: return annotation {hints['return']!r} "
                              f"cannot be given Go types: {e}") from e
