"""The opt-in store of sent signatures (Celery's ``result_extended``, Machinery-style).

A TaskState holds a task's UUID, name and state, never its arguments: a stuck task cannot be
re-sent from it.  With ``Machinery(..., store_signatures=True)`` (or ``app.store_signatures =
True``) every message this app publishes — ``send_task``, ``apply_async``, group and chord
members, and the callbacks and retries its workers send — also leaves its Signature JSON, the
exact bytes published, next to the task's state:

* Redis backend: the key ``<task UUID>.sig``, with the states' expiry
  (``results_expire_in``);
* DynamoDB backend: the attribute ``Signature`` (S) of the task's item in ``task_states``
  (written after the PENDING ``PutItem``; it goes when the item goes);
* Memcache backend: the key ``<task UUID>.sig`` (on the server that key hashes to), with the
  states' expiry;
* other backends (AMQP, memory): nothing is stored (logged once).

Go never reads these (Go reads a state by its UUID key, and only the attributes it knows), and
the state's own JSON is untouched.  It costs one more write per message sent.
``machinery-compat stuck --resend`` re-sends what it finds here, byte for byte.
"""

from __future__ import annotations

import logging
from typing import Any

from ..exceptions import DecodeError
from ..protocol import Signature

logger = logging.getLogger(__name__)

#: appended to a task UUID: the Redis key of its stored Signature
SIGNATURE_SUFFIX = ".sig"
#: the DynamoDB attribute holding it
SIGNATURE_ATTRIBUTE = "Signature"

_warned: set[str] = set()


def signature_key(task_uuid: str) -> str:
    return task_uuid + SIGNATURE_SUFFIX


def _kind(backend: Any) -> str:
    names = {c.__name__ for c in type(backend).__mro__}
    for kind in ("RedisBackend", "DynamoDBBackend", "MemcacheBackend"):
        if kind in names:
            return kind
    return type(backend).__name__


def supported(backend: Any) -> bool:
    return _kind(backend) in ("RedisBackend", "DynamoDBBackend", "MemcacheBackend")


def store(backend: Any, sig: Signature) -> None:
    """Keep ``sig``'s JSON next to its state (see the module docs)."""
    kind = _kind(backend)
    body = sig.to_json()
    if kind == "RedisBackend":
        backend.client.set(signature_key(sig.uuid), body, ex=backend.expire_in)
    elif kind == "DynamoDBBackend":
        backend.client.update_item(
            TableName=backend.task_table, Key={"TaskUUID": {"S": sig.uuid}},
            UpdateExpression="SET #S = :s", ExpressionAttributeNames={"#S": SIGNATURE_ATTRIBUTE},
            ExpressionAttributeValues={":s": {"S": body.decode("utf-8", "surrogateescape")}})
    elif kind == "MemcacheBackend":
        backend.store_raw(signature_key(sig.uuid), body)
    elif kind not in _warned:
        _warned.add(kind)
        logger.warning("store_signatures: the %s result backend cannot keep signatures; "
                       "nothing stored (Redis, DynamoDB and Memcache can)", kind)


def store_quietly(backend: Any, sig: Signature) -> None:
    """:func:`store`, logging instead of raising: a lost record never stops a send."""
    try:
        store(backend, sig)
    except Exception as e:
        logger.warning("store_signatures: could not keep the signature of %s[%s]: %s",
                       sig.name, sig.uuid, e)


def load_raw(backend: Any, task_uuid: str) -> bytes | None:
    kind = _kind(backend)
    if kind == "RedisBackend":
        raw = backend.client.get(signature_key(task_uuid))
        return raw if isinstance(raw, bytes) else None
    if kind == "DynamoDBBackend":
        reply = backend.client.get_item(
            TableName=backend.task_table, Key={"TaskUUID": {"S": task_uuid}}, ConsistentRead=True,
            ProjectionExpression="#S", ExpressionAttributeNames={"#S": SIGNATURE_ATTRIBUTE})
        av = (reply.get("Item") or {}).get(SIGNATURE_ATTRIBUTE) or {}
        text = av.get("S")
        return text.encode("utf-8", "surrogateescape") if isinstance(text, str) else None
    if kind == "MemcacheBackend":
        got: bytes | None = backend.raw(signature_key(task_uuid))
        return got
    return None


def load(backend: Any, task_uuid: str) -> Signature | None:
    """The stored Signature of a task (``None``: none stored, or undecodable, logged)."""
    raw = load_raw(backend, task_uuid)
    if raw is None:
        return None
    try:
        return Signature.from_json(raw)
    except DecodeError as e:
        logger.warning("stored signature of %s is undecodable: %s", task_uuid, e)
        return None
