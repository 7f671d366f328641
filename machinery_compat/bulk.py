"""``app.send_many``: Go's ``SendTask`` for many tasks, in bulk.

Each task gets what ``send_task`` gives it — a ``task_<uuid4>`` id, its PENDING state written
before its message is published, the pre-publish handler, the publish signals, a producer
span when traced — but the writes go in batches of ``chunk`` tasks:

* **Redis** broker and backend on one server: one write per chunk, ``SET`` PENDING then
  ``RPUSH`` (or ``ZADD`` for an ETA) for each task in turn, so every message follows its own
  PENDING on the connection; the replies are read once for the whole chunk.
* otherwise: the chunk's PENDING states one by one, then its messages — in one write on a
  Redis broker, in batches where the broker has them (``publish_many``: SQS
  ``SendMessageBatch``, Pub/Sub), else from ``send_concurrency`` threads (AMQP: each publish
  confirmed by RabbitMQ; their order then is not kept).

A failure raises :class:`~machinery_compat.exceptions.PublishError` naming how many tasks were
sent before the failing chunk; the tasks of that chunk may or may not have been stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .exceptions import BackendError, PublishError
from .protocol import Signature
from .result import AsyncResult

if TYPE_CHECKING:
    from .app import Machinery

#: what one item of ``send_many`` may be
Task = Signature | tuple[str, Sequence[Any]] | tuple[str, Sequence[Any], dict[str, Any]] | Any


def signatures(app: Machinery, tasks: Iterable[Task]) -> list[Signature]:
    """Each item as a validated, stamped Signature: a :class:`Signature`, a canvas ``Sig``
    (``add.s(1, 2)``), or ``(name, args)`` / ``(name, args, options)`` as ``send_task``
    takes them."""
    from .app import _stamp
    from .canvas import Sig

    out = []
    for item in tasks:
        if isinstance(item, Signature):
            sig = item
        elif isinstance(item, Sig):
            sig = item.to_signature()
        elif isinstance(item, tuple) and len(item) in (2, 3) and isinstance(item[0], str):
            options = dict(item[2]) if len(item) == 3 else {}
            sig = app.build_signature(item[0], item[1], where="send_many", **options)
        else:
            raise TypeError(f"send_many: a Signature, a Sig or (name, args[, options]), "
                            f"not {item!r}")
        sig.validate()
        _stamp(sig)
        out.append(sig)
    return out


def send_many(app: Machinery, tasks: Iterable[Task], *, chunk: int = 1000,
              send_concurrency: int = 8) -> list[AsyncResult]:
    """See :meth:`machinery_compat.Machinery.send_many`."""
    if chunk < 1:
        raise ValueError(f"send_many: chunk must be at least 1, not {chunk}")
    sigs = signatures(app, tasks)
    sent = 0
    for start in range(0, len(sigs), chunk):
        part = sigs[start:start + chunk]
        with app._producer_span(part, "SendTask"):
            try:
                _send_chunk(app, part, send_concurrency)
            except (PublishError, BackendError) as e:
                raise type(e)(f"{e} ({sent} of {len(sigs)} tasks sent before this chunk of "
                              f"{len(part)})") from e
        for sig in part:
            app._after_publish(sig)
        sent += len(part)
    backend = app.backend
    return [AsyncResult(s.uuid, backend, s.name) for s in sigs]


def _send_chunk(app: Machinery, part: Sequence[Signature], send_concurrency: int) -> None:
    from .app import _shared_fast_path
    from .config.masking import mask_url

    broker, backend = app.broker, app.backend
    fast = _shared_fast_path(broker, backend)
    if fast is not None:
        commands: list[tuple[Any, ...]] = []
        for sig in part:
            app._pre_publish(sig)
            app._before_publish(sig)
            commands.append(backend.pending_command(sig))  # type: ignore[attr-defined]
            commands.append(broker.publish_command(sig))  # type: ignore[attr-defined]
        try:
            fast.execute(*commands)
        except Exception as e:
            raise PublishError(f"Publish message error: {e} (the PENDING states and messages "
                               f"of {len(part)} tasks may not all have been stored on "
                               f"{mask_url(app.config.broker)})") from e
        return
    for sig in part:
        try:
            backend.set_state_pending(sig)
        except Exception as e:
            raise BackendError(f"Set state pending error: {e} (task {sig.uuid} {sig.name!r} "
                               "and the rest of its chunk were not published)") from e
    for sig in part:
        app._pre_publish(sig)
        app._before_publish(sig)
    publish_many = getattr(broker, "publish_many", None)
    broker_fast = getattr(broker, "fast", None)
    if broker_fast is not None and hasattr(broker, "publish_command"):  # Redis: one write
        try:
            broker_fast.execute(*[broker.publish_command(s) for s in part])
        except Exception as e:
            raise PublishError(f"Publish message error: {e} (the messages of {len(part)} "
                               f"tasks may not all have been queued)") from e
    elif publish_many is not None:
        publish_many(part)
    elif send_concurrency <= 1 or len(part) == 1:
        for sig in part:
            broker.publish(sig)
    else:
        with ThreadPoolExecutor(max_workers=min(send_concurrency, 64)) as pool:
            list(pool.map(broker.publish, part))
