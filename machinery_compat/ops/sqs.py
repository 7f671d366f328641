"""Operator commands on the SQS broker (see :mod:`machinery_compat.brokers.sqs`).

SQS shows a queue's messages only by *receiving* them, which hides them from workers for the
visibility timeout and counts toward the queue's redrive policy (``maxReceiveCount``).  So:

* ``inspect pending`` and ``inspect delayed`` are not supported on SQS (one line, exit 1);
  ``status`` gives SQS's approximate counts instead (``ApproximateNumberOfMessages``,
  ``…NotVisible`` = in flight, ``…Delayed``);
* ``purge``: ``PurgeQueue`` (SQS allows one per queue every 60 s; the count printed is the
  approximate one read just before);
* dead letters: the queue ``<queue>-dead`` (``<name>-dead.fifo`` for a FIFO queue), where
  Python workers put undecodable messages with the message attribute ``reason``.  ``dead
  list`` receives them with a short visibility timeout and makes them visible again at once
  (``ChangeMessageVisibility`` 0); on a FIFO dead queue only the first message of each message
  group is seen per call.  ``dead requeue`` sends each body, unchanged, to ``<queue>`` (FIFO:
  its message group id, deduplication id = SHA-256 of body + message id) and deletes it from
  the dead queue only after the send succeeded; on an error the messages not moved are made
  visible again.  ``dead purge``: ``PurgeQueue`` of the dead queue.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

from ..brokers.sqs import dead_letter_queue, is_fifo
from ..exceptions import BrokerError
from .base import BrokerOps, Message, QueueDepth, Unsupported

#: seconds a browsed or moving message stays invisible to workers
BROWSE_VISIBILITY = 30
_MISSING = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})


class _Missing(Exception):
    pass


def _code(e: BaseException) -> str:
    response = getattr(e, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class SQSOps(BrokerOps):
    kind = "sqs"

    @property
    def client(self) -> Any:
        return self.broker.client

    def dead_place(self, queue: str) -> str:
        return dead_letter_queue(queue)

    @contextlib.contextmanager
    def _aws(self, doing: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as e:
            if _code(e) in _MISSING:
                raise _Missing(doing) from e
            raise BrokerError(f"SQS: {doing}: {e}") from e
        except BotoCoreError as e:
            raise BrokerError(f"SQS: {doing}: {e}") from e

    def counts(self, queue: str) -> dict[str, int] | None:
        """SQS's approximate counts (``None``: no such queue)."""
        names = {"ApproximateNumberOfMessages": "visible",
                 "ApproximateNumberOfMessagesNotVisible": "in_flight",
                 "ApproximateNumberOfMessagesDelayed": "delayed"}
        try:
            with self._aws(f"read the attributes of {queue}"):
                reply = self.client.get_queue_attributes(QueueUrl=self.broker.queue_url(queue),
                                                         AttributeNames=list(names))
        except _Missing:
            return None
        attrs = reply.get("Attributes", {})
        return {short: int(attrs.get(name, 0)) for name, short in names.items()}

    def depth(self, queue: str) -> QueueDepth:
        counts = self.counts(queue)
        if counts is None:
            return QueueDepth(queue, 0, {"in_flight": 0, "delayed": 0, "missing": 1})
        return QueueDepth(queue, counts["visible"],
                          {"in_flight": counts["in_flight"], "delayed": counts["delayed"]})

    def pending(self, queue: str, limit: int) -> list[Message]:
        raise Unsupported("SQS cannot list a queue's messages without receiving them (which "
                          "hides them from workers and counts toward a redrive policy); "
                          "`machinery-compat status` shows SQS's approximate counts")

    def delayed(self, limit: int, queues: Sequence[str] = ()) -> list[Message]:
        raise Unsupported("SQS cannot list delayed messages; `machinery-compat status` shows "
                          "SQS's approximate count of them per queue")

    def delayed_count(self, queues: Sequence[str] = ()) -> int | None:
        total = 0
        for q in queues:
            counts = self.counts(q)
            total += counts["delayed"] if counts else 0
        return total

    def purge(self, queue: str) -> int:
        counts = self.counts(queue)
        if counts is None:
            return 0
        with self._aws(f"purge {queue}"):
            self.client.purge_queue(QueueUrl=self.broker.queue_url(queue))
        return counts["visible"] + counts["delayed"] + counts["in_flight"]

    def _receive(self, queue: str, n: int) -> list[dict[str, Any]]:
        try:
            with self._aws(f"receive from {queue}"):
                reply = self.client.receive_message(
                    QueueUrl=self.broker.queue_url(queue), MaxNumberOfMessages=max(1, min(n, 10)),
                    WaitTimeSeconds=0, VisibilityTimeout=BROWSE_VISIBILITY,
                    MessageSystemAttributeNames=["MessageGroupId"],
                    MessageAttributeNames=["All"])
        except _Missing:
            return []
        messages: list[dict[str, Any]] = reply.get("Messages") or []
        return messages

    def _show_again(self, queue: str, messages: Sequence[dict[str, Any]]) -> None:
        url = self.broker.queue_url(queue)
        for start in range(0, len(messages), 10):
            chunk = messages[start:start + 10]
            with self._aws(f"make messages of {queue} visible again"):
                self.client.change_message_visibility_batch(QueueUrl=url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                    for i, m in enumerate(chunk)])

    @staticmethod
    def _message(m: dict[str, Any], place: str) -> Message:
        reason = ((m.get("MessageAttributes") or {}).get("reason") or {}).get("StringValue", "")
        return Message(str(m.get("Body", "")).encode("utf-8"), place, reason=str(reason))

    def dead_list(self, queue: str, limit: int) -> list[Message]:
        dead = self.dead_place(queue)
        seen: dict[str, dict[str, Any]] = {}
        received: list[dict[str, Any]] = []
        try:
            while len(seen) < limit:
                batch = self._receive(dead, limit - len(seen))
                if not batch:
                    break
                received += batch
                for m in batch:
                    seen.setdefault(m["MessageId"], m)
        finally:
            if received:
                self._show_again(dead, received)
        return [self._message(m, dead) for m in seen.values()]

    def dead_requeue(self, queue: str, limit: int) -> int:
        dead = self.dead_place(queue)
        url, dead_url = self.broker.queue_url(queue), self.broker.queue_url(dead)
        moved = 0
        while moved < limit:
            batch = self._receive(dead, limit - moved)
            if not batch:
                break
            for i, m in enumerate(batch):
                params: dict[str, Any] = {"QueueUrl": url, "MessageBody": m["Body"]}
                if is_fifo(queue):
                    params["MessageGroupId"] = (m.get("Attributes") or {}).get(
                        "MessageGroupId") or "machinery_compat"
                    params["MessageDeduplicationId"] = hashlib.sha256(
                        m["Body"].encode("utf-8") + m["MessageId"].encode()).hexdigest()
                try:
                    with self._aws(f"send a message to {queue}"):
                        self.client.send_message(**params)
                except BaseException as e:
                    with contextlib.suppress(Exception):
                        self._show_again(dead, batch[i:])
                    if isinstance(e, _Missing):
                        raise BrokerError(f"SQS: queue {queue} does not exist: nothing "
                                          f"moved from {dead}") from e
                    raise
                with self._aws(f"delete a message from {dead}"):
                    self.client.delete_message(QueueUrl=dead_url, ReceiptHandle=m["ReceiptHandle"])
                moved += 1
        return moved

    def dead_purge(self, queue: str) -> int:
        return self.purge(self.dead_place(queue))
