"""Machinery tasks inside a Celery worker, and Go tasks called from Celery code.

Optional extra ``celery`` (``pip install machinery-compat[celery]``).  One call turns the
bridge on::

    from celery import Celery
    from machinery_compat import Machinery
    from machinery_compat.celery import install

    app = Celery("proj", broker="redis://localhost:6379/1")

    @app.task(name="proj.add")
    def add(x: int, y: int) -> int:
        return x + y

    install(app, Machinery.from_yaml("machinery.yml"), queue="machinery_tasks",
            tasks={"add": "proj.add"})

``celery -A proj worker`` (prefork, threads or solo pool) then also consumes the Machinery queue
``machinery_tasks``: a Go producer's ``add`` runs the Celery task ``proj.add`` in the
worker's pool and the Go side reads RECEIVED/STARTED/SUCCESS (or FAILURE with the error
text) and the Go-typed result from the Machinery backend.  Retries follow Machinery's
``RetryCount``/``RetryTimeout``; OnSuccess/OnError callbacks and chords are sent as a Go
worker sends them.  From Celery code, :func:`machinery_send` sends a Machinery (Go) task
and :func:`go_task` makes one a step of a Celery canvas.  See docs/celery.md.
"""

from __future__ import annotations

try:
    import celery as _celery  # noqa: F401  (absolute: the Celery package, not this one)
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("machinery_compat.celery needs Celery: pip install "
                      "'machinery-compat[celery]'") from e

from machinery_compat.celery.bridge import (
    CALL_TASK,
    Bridge,
    bridge_of,
    go_task,
    install,
    machinery_send,
)
from machinery_compat.celery.step import MachineryBridgeStep

__all__ = ["CALL_TASK", "Bridge", "MachineryBridgeStep", "bridge_of", "go_task", "install",
           "machinery_send"]
