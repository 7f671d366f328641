"""The sublime-security fork's worker semantics, for apps with ``wire_dialect="sublime"``.

Upstream apps never reach this module (each entry point first checks :func:`active`).

* :func:`fill_received`: the SQS receive fields the fork's consumer writes into a signature
  before its task runs (the Azure broker fills its own).
* :func:`count_attempt`: ``AttemptCount`` + 1 on a retry's copy (the fork's ``taskRetry``,
  ``retryTaskIn`` and ``keepAndRetryTaskIn`` all increment it; hand-backs do not).
* :func:`keeps_messages`: whether the broker can keep the current message and change its
  visibility (the fork's ``RetrySameMessage`` brokers: SQS and Azure).
* :func:`unknown_task`: the fork's unknown-task hook (``app.on_unknown_task``), its decision
  carried out on the message: dropped, handed back now, or (SQS, Azure) made visible again
  in ``retry_in``; elsewhere ``retry_in`` is ignored and it is handed back at once, as the
  fork's Redis broker does.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..protocol import GoTime, Signature
from ..protocol.sublime import SUBLIME, fill_sqs_receipt, unknown_task_decision

if TYPE_CHECKING:
    from ..brokers.base import Delivery

logger = logging.getLogger("machinery_compat.worker")


def active(app: Any) -> bool:
    """Whether ``app`` speaks the fork's dialect (its worker semantics apply)."""
    return bool(app.config.wire_dialect == SUBLIME)


def fill_received(app: Any, sig: Signature, delivery: Delivery) -> None:
    """The fork's SQS consumer fields (``fill_sqs_receipt``) from an SQS delivery's receive
    attributes; other brokers' deliveries are left alone."""
    extra = delivery.extra
    receipt = extra.get("receipt_handle") if extra else None
    if receipt is None or "sent_timestamp" not in extra:
        return
    fill_sqs_receipt(
        sig, queue=delivery.queue, receipt_handle=str(receipt),
        message_id=str(extra.get("message_id", "")),
        receive_count=extra.get("receive_count"),
        sent_ms=extra.get("sent_timestamp") or None,
        first_ms=extra.get("first_receive_timestamp") or None,
        now=GoTime.now())


def count_attempt(app: Any, again: Signature) -> None:
    """``AttemptCount`` + 1 on the copy a retry sends (sublime apps only)."""
    if active(app):
        again.attempt_count += 1


def keeps_messages(app: Any, delivery: Delivery | None) -> bool:
    """Whether a keep-and-retry can keep ``delivery`` (a sublime app, a broker with message
    visibility, a message received from it)."""
    return (delivery is not None and active(app)
            and bool(getattr(app.broker, "retries_same_message", False)))


def unknown_task(worker: Any, delivery: Delivery, sig: Signature) -> bool:
    """Run the app's unknown-task hook on ``sig`` and settle ``delivery`` as it decides;
    False when there is no hook (or the app is not sublime): the ordinary rules apply."""
    app = worker.app
    hook = getattr(app, "_unknown_task_hook", None)
    if hook is None or not active(app):
        return False
    broker = app.broker
    try:
        keep, retry_in = unknown_task_decision(hook(sig.copy()))
    except Exception as e:
        logger.error("unknown-task hook %r failed for task %s[%s] (%s): the message is "
                     "handed back to %s", hook, sig.name, sig.uuid, e, delivery.queue)
        keep, retry_in = True, 0.0
    if not keep:
        worker._settle(delivery, lambda: broker.drop(delivery), f"drop task {sig.uuid}")
        worker.outcomes["dropped"] += 1
        logger.warning("Task %s[%s] is not registered here: dropped (unknown-task hook)",
                       sig.name, sig.uuid)
        return True
    if (retry_in > 0 and getattr(broker, "retries_same_message", False)
            and worker._hand_back_later(delivery, sig, retry_in)):
        logger.warning("Task %s[%s] is not registered here: handed back to %s in %gs "
                       "(unknown-task hook)", sig.name, sig.uuid, delivery.queue, retry_in)
        return True
    worker._settle(delivery, lambda: broker.requeue([delivery]),
                   f"hand task {sig.uuid} back to {delivery.queue}")
    worker.outcomes["handed_back"] += 1
    logger.warning("Task %s[%s] is not registered here: handed back to %s (unknown-task "
                   "hook)", sig.name, sig.uuid, delivery.queue)
    return True


def kept(worker: Any, r: BaseException, delivery: Delivery | None, delay: float) -> bool:
    """A keep-and-retry (:class:`~machinery_compat.task.KeepAndRetry`) carried out by keeping
    ``delivery``: the broker makes it visible again in ``delay`` s instead of a new message
    being sent (True; the fork's ``RetryMessage``).  False when it does not apply (no keep
    requested, an upstream app, a broker without visibility: the caller re-sends) or the
    broker could not do it (logged; the caller re-sends, so the retry is not lost)."""
    if not getattr(r, "keep_message", False) or not keeps_messages(worker.app, delivery):
        return False
    assert delivery is not None
    try:
        done = bool(worker.app.broker.requeue_later([delivery], delay))
    except Exception as e:
        logger.error("could not keep message %s of %s for its retry in %gs (%s): sending "
                     "the retry as a new message instead", delivery.extra.get("message_id", "?"),
                     delivery.queue, delay, e)
        return False
    if done:
        delivery.settled = True
        logger.info("message %s of %s kept: visible again in %gs (keep-and-retry)",
                    delivery.extra.get("message_id", "?"), delivery.queue, delay)
    return done


__all__ = ["active", "count_attempt", "fill_received", "keeps_messages", "kept", "unknown_task"]
