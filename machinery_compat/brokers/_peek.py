"""What a broker reads from a task message's body before the worker decodes it.

Brokers that hold messages (SQS, Pub/Sub) need a message's ETA when it arrives (to hold it
until then instead of handing it to a worker thread) and its ``StopTaskDeletionOnError`` flag
when a failed task is settled.  A body that does not decode gives the default here: the
worker dead-letters it with the decoding error.
"""

from __future__ import annotations

from ..exceptions import DecodeError
from ..protocol import Signature


def eta_ns(body: bytes) -> int | None:
    """The task's ETA (Unix ns), if the body decodes and has one."""
    if b'"ETA":null' in body:
        return None
    try:
        eta = Signature.from_json(body).eta
    except (DecodeError, ValueError):
        return None
    return None if eta is None else eta.unix_ns


def stop_task_deletion(body: bytes) -> bool:
    """The message's ``StopTaskDeletionOnError`` flag (False if the body does not decode)."""
    if b'"StopTaskDeletionOnError":false' in body:
        return False
    try:
        return Signature.from_json(body).stop_task_deletion_on_error
    except (DecodeError, ValueError):
        return False
