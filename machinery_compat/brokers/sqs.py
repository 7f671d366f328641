"""AWS SQS broker (boto3), with Go Machinery's wire format (§5.3 of the protocol notes).

URL: the broker URL is the queue URL prefix, as in Go: ``https://sqs.<region>.amazonaws.com/
<account id>``; a queue's URL is that prefix + ``"/"`` + the queue name (plain concatenation: no
``GetQueueUrl``, no name mangling).  Queues are not created (except dead-letter queues, below):
create them as you do for Go workers.  ``http://`` URLs work too (emulators: moto, ElasticMQ,
LocalStack).

Configuration (YAML section ``sqs``, the one Go reads; ``SQSConfig`` in code):

* ``receive_wait_time_seconds`` (``SQS_WAIT_TIME_SECONDS``): the long-poll wait.  Go's default
  0 short-polls in a busy loop; a Python worker always long-polls, at most this many seconds
  (0: 20 s, SQS's maximum) and never longer than the worker's own poll period (so a stop is
  not held up); a wait below one second short-polls and then sleeps out the rest.
* ``receive_visibility_timeout`` (``SQS_VISIBILITY_TIMEOUT``): sent with every
  ``ReceiveMessage``; unset, the queue's own visibility timeout applies.
* ``visibility_hearth_beat`` (sic, ``SQS_VISIBILITY_HEARTBEAT``): Go v2 extends the visibility
  of a message while its task runs only with this set.  A Python worker always does (below).
* Python only: ``endpoint_url`` (``SQS_ENDPOINT_URL``), where boto3 sends its calls (VPC
  endpoints, emulators); empty: the broker URL's own host when that is not an AWS host (an
  emulator's URL just works), else boto3's endpoint for the region.  ``region``
  (``SQS_REGION``); empty: the region an ``https://sqs.<region>.amazonaws.com/...`` broker
  URL names (where its queues are), else boto3's standard chain (``AWS_REGION``/
  ``AWS_DEFAULT_REGION``, profile).  Credentials
  always come from boto3's standard chain (environment, profile, instance/task role), or pass
  your own client as ``SQSConfig(client=boto3.client("sqs", ...))``.
* Python only: ``max_delay_seconds`` (``SQS_MAX_DELAY_SECONDS``), the longest ``DelaySeconds``
  sent (default 900, SQS's limit; <= 0 means 900, more is a ``ConfigError``): see ETAs below.

Install with ``pip install machinery-compat[aws]`` (boto3).

Producing
---------

* ``SendMessage(QueueUrl=<broker>/<routing key>, MessageBody=<Signature JSON>)``, no message
  attributes.  As in Go, the JSON is encoded *before* an empty routing key is defaulted, so a
  task sent without one carries ``"RoutingKey":""`` while going to the default queue.
* ETA: ``DelaySeconds`` = whole seconds until the ETA, truncated as Go does, so a message
  becomes visible up to a second early (a Go worker then runs the task early).  SQS delays at
  most 15 minutes and Go refuses a later ETA (``Max AWS SQS delay exceeded``); this broker
  sends such a task with the longest delay (900 s; the Python-only ``max_delay_seconds`` /
  ``SQS_MAX_DELAY_SECONDS`` sets a shorter one, for tests and fast clocks).  A **Python**
  worker never runs a task before its ETA: one received less than :data:`HOLD_LIMIT` (2 s)
  early is held by the consumer (invisible, its visibility extended) until due; one received
  earlier than that is handed back: the same bytes are sent again with the delay still needed
  (at most that longest delay) and the received copy is deleted, until the task is due.  A new message each step, not a longer
  visibility timeout: a message received again and again would count toward a queue's
  redrive policy (``maxReceiveCount``) and age toward its retention period.  A **Go** worker
  ignores ETAs: it runs such a task when it receives it, up to 15 minutes early.
* FIFO queues (name ending in ``.fifo``): ``MessageGroupId`` = the signature's
  ``BrokerMessageGroupId`` (required; Go's error text otherwise); ETA ignored, as Go does (a
  delay would hold up the whole message group).  ``MessageDeduplicationId``: Go uses the task
  UUID, so SQS silently drops a retry (same UUID) sent within its 5-minute deduplication
  window; this broker uses the SHA-256 of the message body instead, which differs for every
  retry (RetryCount, ETA and the retries header change) while a publish repeated with the
  same bytes is still deduplicated.
* :meth:`SQSBroker.publish_many` (used by ``send_group``) sends ``SendMessageBatch`` calls of
  at most 10 messages (and 256 KiB); entries SQS failed on its side are sent again (3 tries),
  entries it refused raise :class:`~machinery_compat.exceptions.PublishError` naming them.

Consuming
---------

* ``ReceiveMessage`` with ``MaxNumberOfMessages`` = what the worker can take (at most 10), the
  wait above, ``VisibilityTimeout`` when configured, the ``ApproximateReceiveCount``,
  ``SentTimestamp`` and ``MessageGroupId`` system attributes and every message attribute.  A
  worker consuming several queues short-polls them in turn (in the order it asks, rotating),
  then long-polls all of them at once in background threads; what they receive waits in the
  consumer (held, see below) for the worker's next fetch.  A :class:`Delivery`'s ``tag`` is
  the message's receipt handle; ``extra`` holds the queue URL, message id, receive count and
  sent time.  The body is not rewritten: Go sets the signature's ``SQSReceiptHandle`` in
  memory only (it then leaks into the bytes of a retry Go re-sends; nothing reads it), a
  Python worker leaves the field as it came.
* FIFO queues: a consumer hands out one message per message group at a time (SQS's
  guarantee, which a receive of up to 10 messages would otherwise break on a worker running
  several tasks at once).  The other messages of the group it received wait in the consumer
  (held: heartbeat below) until the one handed out is deleted (acknowledged, dropped or
  dead-lettered); then the next is handed out.  If it is handed back instead, or left in
  flight (``StopTaskDeletionOnError``), the waiting ones are given back too: SQS hands them
  out again in order, after it.  While messages wait, the consumer's long polls run in a
  background thread, so that a message released meanwhile is handed out at once.
* Visibility heartbeat: while a worker holds a message (from receipt until it is settled,
  also while it waits in the consumer), one thread per worker extends its visibility
  (``ChangeMessageVisibilityBatch``) every half visibility timeout, with the configured timeout or else the queue's own
  (``GetQueueAttributes``, read once per queue; without that permission no heartbeat), up to
  SQS's 12 hours.  A task longer than the timeout therefore never runs twice.  (Go v2 does
  this only with ``visibility_hearth_beat``, and runs two heartbeat loops per message.)
* Settling: acknowledged = ``DeleteMessage``, after the task's final state was stored.  A task
  that failed with ``StopTaskDeletionOnError`` is not deleted (it comes back after the
  visibility timeout, and the queue's redrive policy can move it to a DLQ), as in Go.  Given
  back (a task this worker lacks; taken but not started when the worker stops; or waiting in
  the consumer then) = ``ChangeMessageVisibility(0)``: visible at once to any worker;
  :meth:`~SQSBroker.requeue_later` = ``ChangeMessageVisibility(delay)``, so a worker meeting
  a task it cannot run again and again does not spin on it.  Dropped
  (``IgnoreWhenTaskNotRegistered``) = deleted.  Undecodable: Go deletes it; this broker first
  sends the bytes to the dead-letter queue ``<queue>-dead`` (``<name>-dead.fifo`` for a FIFO
  queue; SQS names allow no ``.``), created when missing, with the message attribute
  ``reason``, then deletes it.
* Errors: boto3's ``standard`` retry mode retries throttling and transient errors; a delete
  is retried a few more times, then left to the worker (which retries until it stops; the
  message would then be received again: at-least-once).  A receipt handle SQS no longer
  accepts (the message became visible again and was received elsewhere) is logged, not
  raised.  Connection errors and exhausted retries raise
  :class:`~machinery_compat.exceptions.BrokerConnectionError` (the worker backs off and
  retries), a missing queue too (with its URL in the message).

Inspection: SQS cannot list a queue without receiving its messages (which hides them and
counts toward redrive policies), so :meth:`~SQSBroker.pending_tasks` and
:meth:`~SQSBroker.delayed_tasks` raise ``NotImplementedError``;
:meth:`~SQSBroker.queue_depth` returns SQS's approximate counts.

Threads and processes: one boto3 client per broker and process (clients are thread-safe;
boto3 sessions are not, so each client is made under a lock from its own session); a forked
child makes its own client and heartbeat thread.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import hashlib
import heapq
import itertools
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..exceptions import (
    BrokerConnectionError,
    BrokerError,
    ConfigError,
    EncodeError,
    PublishError,
)
from ..protocol import Signature
from ..protocol.sublime import SQS_MAX_DELAY_SECONDS, sqs_delay_seconds
from ._aside import StepAside
from ._held import Held, Holdings
from ._peek import eta_ns, stop_task_deletion
from .base import Broker, Delivery

if TYPE_CHECKING:
    from ..config import Config, SQSConfig

logger = logging.getLogger(__name__)

#: SQS's longest ``DelaySeconds`` (15 minutes); Go refuses longer delays.  The broker sends at
#: most ``sqs.max_delay_seconds`` (this by default).
MAX_DELAY = 900
#: SQS's longest long-poll wait; what a Python worker waits (capped by its poll period) when
#: ``receive_wait_time_seconds`` is 0.
DEFAULT_WAIT = 20
#: SQS's most messages per ReceiveMessage / SendMessageBatch / ChangeMessageVisibilityBatch.
MAX_BATCH = 10
#: SQS's largest total payload of one SendMessageBatch (bytes).
MAX_BATCH_BYTES = 256 * 1024
#: SQS's longest visibility of one received message (12 hours from its receipt).
MAX_VISIBILITY = 12 * 3600
#: A task received less than this many seconds before its ETA is held by the consumer
#: (invisible, its visibility extended) until due; one due later is handed back.
HOLD_LIMIT = 2.0
#: Go's error for a FIFO task without a message group (``BrokerMessageGroupId``).
FIFO_GROUP_ERROR = ("please specify BrokerMessageGroupId attribute for task Signature when "
                    "submitting a task to FIFO queue")
#: the dead-letter queue of a queue: ``<queue>-dead``, or ``<name>-dead.fifo``
DEAD_SUFFIX = "-dead"
#: tries of a delete (and of a batch's retryable entries) before giving up
_TRIES = 3
_FIRST_BACKOFF = 0.2

_MISSING_QUEUE = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
_BAD_RECEIPT = frozenset({"ReceiptHandleIsInvalid", "AWS.SimpleQueueService.MessageNotInflight",
                          "MessageNotInflight", "InvalidReceiptHandle"})
_TRANSIENT = frozenset({
    "ThrottlingException", "Throttling", "RequestThrottled", "ServiceUnavailable",
    "AWS.SimpleQueueService.ServiceUnavailable", "InternalError", "InternalFailure",
    "RequestTimeout", "RequestTimeoutException", "SlowDown", "KmsThrottled",
    "TooManyRequestsException",
})
_SYSTEM_ATTRIBUTES = ["ApproximateReceiveCount", "SentTimestamp", "MessageGroupId"]
#: what a sublime-dialect app asks for (the fork's consumer fills FirstReceived from it)
_SUBLIME_ATTRIBUTES = [*_SYSTEM_ATTRIBUTES, "ApproximateFirstReceiveTimestamp"]

_AWS_HOST = re.compile(r"(^|\.)amazonaws\.com(\.cn)?$", re.IGNORECASE)
_URL_REGION = (
    re.compile(r"(?:^|\.)sqs[.-]([a-z]{2}(?:-[a-z]+)+-\d+)\.amazonaws\.com", re.IGNORECASE),
    re.compile(r"^([a-z]{2}(?:-[a-z]+)+-\d+)\.queue\.amazonaws\.com", re.IGNORECASE),
)


def is_fifo(queue: str) -> bool:
    """A FIFO queue's name ends with ``.fifo`` (Go tests the routing key the same way)."""
    return queue.endswith(".fifo")


def dead_letter_queue(queue: str) -> str:
    """Where this broker keeps undecodable messages of ``queue`` (``<queue>-dead``, or
    ``<name>-dead.fifo`` for a FIFO queue: SQS queue names cannot contain ``.``)."""
    if is_fifo(queue):
        return queue[: -len(".fifo")] + DEAD_SUFFIX + ".fifo"
    return queue + DEAD_SUFFIX


def deduplication_id(body: bytes) -> str:
    """A FIFO message's ``MessageDeduplicationId``: the SHA-256 of its bytes (Go: the task
    UUID, which makes SQS drop a retry sent within 5 minutes; every retry's bytes differ)."""
    return hashlib.sha256(body).hexdigest()


def delay_seconds(eta_unix_ns: int, now_ns: int) -> int:
    """Go's ``DelaySeconds``: whole seconds from now to the ETA, truncated; 0 when past."""
    delay = eta_unix_ns - now_ns
    return delay // 1_000_000_000 if delay > 0 else 0


def region_from_url(url: str) -> str | None:
    """The region named in an ``https://sqs.<region>.amazonaws.com/...`` URL, if any."""
    host = urlsplit(url).hostname or ""
    for pattern in _URL_REGION:
        m = pattern.search(host)
        if m:
            return m.group(1).lower()
    return None


def endpoint_from_url(url: str) -> str | None:
    """The broker URL's origin when it is not an AWS host (an emulator), else ``None``."""
    parts = urlsplit(url)
    if not parts.hostname or _AWS_HOST.search(parts.hostname):
        return None
    return f"{parts.scheme}://{parts.netloc}"


def _require_boto3() -> Any:
    try:
        import boto3
    except ImportError as e:
        raise ConfigError("the SQS broker needs boto3: pip install machinery-compat[aws]") from e
    return boto3


def _error_code(e: BaseException | None) -> str:
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _client_errors() -> tuple[tuple[type[BaseException], ...], type[BaseException]]:
    """(connection-level errors, ``ClientError``) of botocore."""
    from botocore import exceptions as bx

    return (bx.ConnectionError, bx.HTTPClientError, bx.NoCredentialsError,
            bx.PartialCredentialsError), bx.ClientError


@dataclass
class _Held(Held):
    """A message a consumer holds (received, not settled yet)."""

    queue_url: str = ""
    extended: float = 0.0  # monotonic: when its visibility was last set
    visibility: int = 0  # seconds it was last set to (0: unknown)


@dataclass
class _Group:
    """A FIFO message group a consumer holds messages of: the one handed out (or about to be,
    in the buffer) and those received after it, waiting for it to be settled."""

    head: str  # receipt handle
    waiting: collections.deque[Delivery]


class SQSBroker(Broker):
    """See the module documentation."""

    schemes = ("https", "http")
    #: the fork's ``RetrySameMessage``: a keep-and-retry changes the message's visibility
    retries_same_message = True
    #: ``wire_dialect="sublime"`` (from the config): also ask for the first-receive time
    sublime = False

    def __init__(
        self,
        url: str,
        default_queue: str = "machinery_tasks",
        *,
        sqs: SQSConfig | None = None,
        client: Any = None,
        default_wait: int = DEFAULT_WAIT,
    ) -> None:
        """``client``: a boto3 SQS client (else ``sqs.client``, else one is made from the
        config); ``default_wait``: the long-poll wait when ``receive_wait_time_seconds`` is 0.
        The longest ``DelaySeconds`` sent is ``sqs.max_delay_seconds`` (SQS's 900 s;
        :class:`ConfigError` above that)."""
        from ..config import SQSConfig

        super().__init__(default_queue)
        self.url = url
        self.cfg = sqs if sqs is not None else SQSConfig()
        #: the longest ``DelaySeconds`` sent, and the step of a hand-back (from the config)
        self.max_delay = self.cfg.effective_max_delay_seconds
        self.default_wait = default_wait
        self._given_client = client if client is not None else self.cfg.client
        if self._given_client is None:
            _require_boto3()
        self._client: Any = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._consumer: SQSConsumer | None = None
        self._consumers: list[SQSConsumer] = []
        #: queue name -> its VisibilityTimeout attribute (None: could not be read)
        self._queue_visibility: dict[str, int | None] = {}
        self._deleter = _Deleter(self)

    @classmethod
    def from_config(cls, config: Config) -> SQSBroker:
        broker = cls(config.broker, config.default_queue, sqs=config.sqs)
        broker.sublime = config.wire_dialect == "sublime"
        return broker

    # -- client -------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The boto3 SQS client (made on first use, and again in a forked child)."""
        if self._given_client is not None:
            return self._given_client
        if self._client is not None and self._pid == os.getpid():
            return self._client
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                self._client = self._make_client()
                self._pid = os.getpid()
            return self._client

    def _make_client(self) -> Any:
        boto3 = _require_boto3()
        from botocore.config import Config as BotoConfig
        from botocore.exceptions import NoRegionError

        endpoint = self.cfg.endpoint_url or endpoint_from_url(self.url)
        boto_config = BotoConfig(
            retries={"mode": "standard", "max_attempts": 5},
            connect_timeout=5,
            read_timeout=max(DEFAULT_WAIT, self.cfg.wait_time_seconds) + 10,
            max_pool_connections=50,
        )
        session = boto3.session.Session()
        # the queues' own region (named in an AWS queue URL) before boto3's default region
        region = self.cfg.region or region_from_url(self.url)
        try:
            return session.client("sqs", endpoint_url=endpoint, region_name=region,
                                  config=boto_config)
        except NoRegionError:
            raise ConfigError(
                "the SQS broker needs an AWS region: set AWS_REGION (or AWS_DEFAULT_REGION, or "
                "a profile's region), or sqs.region in the config") from None

    def queue_url(self, queue: str) -> str:
        """Go's queue URL: the broker URL + ``"/"`` + the queue name."""
        return self.url + "/" + queue

    @contextlib.contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        """botocore errors as this library's: connection trouble, throttling and SQS's own
        transient errors (after boto3's retries) and a missing queue as
        :class:`BrokerConnectionError`; anything else SQS refused as :class:`BrokerError`."""
        connection, client_error = _client_errors()
        try:
            yield
        except connection as e:
            raise BrokerConnectionError(f"SQS broker: {doing}: {e}") from e
        except client_error as e:
            code = _error_code(e)
            if code in _MISSING_QUEUE:
                raise BrokerConnectionError(
                    f"SQS broker: {doing}: the queue does not exist ({e}); create it, e.g. "
                    f"`aws sqs create-queue --queue-name <name>`") from e
            if code in _TRANSIENT:
                raise BrokerConnectionError(f"SQS broker: {doing}: {e}") from e
            raise BrokerError(f"SQS broker: {doing}: {e}") from e

    # -- producer -----------------------------------------------------------------------
    def message_params(self, sig: Signature, now_ns: int | None = None) -> dict[str, Any]:
        """``SendMessage`` parameters for ``sig`` as Go builds them (body encoded before the
        routing key is defaulted; see the module documentation for the FIFO id and long
        delays).  Adjusts ``sig.routing_key``."""
        body = sig.to_json()
        self.adjust_routing_key(sig)
        if sig.wire_dialect == "sublime" and sig.delay > 0 and not is_fifo(sig.routing_key):
            # the fork: DelaySeconds = whole seconds of Delay, clamped (upstream Go refuses)
            params = self._params_for(sig.routing_key, body, "", None, now_ns)
            seconds = sqs_delay_seconds(sig.delay) or 0
            if seconds > self.max_delay or sig.delay > SQS_MAX_DELAY_SECONDS * 10**9:
                logger.warning("task %s[%s]: Delay of %d s clamped to DelaySeconds %d (as the "
                               "sublime fork does)", sig.name, sig.uuid, sig.delay // 10**9,
                               min(seconds, self.max_delay))
            params["DelaySeconds"] = min(seconds, self.max_delay)
            return params
        return self._params_for(sig.routing_key, body, sig.broker_message_group_id, sig.eta,
                                now_ns)

    def _params_for(self, queue: str, body: bytes, group_id: str, eta: Any,
                    now_ns: int | None = None) -> dict[str, Any]:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise EncodeError(f"an SQS message body must be UTF-8 text: {e}") from e
        params: dict[str, Any] = {"QueueUrl": self.queue_url(queue), "MessageBody": text}
        if is_fifo(queue):
            if not group_id:
                raise PublishError(FIFO_GROUP_ERROR)
            params["MessageGroupId"] = group_id
            params["MessageDeduplicationId"] = deduplication_id(body)
        elif eta is not None:
            delay = delay_seconds(eta.unix_ns, time.time_ns() if now_ns is None else now_ns)
            if delay > self.max_delay:
                logger.debug("task due in %d s: sent with SQS's longest delay (%d s); a Python "
                             "worker hands it back until due", delay, self.max_delay)
                delay = self.max_delay
            if delay > 0:
                params["DelaySeconds"] = delay
        return params

    def publish(self, sig: Signature) -> None:
        params = self.message_params(sig)
        try:
            with self._translated(f"send task {sig.name}[{sig.uuid}] to {params['QueueUrl']}"):
                self.client.send_message(**params)
        except BrokerError as e:
            raise PublishError(f"Publish message error: {e}") from e

    def publish_many(self, sigs: Sequence[Signature]) -> None:
        """Publish ``sigs`` with ``SendMessageBatch`` (per queue, at most 10 messages and
        256 KiB a call).  Entries SQS failed on its side are sent again (3 tries); entries it
        refused, or still failing, raise :class:`PublishError` naming the tasks (the others
        were sent)."""
        by_queue: dict[str, list[tuple[Signature, dict[str, Any]]]] = {}
        for sig in sigs:
            params = self.message_params(sig)
            by_queue.setdefault(params.pop("QueueUrl"), []).append((sig, params))
        failures: list[str] = []
        for queue_url, entries in by_queue.items():
            for chunk in _chunks(entries):
                failures += self._send_batch(queue_url, chunk)
        if failures:
            raise PublishError(f"Publish message error: {len(failures)} of {len(sigs)} "
                               f"message(s) were not sent: {'; '.join(failures[:10])}"
                               + (" …" if len(failures) > 10 else ""))

    def _send_batch(self, queue_url: str,
                    chunk: list[tuple[Signature, dict[str, Any]]]) -> list[str]:
        """Send one batch; returns descriptions of the entries that could not be sent."""
        pending = {str(i): (sig, params) for i, (sig, params) in enumerate(chunk)}
        refused: list[str] = []
        for attempt in range(_TRIES):
            entries = [{"Id": i, **params} for i, (_, params) in pending.items()]
            try:
                with self._translated(f"send {len(entries)} message(s) to {queue_url}"):
                    reply = self.client.send_message_batch(QueueUrl=queue_url, Entries=entries)
            except BrokerError as e:
                raise PublishError(f"Publish message error: {e} (tasks "
                                   f"{', '.join(s.uuid for s, _ in pending.values())} were not "
                                   f"sent)") from e
            for ok in reply.get("Successful", ()):
                pending.pop(ok["Id"], None)
            retry: dict[str, tuple[Signature, dict[str, Any]]] = {}
            for bad in reply.get("Failed", ()):
                entry = pending.pop(bad["Id"], None)
                if entry is None:
                    continue
                why = f"{bad.get('Code', '?')}: {bad.get('Message', '')}"
                if bad.get("SenderFault") or attempt + 1 == _TRIES:
                    refused.append(f"task {entry[0].name}[{entry[0].uuid}] ({why})")
                else:
                    retry[bad["Id"]] = entry
            pending = retry
            if not pending:
                break
            time.sleep(_FIRST_BACKOFF * 2 ** attempt)
        return refused

    # -- consumer -----------------------------------------------------------------------
    def consumer(self, queues: Sequence[str], *, crash_safe: bool = True,
                 heartbeat_ttl: float | None = None) -> Broker:
        """A :class:`SQSConsumer` for one worker (its own heartbeat thread).  SQS keeps every
        message received until it is deleted, so consuming is always crash-safe; the
        arguments are not used."""
        consumer = SQSConsumer(self)
        with self._lock:
            self._consumers.append(consumer)
        return consumer

    def _default_consumer(self) -> SQSConsumer:
        with self._lock:
            if self._consumer is None:
                self._consumer = SQSConsumer(self)
                self._consumers.append(self._consumer)
            return self._consumer

    def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        return self._default_consumer().fetch(queues, max_messages, timeout)

    def wait_seconds(self, timeout: float) -> int:
        """The ``WaitTimeSeconds`` of a fetch that may wait ``timeout`` seconds."""
        configured = self.cfg.wait_time_seconds if self.cfg.wait_time_seconds > 0 else self.default_wait
        return max(0, min(configured, DEFAULT_WAIT, int(timeout)))

    def receive(self, queue: str, max_messages: int, wait: int) -> list[dict[str, Any]]:
        """One ``ReceiveMessage`` call (raw SQS messages)."""
        params: dict[str, Any] = {
            "QueueUrl": self.queue_url(queue),
            "MaxNumberOfMessages": max(1, min(max_messages, MAX_BATCH)),
            "WaitTimeSeconds": wait,
            "MessageSystemAttributeNames": _SUBLIME_ATTRIBUTES if self.sublime else _SYSTEM_ATTRIBUTES,
            "MessageAttributeNames": ["All"],
        }
        if self.cfg.visibility_timeout is not None:
            params["VisibilityTimeout"] = self.cfg.visibility_timeout
        with self._translated(f"receive from {params['QueueUrl']}"):
            reply = self.client.receive_message(**params)
        messages: list[dict[str, Any]] = reply.get("Messages") or []
        return messages

    def visibility_of(self, queue: str) -> int | None:
        """The visibility timeout a received message of ``queue`` gets: the configured one, else
        the queue's own (read once; ``None`` when it cannot be read)."""
        if self.cfg.visibility_timeout is not None:
            return self.cfg.visibility_timeout
        if queue in self._queue_visibility:
            return self._queue_visibility[queue]
        value: int | None = None
        try:
            with self._translated(f"read the visibility timeout of {self.queue_url(queue)}"):
                reply = self.client.get_queue_attributes(
                    QueueUrl=self.queue_url(queue), AttributeNames=["VisibilityTimeout"])
            value = int(reply["Attributes"]["VisibilityTimeout"])
        except BrokerConnectionError:
            return None  # try again next time
        except (BrokerError, KeyError, ValueError) as e:
            logger.warning("SQS: cannot read the visibility timeout of %s (%s): the visibility "
                           "of its messages is not extended while their tasks run (set "
                           "sqs.receive_visibility_timeout to have it extended)", queue, e)
        self._queue_visibility[queue] = value
        return value

    # -- settling -----------------------------------------------------------------------
    @staticmethod
    def _forget(delivery: Delivery) -> None:
        consumer = delivery.extra.get("consumer")
        if isinstance(consumer, SQSConsumer):
            consumer.forget(delivery)

    @staticmethod
    def _settled(delivery: Delivery, *, finished: bool) -> None:
        """Tell the consumer that received ``delivery`` (a FIFO message) that it was settled:
        ``finished`` (deleted) releases the next message of its group, else (handed back, or
        left in flight) the messages of its group it holds are given back."""
        consumer = delivery.extra.get("consumer")
        if isinstance(consumer, SQSConsumer):
            consumer.release(delivery, finished=finished)

    def ack(self, delivery: Delivery) -> None:
        """``DeleteMessage`` (the task finished), except for a task that failed with
        ``StopTaskDeletionOnError``: left to come back after its visibility timeout (and to
        the queue's redrive policy), as Go does.  The worker marks a failed task's delivery
        with ``extra["failed"] = True``."""
        if delivery.extra.get("failed") and stop_task_deletion(delivery.body):
            self._forget(delivery)
            self._settled(delivery, finished=False)
            logger.info("SQS: task failed with StopTaskDeletionOnError: message %s left in %s "
                        "(it comes back after its visibility timeout; a redrive policy can "
                        "move it to a dead-letter queue)", delivery.extra.get("message_id", "?"),
                        delivery.queue)
            return
        self._delete(delivery)

    def drop(self, delivery: Delivery) -> None:
        self._delete(delivery)

    def _delete(self, delivery: Delivery) -> None:
        receipt = delivery.extra.get("receipt_handle")
        if receipt is None:
            return  # not received from SQS: nothing to delete
        self._forget(delivery)
        queue_url = delivery.extra.get("queue_url") or self.queue_url(delivery.queue)
        self._deleter.delete(queue_url, receipt, str(delivery.extra.get("message_id", "?")))
        self._settled(delivery, finished=True)

    def _with_tries(self, call: Callable[[], Any], doing: str) -> bool:
        """Run an SQS call that settles a message, a few times through transient errors (then
        :class:`BrokerConnectionError`); a receipt handle SQS no longer accepts is logged
        (the message is received again: at-least-once) and gives ``False``."""
        for attempt in range(_TRIES):
            try:
                with self._translated(doing):
                    call()
                return True
            except BrokerConnectionError:
                if attempt + 1 == _TRIES:
                    raise
                time.sleep(_FIRST_BACKOFF * 2 ** attempt)
            except BrokerError as e:
                if _error_code(e.__cause__) in _BAD_RECEIPT or "receipt handle" in str(e).lower():
                    logger.warning("SQS: could not %s: %s; the message becomes visible again "
                                   "and is received again (at-least-once)", doing, e)
                    return False
                raise
        return False  # pragma: no cover

    def _set_visibility(self, deliveries: Sequence[Delivery], seconds: Callable[[Delivery], int],
                        doing: str) -> None:
        for d in deliveries:
            receipt = d.extra.get("receipt_handle")
            if receipt is None:
                self._send_body(d.queue, d.body, d.extra.get("group_id", ""))
                continue
            self._forget(d)
            queue_url = d.extra.get("queue_url") or self.queue_url(d.queue)
            params = {"QueueUrl": queue_url, "ReceiptHandle": receipt,
                      "VisibilityTimeout": seconds(d)}
            try:
                self._with_tries(
                    functools.partial(self.client.change_message_visibility, **params),
                    f"{doing} message {d.extra.get('message_id', '?')} of {queue_url}",
                )
                consumer = d.extra.get("consumer")
                if isinstance(consumer, SQSConsumer):
                    consumer.aside.note(d.queue, time.monotonic() + params["VisibilityTimeout"])
            finally:
                self._settled(d, finished=False)

    def requeue(self, deliveries: Sequence[Delivery], *, front: bool = False) -> None:
        """``ChangeMessageVisibility(0)``: visible again at once, for any worker (SQS has no
        head or tail to choose).  Bytes not received from SQS are sent to their queue."""
        self._set_visibility(deliveries, lambda d: 0, "give back")

    def requeue_later(self, deliveries: Sequence[Delivery], delay: float) -> bool:
        """``ChangeMessageVisibility(delay)`` (whole seconds, at least 1, within SQS's 12 hours
        from the receipt): the message stays in flight, held by nobody, until then."""
        if any(d.extra.get("receipt_handle") is None for d in deliveries):
            return False
        wanted = max(1, math.ceil(delay))

        def seconds(d: Delivery) -> int:
            left = MAX_VISIBILITY - int(time.monotonic() - d.extra.get("received", time.monotonic()))
            return max(0, min(wanted, left - 1))

        self._set_visibility(deliveries, seconds, f"hand back in {wanted} s")
        return True

    def dead_letter_place(self, queue: str) -> str:
        return dead_letter_queue(queue)

    def dead_letter(self, delivery: Delivery, reason: str) -> str:
        """Send the bytes to ``<queue>-dead`` (created when missing) with the message attribute
        ``reason``, then delete the message; returns that queue's name."""
        where = dead_letter_queue(delivery.queue)
        group = delivery.extra.get("group_id") or "dead"
        self._send_body(where, delivery.body, group, reason=reason, create=True,
                        source_id=str(delivery.extra.get("message_id", "")))
        self._delete(delivery)
        return where

    def _send_body(self, queue: str, body: bytes, group_id: str, *, reason: str = "",
                   create: bool = False, source_id: str = "") -> None:
        """Send raw bytes to ``queue`` (``create``: make the queue when missing)."""
        params: dict[str, Any] = {"QueueUrl": self.queue_url(queue),
                                  "MessageBody": body.decode("utf-8", "replace")}
        if is_fifo(queue):
            params["MessageGroupId"] = group_id or "machinery_compat"
            params["MessageDeduplicationId"] = deduplication_id(body + source_id.encode())
        if reason:
            params["MessageAttributes"] = {
                "reason": {"DataType": "String", "StringValue": reason[:1000] or "?"}}
        _, client_error = _client_errors()
        with self._translated(f"send a message to {params['QueueUrl']}"):
            try:
                self.client.send_message(**params)
            except client_error as e:
                if not (create and _error_code(e) in _MISSING_QUEUE):
                    raise
                self._create_queue(queue)
                self.client.send_message(**params)

    def _create_queue(self, queue: str) -> None:
        attributes = {"MessageRetentionPeriod": "1209600"}  # 14 days, SQS's longest
        if is_fifo(queue):
            attributes["FifoQueue"] = "true"
        logger.warning("SQS: creating the dead-letter queue %s", queue)
        self.client.create_queue(QueueName=queue, Attributes=attributes)

    # -- inspection ---------------------------------------------------------------------
    def queue_depth(self, queue: str | None = None) -> dict[str, int]:
        """SQS's approximate counts for ``queue`` (default queue): ``visible``, ``in_flight``
        (received, not deleted) and ``delayed``."""
        q = queue or self.default_queue
        names = {"ApproximateNumberOfMessages": "visible",
                 "ApproximateNumberOfMessagesNotVisible": "in_flight",
                 "ApproximateNumberOfMessagesDelayed": "delayed"}
        with self._translated(f"read the attributes of {self.queue_url(q)}"):
            reply = self.client.get_queue_attributes(QueueUrl=self.queue_url(q),
                                                     AttributeNames=list(names))
        attrs = reply.get("Attributes", {})
        return {short: int(attrs.get(name, 0)) for name, short in names.items()}

    def pending_tasks(self, queue: str | None = None) -> list[Signature]:
        raise NotImplementedError(
            "SQS cannot list a queue's messages without receiving them (which hides them from "
            "workers and counts toward a redrive policy); use queue_depth() for the counts")

    def delayed_tasks(self) -> list[Signature]:
        raise NotImplementedError(
            "SQS cannot list delayed messages; queue_depth() counts them")

    def close(self) -> None:
        with self._lock:
            consumers, self._consumers, self._consumer = self._consumers, [], None
            client, self._client = self._client, None
        for consumer in consumers:
            consumer.stop_consuming()
        if client is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                client.close()


class SQSConsumer(SQSBroker):
    """The receiving side of the SQS broker for one worker: receives messages, hands back
    tasks received before their ETA, and keeps the visibility of every message it holds
    extended until the message is settled (one heartbeat thread).

    Publishing and settling work as on its :class:`SQSBroker` (it shares its client); a
    :class:`Delivery` it received carries it as ``extra["consumer"]``, so whichever broker
    settles the message stops its heartbeat.
    """

    def __init__(self, broker: SQSBroker) -> None:
        self.broker = broker
        self.default_queue = broker.default_queue
        self.url = broker.url
        self.cfg = broker.cfg
        self.default_wait = broker.default_wait
        self.sublime = broker.sublime
        self._deleter = broker._deleter
        self._pid = os.getpid()
        self._reset()

    def _reset(self) -> None:
        """Fresh state (at creation, and in a forked child: nothing of the parent's)."""
        self._held: Holdings[_Held] = Holdings("receipt_handle", "mc-sqs-heartbeat")
        self._stop = threading.Event()
        #: received, not handed out yet: per queue, and (due ns, seq, delivery) not due yet
        self._ready: dict[str, collections.deque[Delivery]] = {}
        self._early: list[tuple[int, int, Delivery]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        #: long polls running in the background (several queues), and the last one's error
        self._polls: dict[str, concurrent.futures.Future[list[dict[str, Any]]]] = {}
        self._poll_error: BaseException | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        #: FIFO message groups with a message handed out: (queue URL, group id) -> the group
        self._groups: dict[tuple[str, str], _Group] = {}
        self._waiting = 0  # messages waiting in self._groups
        #: messages this consumer handed back: it keeps out of their way (:mod:`._aside`)
        self.aside = StepAside()

    # shared with the broker
    @property
    def client(self) -> Any:
        return self.broker.client

    @property
    def max_delay(self) -> int:
        return self.broker.max_delay

    @max_delay.setter
    def max_delay(self, value: int) -> None:
        self.broker.max_delay = value

    def visibility_of(self, queue: str) -> int | None:
        return self.broker.visibility_of(queue)

    def consumer(self, queues: Sequence[str], *, crash_safe: bool = True,
                 heartbeat_ttl: float | None = None) -> Broker:
        return self

    def __repr__(self) -> str:
        return f"<SQSConsumer {self.url} holding {len(self._held)}>"

    # -- receiving ----------------------------------------------------------------------
    def _check_fork(self) -> None:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._reset()

    def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        """Up to ``max_messages`` messages from the first of ``queues`` (in that order) that
        has any, waiting at most about ``timeout`` seconds.  One queue: a long poll (see
        :meth:`wait_seconds`); several: a short poll of each in turn, then long polls of all at
        once in background threads (what they receive waits here for the next fetch).  A task
        received before its ETA is held here until due (within :data:`HOLD_LIMIT`) or handed
        back (see the module documentation)."""
        self._check_fork()
        deadline = time.monotonic() + max(timeout, 0.0)
        n = max(1, min(max_messages, MAX_BATCH))
        first = True
        while True:
            error, self._poll_error = self._poll_error, None
            if error is not None:
                raise error
            out = self._take(queues, max_messages)
            if out:
                return out
            left = deadline - time.monotonic()
            if left <= 0 and not first:
                return []
            soon = self._next_due_in()
            budget = max(0.0, left if soon is None else min(left, soon))
            self._receive_some(queues, n, budget)
            first = False

    def _receive_some(self, queues: Sequence[str], n: int, budget: float) -> None:
        """Receive into the buffers, waiting at most about ``budget`` seconds."""
        started = time.monotonic()
        wait = self.wait_seconds(budget)
        # with FIFO messages waiting for their predecessor, long polls run in the background
        # too, so that a message released meanwhile is handed out at once
        aside = self.aside
        if wait == 0 or (len(queues) == 1 and not self._polls and not self._waiting):
            for q in queues:
                if q in self._polls:
                    continue  # a background long poll covers it
                q_wait = aside.wait_for(q, wait if len(queues) == 1 else 0, time.monotonic())
                if q_wait is None:
                    continue  # a message it handed back reappears: others first
                messages = self.receive(q, n, q_wait)
                if messages:
                    self._taken(q, messages)
                    return
            rest = budget - (time.monotonic() - started)
            if rest > 0:
                # nothing: wait (on background polls, if any), a random part of the time left
                # when short-polling, so that polls do not stay in step with a visibility
                # timeout this worker set (it would then always be first to receive a task it
                # handed back, before a worker that has the task)
                self._wait_for_arrivals(rest if wait else rest * random.uniform(0.5, 1.0),
                                        queues)
            return
        pool = self._pool
        if pool is None:
            pool = self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=min(len(queues), 16), thread_name_prefix="mc-sqs-poll")
        for q in queues:
            if q not in self._polls:
                q_wait = aside.wait_for(q, wait, time.monotonic())
                if q_wait is None:
                    continue  # a message it handed back reappears: others first
                future = pool.submit(self.receive, q, n, q_wait)
                self._polls[q] = future
                future.add_done_callback(functools.partial(self._poll_done, q))
        self._wait_for_arrivals(budget, queues)

    def _poll_done(self, queue: str,
                   future: concurrent.futures.Future[list[dict[str, Any]]]) -> None:
        self._polls.pop(queue, None)
        try:
            messages = future.result()
        except BaseException as e:
            self._poll_error = e
            messages = []
        if messages:
            self._taken(queue, messages)
        with self._cond:
            self._cond.notify_all()

    def _wait_for_arrivals(self, seconds: float, queues: Sequence[str] = ()) -> None:
        """Until something was received, at most ``seconds`` (and no longer than a pause of
        one of ``queues`` lasts: then it is polled again)."""
        paused = self.aside.pause_left(queues, time.monotonic())
        if paused is not None:
            seconds = min(seconds, paused)
        with self._cond:
            if not any(self._ready.values()) and self._poll_error is None:
                self._cond.wait(seconds)

    def _take(self, queues: Sequence[str], n: int) -> list[Delivery]:
        """Up to ``n`` buffered deliveries of the first of ``queues`` that has any (tasks held
        for their ETA join their queue's buffer once due)."""
        with self._cond:
            now_ns = time.time_ns()
            while self._early and self._early[0][0] <= now_ns:
                d = heapq.heappop(self._early)[2]
                self._ready.setdefault(d.queue, collections.deque()).append(d)
            for q in queues:
                buffered = self._ready.get(q)
                if buffered:
                    return [buffered.popleft() for _ in range(min(n, len(buffered)))]
        return []

    def _next_due_in(self) -> float | None:
        with self._cond:
            if not self._early:
                return None
            return max(0.0, (self._early[0][0] - time.time_ns()) / 1e9)

    def _taken(self, queue: str, messages: list[dict[str, Any]]) -> None:
        """Hold what was received (heartbeat), in the buffers; hand back tasks due later."""
        now = time.monotonic()
        queue_url = self.queue_url(queue)
        visibility = self.visibility_of(queue) or 0
        ready: list[Delivery] = []
        early: list[tuple[int, Delivery]] = []
        for m in messages:
            attributes = m.get("Attributes") or {}
            body = str(m.get("Body", "")).encode("utf-8", "surrogateescape")
            receipt = m["ReceiptHandle"]
            delivery = Delivery(body, queue, receipt, {
                "receipt_handle": receipt,
                "queue_url": queue_url,
                "message_id": m.get("MessageId", ""),
                "receive_count": int(attributes.get("ApproximateReceiveCount", "1") or 1),
                "sent_timestamp": int(attributes.get("SentTimestamp", "0") or 0),
                "first_receive_timestamp": int(attributes.get("ApproximateFirstReceiveTimestamp",
                                                              "0") or 0),
                "group_id": attributes.get("MessageGroupId", ""),
                "message_attributes": m.get("MessageAttributes") or {},
                "received": now,
                "consumer": self,
            })
            due = None if is_fifo(queue) else eta_ns(body)
            left = None if due is None else (due - time.time_ns()) / 1e9
            if left is not None and left >= HOLD_LIMIT and self._hand_back(delivery, left):
                continue
            self._hold(delivery, queue_url, now, visibility)
            if left is not None and left > 0:
                early.append((due or 0, delivery))
            else:
                ready.append(delivery)
        if self._stop.is_set():  # received by a poll that outlived the consumer: give back
            self._give_back([*ready, *(d for _, d in early)])
            return
        with self._cond:
            if is_fifo(queue):
                ready = [d for d in ready if self._first_of_group(d)]
            self._ready.setdefault(queue, collections.deque()).extend(ready)
            for due_ns, d in early:
                heapq.heappush(self._early, (due_ns, next(self._seq), d))
            self._cond.notify_all()

    # -- FIFO message groups --------------------------------------------------------------
    def _first_of_group(self, delivery: Delivery) -> bool:
        """(Under ``self._cond``.)  Whether ``delivery``, a FIFO message, may be handed out:
        no other message of its group is handed out (or buffered) here.  Otherwise it waits
        (held: its visibility is extended) until its predecessors are settled."""
        key = (delivery.extra["queue_url"], delivery.extra.get("group_id", ""))
        group = self._groups.get(key)
        if group is None:
            self._groups[key] = _Group(delivery.extra["receipt_handle"], collections.deque())
            return True
        group.waiting.append(delivery)
        self._waiting += 1
        return False

    def release(self, delivery: Delivery, *, finished: bool) -> None:
        """``delivery`` (handed out by this consumer) was settled.  For a FIFO message:
        ``finished`` (deleted) hands out the next message of its group waiting here; otherwise
        (handed back, or left in flight by ``StopTaskDeletionOnError``) the group's waiting
        messages are given back too (visible again: SQS hands them out again in order, after
        their predecessor), so that none runs before it.  A no-op for other messages."""
        key = (delivery.extra.get("queue_url", ""), delivery.extra.get("group_id", ""))
        give_back: list[Delivery] = []
        with self._cond:
            group = self._groups.get(key)
            if group is None or group.head != delivery.extra.get("receipt_handle"):
                return
            if finished and group.waiting and not self._stop.is_set():
                following = group.waiting.popleft()
                self._waiting -= 1
                group.head = following.extra["receipt_handle"]
                self._ready.setdefault(following.queue, collections.deque()).append(following)
                self._cond.notify_all()
                return
            del self._groups[key]
            give_back = list(group.waiting)
            self._waiting -= len(give_back)
        if give_back:
            logger.debug("SQS: %d message(s) of FIFO group %s given back after their "
                         "predecessor", len(give_back), key[1])
            self._give_back(give_back)

    def _hand_back(self, delivery: Delivery, left: float) -> bool:
        """Send the task again, unchanged, with the delay still needed (at most
        ``max_delay``), then delete the received copy.  False (the task is then held here
        until due) when the send failed."""
        delay = min(math.ceil(left), self.max_delay)
        try:
            with self._translated(f"hand back a task due in {left:.0f} s to {delivery.queue}"):
                self.client.send_message(QueueUrl=delivery.extra["queue_url"],
                                         MessageBody=delivery.body.decode("utf-8", "surrogateescape"),
                                         DelaySeconds=delay)
        except BrokerError as e:
            logger.warning("SQS: %s; holding it here until due instead", e)
            return False
        logger.debug("SQS: task due in %.0f s handed back with a %d s delay", left, delay)
        try:
            self._delete(delivery)
        except BrokerError as e:  # it comes back once more: handed back again then
            logger.warning("SQS: %s (a task handed back until its ETA is received once more)", e)
        return True

    def _give_back(self, deliveries: Sequence[Delivery]) -> None:
        """Make received messages visible again at once (best effort: otherwise they come
        back after their visibility timeout)."""
        if not deliveries:
            return
        try:
            self.requeue(deliveries)
        except BrokerError as e:
            logger.warning("SQS: could not give back %d message(s) (%s): they become visible "
                           "again after their visibility timeout", len(deliveries), e)

    # -- the heartbeat --------------------------------------------------------------------
    def _hold(self, delivery: Delivery, queue_url: str, now: float, visibility: int) -> None:
        self._held.hold(_Held(delivery, now, queue_url=queue_url, extended=now,
                              visibility=visibility),
                        self.beat if visibility > 0 else None)

    def forget(self, delivery: Delivery) -> None:
        """Stop extending ``delivery``'s visibility (it is being settled); if a heartbeat call
        for it is on its way, wait for that call first, so that it cannot change the
        visibility after the settling call did."""
        self._held.forget(delivery)

    def held(self) -> list[Delivery]:
        """The deliveries this consumer holds (received, not settled)."""
        return self._held.deliveries()

    def beat(self, now: float | None = None) -> float:
        """Extend the visibility of every held message due for it (half its timeout passed);
        returns the seconds until the next one is due (at most 1).  The messages being
        extended are marked meanwhile (``forget`` waits for them)."""
        return self._held.beat(time.monotonic() if now is None else now, _visibility_due,
                               lambda held: held.queue_url, self._extend_all)

    def _extend_all(self, queue_url: str, items: list[_Held], now: float) -> None:
        for i in range(0, len(items), MAX_BATCH):
            self._extend(queue_url, items[i:i + MAX_BATCH], now)

    def _extend(self, queue_url: str, items: list[_Held], now: float) -> None:
        entries = []
        for i, held in enumerate(items):
            left = MAX_VISIBILITY - (now - held.received) - 1
            value = int(min(held.visibility, left))
            if value <= 0:
                logger.warning("SQS: message %s of %s has been held for 12 hours, SQS's limit: "
                               "it becomes visible again and may run a second time",
                               held.delivery.extra.get("message_id", "?"), queue_url)
                self._held.discard(held)
                continue
            entries.append({"Id": str(i), "ReceiptHandle": held.delivery.extra["receipt_handle"],
                            "VisibilityTimeout": value})
        if not entries:
            return
        try:
            with self._translated(f"extend the visibility of {len(entries)} message(s) of "
                                  f"{queue_url}"):
                reply = self.client.change_message_visibility_batch(QueueUrl=queue_url,
                                                                    Entries=entries)
        except BrokerError as e:
            logger.warning("SQS heartbeat: %s; trying again shortly", e)
            return
        for ok in reply.get("Successful", ()):
            held = items[int(ok["Id"])]
            held.extended = now
        for bad in reply.get("Failed", ()):
            held = items[int(bad["Id"])]
            logger.warning("SQS heartbeat: message %s of %s: %s: %s",
                           held.delivery.extra.get("message_id", "?"), queue_url,
                           bad.get("Code"), bad.get("Message"))
            if bad.get("Code") in _BAD_RECEIPT or "receipt" in str(bad.get("Message", "")).lower():
                # the handle expired (the message was received elsewhere): nothing to extend
                self._held.discard(held)

    def stop_consuming(self, *, idle: bool = True) -> None:
        """Give back what was received but not handed out (visible again at once), stop the
        heartbeat thread (messages still held become visible again after their visibility
        timeout) and the background polls (what they still receive is given back)."""
        self._stop.set()
        with self._cond:
            left = [d for q in self._ready.values() for d in q] + [d for _, _, d in self._early]
            left += [d for g in self._groups.values() for d in g.waiting]
            self._ready, self._early, self._groups, self._waiting = {}, [], {}, 0
            self._cond.notify_all()
        self._give_back(left)
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        self._held.stop()

    def close(self) -> None:
        self.stop_consuming()


def _visibility_due(held: _Held, now: float) -> float | None:
    """When ``held``'s visibility is due to be extended: half its timeout after it was last
    set (never for a queue whose timeout is unknown)."""
    return None if held.visibility <= 0 else held.extended + held.visibility / 2


@dataclass
class _PendingDelete:
    receipt: str
    message_id: str
    done: threading.Event
    error: BaseException | None = None


class _Deleter:
    """``DeleteMessage`` as a group commit: a thread deleting a message while another thread's
    delete for the same queue is on its way has it sent with the next
    ``DeleteMessageBatch`` (10 at most), by that other thread; alone, it is sent at once.
    Each caller returns once its own message is deleted (or raises), so a worker still
    acknowledges a message only after its task finished, in fewer calls when many finish
    together.  Transient errors are retried a few times (then
    :class:`BrokerConnectionError`); a receipt handle SQS no longer accepts is logged (the
    message is received again: at-least-once)."""

    def __init__(self, broker: SQSBroker) -> None:
        self.broker = broker
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._pending: dict[str, list[_PendingDelete]] = {}
        self._busy: set[str] = set()

    def delete(self, queue_url: str, receipt: str, message_id: str) -> None:
        if self._pid != os.getpid():  # a forked child: nothing of the parent's threads
            self._pid = os.getpid()
            self._lock = threading.Lock()
            self._pending, self._busy = {}, set()
        item = _PendingDelete(receipt, message_id, threading.Event())
        with self._lock:
            self._pending.setdefault(queue_url, []).append(item)
            leader = queue_url not in self._busy
            if leader:
                self._busy.add(queue_url)
        if leader:
            while True:
                with self._lock:
                    waiting = self._pending.get(queue_url, [])
                    batch, waiting[:] = waiting[:MAX_BATCH], waiting[MAX_BATCH:]
                    if not batch:
                        self._busy.discard(queue_url)
                        self._pending.pop(queue_url, None)
                        break
                self._flush(queue_url, batch)
        item.done.wait()
        if item.error is not None:
            raise item.error

    def _flush(self, queue_url: str, batch: list[_PendingDelete]) -> None:
        try:
            self._send(queue_url, batch)
        except BaseException as e:
            for item in batch:
                if not item.done.is_set():
                    item.error = e
        finally:
            for item in batch:
                item.done.set()

    def _send(self, queue_url: str, batch: list[_PendingDelete]) -> None:
        broker = self.broker
        for attempt in range(_TRIES):
            last = attempt + 1 == _TRIES
            entries = [{"Id": str(i), "ReceiptHandle": it.receipt} for i, it in enumerate(batch)]
            try:
                with broker._translated(f"delete {len(batch)} message(s) from {queue_url}"):
                    if len(batch) == 1:
                        broker.client.delete_message(QueueUrl=queue_url,
                                                     ReceiptHandle=batch[0].receipt)
                        reply: dict[str, Any] = {"Successful": [{"Id": "0"}]}
                    else:
                        reply = broker.client.delete_message_batch(QueueUrl=queue_url,
                                                                   Entries=entries)
            except BrokerConnectionError:
                if last:
                    raise
                time.sleep(_FIRST_BACKOFF * 2 ** attempt)
                continue
            except BrokerError as e:
                if len(batch) == 1 and (_error_code(e.__cause__) in _BAD_RECEIPT
                                        or "receipt handle" in str(e).lower()):
                    _stale(queue_url, batch[0].message_id, str(e))
                    return
                raise
            again: list[_PendingDelete] = []
            for ok in reply.get("Successful", ()):
                batch[int(ok["Id"])].done.set()
            for bad in reply.get("Failed", ()):
                item = batch[int(bad["Id"])]
                code, text = str(bad.get("Code", "")), str(bad.get("Message", ""))
                if code in _BAD_RECEIPT or "receipt handle" in text.lower():
                    _stale(queue_url, item.message_id, f"{code}: {text}")
                    item.done.set()
                elif code in _TRANSIENT or not bad.get("SenderFault"):
                    again.append(item)
                else:
                    item.error = BrokerError(f"SQS broker: delete message {item.message_id} "
                                             f"from {queue_url}: {code}: {text}")
                    item.done.set()
            if not again:
                return
            if last:
                for item in again:
                    item.error = BrokerConnectionError(
                        f"SQS broker: delete message {item.message_id} from {queue_url} "
                        f"failed {_TRIES} times")
                return
            batch = again
            time.sleep(_FIRST_BACKOFF * 2 ** attempt)


def _stale(queue_url: str, message_id: str, why: str) -> None:
    logger.warning("SQS: could not delete message %s from %s: %s; the message becomes visible "
                   "again and is received again (at-least-once)", message_id, queue_url, why)


def _chunks(entries: list[tuple[Signature, dict[str, Any]]]
            ) -> Iterator[list[tuple[Signature, dict[str, Any]]]]:
    """Batches of at most 10 entries and 256 KiB of bodies."""
    chunk: list[tuple[Signature, dict[str, Any]]] = []
    size = 0
    for entry in entries:
        n = len(entry[1]["MessageBody"].encode("utf-8"))
        if chunk and (len(chunk) == MAX_BATCH or size + n > MAX_BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(entry)
        size += n
    if chunk:
        yield chunk


__all__ = [
    "DEFAULT_WAIT",
    "FIFO_GROUP_ERROR",
    "MAX_DELAY",
    "SQSBroker",
    "SQSConsumer",
    "dead_letter_queue",
    "deduplication_id",
    "delay_seconds",
    "endpoint_from_url",
    "region_from_url",
]
