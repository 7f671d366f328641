"""Azure Storage Queues broker of the sublime-security Machinery fork (``azure-storage-queue``
v12; ``pip install machinery-compat[azure]``).  See docs/azure.md.

Selection and URLs
------------------

* As the fork: a broker URL **containing** ``queue.core.windows`` (``https://<account>.queue.
  core.windows.net/``).  The client is ``azure.client`` (a ``QueueServiceClient``, Go's
  ``Client``), else one made for the URL's origin with ``azure.credential``, else from the
  connection string (``azure.connection_string`` or ``AZURE_STORAGE_CONNECTION_STRING``).
* Python only, for emulators and explicit setups: ``azure://<account>:<key>@<host>:<port>``
  (``http://<host>:<port>/<account>``, path style as Azurite serves it; the key URL-encoded),
  ``azures://...`` for HTTPS, and ``azure://`` alone: the connection string above.

Configuration: ``Config.azure`` (:class:`~machinery_compat.config.AzureConfig`, code only): the
fork's ``TTL``, ``VisibilityTimeout``, ``MaxReceives``, ``DLQTTL`` (in seconds) and the
Python-only ``dlq_queue`` (default ``<default_queue>-dead``) and ``max_delay_seconds``.

Queues: names are used verbatim (Azure: 3-63 lowercase letters, digits, single hyphens; the
default ``machinery_tasks`` is not a valid name, set e.g. ``machinery-tasks``).  Queues are
not created, except the dead-letter queue.

Producing: Put Message with the Signature JSON text verbatim (encoded before an empty routing
key is defaulted, as the fork does; no base64), ``time_to_live`` = ``ttl`` when set, and for a
task due later ``visibility_timeout`` = whole seconds until due, at most ``max_delay_seconds``
(420, the fork's cap).  Both dialects work: the ``ETA`` (upstream) or ``Delay`` (sublime) is
read by the Python consumer again (below).

Consuming (only ``default_queue``, as the fork: the queues a worker names are ignored, with a
warning): Get Messages (up to 32 a call) with the visibility timeout; an empty queue is polled
again after 0.1 s, growing to 1 s.  Per message:

1. received more than ``max_receives`` times → its text goes to the dead-letter queue (with
   ``dlq_ttl``) and it is deleted (the fork's rule; a Python worker always has a DLQ);
2. not due yet (``ETA``, or ``IngestionTime + Delay`` for the fork layout) → its visibility
   timeout is set to the time left (in steps of at most 7 days): it comes back when due.  Each
   step is one more receive (the task sees ``AttemptCount`` 1 after one step);
3. a fork-layout message gets the receive fields as the fork fills them before the task runs:
   ``AttemptCount`` = dequeue count - 1, ``IngestionTime`` = insertion time, ``ReceivedAt`` =
   now, ``AzurePopReceipt``, ``AzureMessageContent`` = the message text, ``RoutingKey`` = the
   consumed queue, ``NoBackend`` when ``UUID`` is empty (``AzureMessageID`` stays empty, as in
   Go: the id is kept in the delivery).  An upstream-layout message is handed over unchanged
   (that layout has no such fields);
4. while the worker holds it, its visibility is extended every half visibility timeout (at
   least 2 s before it ends: Azure counts whole seconds)
   (Update Message; each call gives a new pop receipt, which is kept for the next call and
   the delete).

Settling: acknowledged = Delete Message (a task failed with ``StopTaskDeletionOnError`` is kept:
it comes back after the visibility timeout); given back = visibility 0; later = visibility
``delay`` (:meth:`AzureBroker.requeue_later`); dead-lettered (undecodable, which the fork leaves
until its 15th receive) = the text to the dead-letter queue, the reason logged (Azure messages
carry no attributes: the text stays verbatim), then deleted; dropped = deleted.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from ..exceptions import BrokerConnectionError, BrokerError, ConfigError, PublishError
from ..protocol import Signature
from ..protocol.gotime import GoTime
from ..protocol.sublime import AZURE_MAX_DELAY_SECONDS, SUBLIME
from ._held import Held, Holdings
from ._peek import stop_task_deletion
from .base import Broker, Delivery

if TYPE_CHECKING:
    from ..config import AzureConfig, Config

logger = logging.getLogger(__name__)

#: the fork's BrokerFactory picks this broker for a URL containing this text
AZURE_HOST_MARK = "queue.core.windows"
#: Python's receive visibility timeout when ``azure.visibility_timeout`` is unset (seconds)
DEFAULT_VISIBILITY = 30
#: the fork's defaults for ``MaxReceives`` and ``DLQTTL``
DEFAULT_MAX_RECEIVES = 10
DEFAULT_DLQ_TTL = 30 * 24 * 3600
#: Azure's longest visibility timeout (7 days)
MAX_VISIBILITY = 7 * 24 * 3600
#: Azure's most messages per Get Messages call
MAX_BATCH = 32
DEAD_SUFFIX = "-dead"
_NS = 1_000_000_000
_IDLE_FIRST, _IDLE_MAX = 0.1, 1.0


def is_azure_url(url: str) -> bool:
    """Whether this broker serves ``url`` (the fork's rule, plus ``azure://``/``azures://``)."""
    return AZURE_HOST_MARK in url or url.lower().startswith(("azure://", "azures://"))


def _require_sdk() -> Any:
    try:
        import azure.storage.queue as azq
    except ImportError as e:
        raise ConfigError("the Azure broker needs azure-storage-queue: "
                          "pip install machinery-compat[azure]") from e
    return azq


def make_service_client(url: str, cfg: AzureConfig) -> Any:
    """The ``QueueServiceClient`` for a broker URL (see the module documentation)."""
    azq = _require_sdk()
    if cfg.client is not None:
        return cfg.client
    conn = cfg.connection_string or os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "")
    parts = urlsplit(url)
    if parts.scheme.lower() in ("azure", "azures"):
        if not parts.hostname:
            if not conn:
                raise ConfigError("azure:// without a host needs a connection string "
                                  "(azure.connection_string or AZURE_STORAGE_CONNECTION_STRING)")
            return azq.QueueServiceClient.from_connection_string(conn)
        account = unquote(parts.username or "")
        if not account:
            raise ConfigError("an azure:// broker URL names its account: "
                              "azure://<account>:<key>@<host>:<port>")
        scheme = "https" if parts.scheme.lower() == "azures" else "http"
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        credential = cfg.credential
        if credential is None and parts.password:
            credential = {"account_name": account, "account_key": unquote(parts.password)}
        return azq.QueueServiceClient(f"{scheme}://{host}/{account}", credential=credential)
    if cfg.credential is not None:
        return azq.QueueServiceClient(f"{parts.scheme}://{parts.netloc}",
                                      credential=cfg.credential)
    if conn:
        return azq.QueueServiceClient.from_connection_string(conn)
    raise ConfigError("the Azure broker needs a credential: azure.client, azure.credential or "
                      "a connection string (azure.connection_string or "
                      "AZURE_STORAGE_CONNECTION_STRING)")


def due_ns(sig: Signature, inserted_ns: int | None) -> int | None:
    """When a received task is due (Unix ns): its ``ETA``, else (fork layout) its insertion
    time + ``Delay`` (Azure gives the insertion time in whole seconds, and the fork's delay is
    whole seconds of visibility: up to a second early, as a fork worker); ``None``: now."""
    if sig.eta is not None:
        return sig.eta.unix_ns
    if sig.delay > 0 and inserted_ns is not None:
        return inserted_ns + sig.delay
    return None


def _code(e: BaseException) -> str:
    return str(getattr(e, "error_code", "") or "")


@dataclass
class _Held(Held):
    extended: float = 0.0


class AzureBroker(Broker):
    """See the module documentation."""

    schemes = ("azure", "azures")
    #: the fork's ``RetrySameMessage``: a keep-and-retry changes the message's visibility
    retries_same_message = True

    def __init__(self, url: str, default_queue: str = "machinery-tasks", *,
                 azure: AzureConfig | None = None) -> None:
        from ..config import AzureConfig

        super().__init__(default_queue)
        self.url = url
        self.cfg = azure if azure is not None else AzureConfig()
        _require_sdk()
        self.visibility = (math.ceil(self.cfg.visibility_timeout)
                           if self.cfg.visibility_timeout > 0 else DEFAULT_VISIBILITY)
        self.max_receives = self.cfg.max_receives if self.cfg.max_receives > 0 else DEFAULT_MAX_RECEIVES
        self.dlq_ttl = math.ceil(self.cfg.dlq_ttl) if self.cfg.dlq_ttl > 0 else DEFAULT_DLQ_TTL
        self.max_delay = (self.cfg.max_delay_seconds if self.cfg.max_delay_seconds > 0
                          else AZURE_MAX_DELAY_SECONDS)
        self.dlq_name = self.cfg.dlq_queue or default_queue + DEAD_SUFFIX
        self._service: Any = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._dlq_ready = False
        self._consumer: AzureConsumer | None = None
        self._warned_queues = False

    @classmethod
    def from_config(cls, config: Config) -> AzureBroker:
        return cls(config.broker, config.default_queue, azure=config.azure)

    @property
    def service(self) -> Any:
        if self._service is not None and self._pid == os.getpid():
            return self._service
        with self._lock:
            if self._service is None or self._pid != os.getpid():
                self._service = make_service_client(self.url, self.cfg)
                self._pid = os.getpid()
            return self._service

    def queue_client(self, name: str) -> Any:
        return self.service.get_queue_client(name)

    @contextlib.contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        """SDK errors as this library's: connection trouble, throttling, server errors and a
        missing queue as :class:`BrokerConnectionError`, anything else as :class:`BrokerError`."""
        from azure.core import exceptions as ax

        try:
            yield
        except ax.ServiceRequestError as e:
            raise BrokerConnectionError(f"Azure broker: {doing}: {e}") from e
        except ax.HttpResponseError as e:
            status = getattr(e, "status_code", None) or 0
            if _code(e) == "QueueNotFound":
                raise BrokerConnectionError(f"Azure broker: {doing}: the queue does not exist "
                                            f"(create it first)") from e
            if status >= 500 or status == 429:
                raise BrokerConnectionError(f"Azure broker: {doing}: {e}") from e
            raise BrokerError(f"Azure broker: {doing}: {_code(e) or status}: {e}") from e
        except ax.AzureError as e:
            raise BrokerConnectionError(f"Azure broker: {doing}: {e}") from e

    # -- producer -----------------------------------------------------------------------
    def message_params(self, sig: Signature, now_ns: int | None = None) -> tuple[str, dict[str, Any]]:
        """(queue, Put Message arguments) for ``sig`` as the fork builds them: text encoded
        before the routing key is defaulted; a delay as the visibility timeout, capped."""
        text = sig.to_json().decode("utf-8")
        self.adjust_routing_key(sig)
        params: dict[str, Any] = {"content": text}
        if self.cfg.ttl > 0:
            params["time_to_live"] = math.ceil(self.cfg.ttl)
        now = time.time_ns() if now_ns is None else now_ns
        if sig.delay > 0:  # the fork: whole seconds of Delay, truncated
            delay = sig.delay // _NS
        elif sig.eta is not None:  # an ETA (upstream layout): visible once due, not before
            delay = max(0, -((now - sig.eta.unix_ns) // _NS))
        else:
            delay = 0
        if delay > 0:
            if delay > self.max_delay:
                logger.debug("task due in %d s: sent with a %d s visibility timeout; a Python "
                             "worker delays it again until due", delay, self.max_delay)
            params["visibility_timeout"] = min(delay, self.max_delay)
        return sig.routing_key, params

    def publish(self, sig: Signature) -> None:
        queue, params = self.message_params(sig)
        try:
            with self._translated(f"send task {sig.name}[{sig.uuid}] to {queue}"):
                self.queue_client(queue).send_message(**params)
        except BrokerError as e:
            raise PublishError(f"Publish message error: {e}") from e

    # -- consumer -----------------------------------------------------------------------
    def consumer(self, queues: Sequence[str], *, crash_safe: bool = True,
                 heartbeat_ttl: float | None = None) -> Broker:
        """An :class:`AzureConsumer` (its own visibility-extension thread).  Azure keeps a
        message until it is deleted: consuming is always crash-safe."""
        self._warn_queues(queues)
        return AzureConsumer(self)

    def _warn_queues(self, queues: Sequence[str]) -> None:
        others = [q for q in queues if q != self.default_queue]
        if others and not self._warned_queues:
            self._warned_queues = True
            logger.warning("Azure broker: consuming only the default queue %s, as the fork does "
                           "(ignored: %s)", self.default_queue, ", ".join(others))

    def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        with self._lock:
            if self._consumer is None:
                self._consumer = AzureConsumer(self)
            consumer = self._consumer
        return consumer.fetch(queues, max_messages, timeout)

    def dead_letter_place(self, queue: str) -> str:
        return self.dlq_name

    # -- settling -----------------------------------------------------------------------
    @staticmethod
    def _forget(delivery: Delivery) -> None:
        consumer = delivery.extra.get("consumer")
        if isinstance(consumer, AzureConsumer):
            consumer.holdings.forget(delivery)

    def _delete(self, delivery: Delivery) -> None:
        try:
            with self._translated(f"delete message {delivery.extra['message_id']} from "
                                  f"{delivery.queue}"):
                self.queue_client(delivery.queue).delete_message(
                    delivery.extra["message_id"], delivery.extra["pop_receipt"])
        except BrokerError as e:
            if "MessageNotFound" in str(e) or "PopReceiptMismatch" in str(e):
                logger.warning("Azure: could not delete message %s (%s): it is received again "
                               "(at-least-once)", delivery.extra["message_id"], e)
                return
            raise

    def set_visibility(self, delivery: Delivery, seconds: int) -> None:
        """Update Message: hide ``delivery`` for ``seconds`` (0: visible at once); keeps the
        new pop receipt."""
        with self._translated(f"set the visibility of message {delivery.extra['message_id']}"):
            reply = self.queue_client(delivery.queue).update_message(
                delivery.extra["message_id"], delivery.extra["pop_receipt"],
                visibility_timeout=max(0, min(seconds, MAX_VISIBILITY)))
        delivery.extra["pop_receipt"] = reply.pop_receipt

    def ack(self, delivery: Delivery) -> None:
        """Delete Message, except for a failed ``StopTaskDeletionOnError`` task: kept (it
        comes back after the visibility timeout), as the fork does."""
        self._forget(delivery)
        if delivery.extra.get("failed") and stop_task_deletion(delivery.body):
            logger.info("Azure: message %s kept (StopTaskDeletionOnError)",
                        delivery.extra.get("message_id"))
        else:
            self._delete(delivery)
        delivery.settled = True

    def requeue(self, deliveries: Sequence[Delivery], *, front: bool = False) -> None:
        """Visible again at once (Azure queues have no front)."""
        for d in deliveries:
            self._forget(d)
            self.set_visibility(d, 0)
            d.settled = True

    def requeue_later(self, deliveries: Sequence[Delivery], delay: float) -> bool:
        for d in deliveries:
            self._forget(d)
            self.set_visibility(d, math.ceil(delay))
            d.settled = True
        return True

    def _ensure_dlq(self) -> Any:
        q = self.queue_client(self.dlq_name)
        if not self._dlq_ready:
            from azure.core.exceptions import ResourceExistsError

            with self._translated(f"create the dead-letter queue {self.dlq_name}"), \
                    contextlib.suppress(ResourceExistsError):
                q.create_queue()
            self._dlq_ready = True
        return q

    def send_to_dlq(self, text: str, why: str, message_id: str) -> None:
        with self._translated(f"send message {message_id} to {self.dlq_name}"):
            self._ensure_dlq().send_message(text, time_to_live=self.dlq_ttl)
        logger.warning("Azure: message %s moved to the dead-letter queue %s: %s", message_id,
                       self.dlq_name, why)

    def dead_letter(self, delivery: Delivery, reason: str) -> str:
        self._forget(delivery)
        text = delivery.extra.get("text")
        if text is None:
            text = delivery.body.decode("utf-8", "replace")
        self.send_to_dlq(text, reason, delivery.extra.get("message_id", "(not received)"))
        if "message_id" in delivery.extra:
            self._delete(delivery)
        delivery.settled = True
        return self.dlq_name

    def drop(self, delivery: Delivery) -> None:
        self._forget(delivery)
        self._delete(delivery)
        delivery.settled = True

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.stop_consuming()


class AzureConsumer(AzureBroker):
    """One worker's view of an :class:`AzureBroker`: the messages it holds and the thread
    extending their visibility."""

    def __init__(self, broker: AzureBroker) -> None:
        self.__dict__.update(broker.__dict__)
        self._broker = broker
        self.holdings: Holdings[_Held] = Holdings("message_id", "azure-visibility")
        self._stop = threading.Event()
        self._idle = _IDLE_FIRST
        # every half visibility timeout, but at least 2 s before it ends: Azure (Azurite too)
        # counts visibility in whole seconds, so a message may come back up to a second early
        self._extend_after = max(min(self.visibility / 2, self.visibility - 2), 0.2)

    def queue_client(self, name: str) -> Any:
        return self._broker.queue_client(name)

    @property
    def service(self) -> Any:
        return self._broker.service

    def consumer(self, queues: Sequence[str], *, crash_safe: bool = True,
                 heartbeat_ttl: float | None = None) -> Broker:
        return self._broker.consumer(queues)

    def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        """Messages of the default queue (see the module documentation), waiting up to
        ``timeout`` s for the first."""
        self._broker._warn_queues(queues)
        deadline = time.monotonic() + max(timeout, 0)
        while not self._stop.is_set():
            out = self._receive(max(1, min(max_messages, MAX_BATCH)))
            if out:
                self._idle = _IDLE_FIRST
                return out
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            self._stop.wait(min(self._idle, left))
            self._idle = min(self._idle * 2, _IDLE_MAX)
        return []

    def _receive(self, n: int) -> list[Delivery]:
        queue = self.default_queue
        with self._translated(f"receive from {queue}"):
            messages = list(self.queue_client(queue).receive_messages(
                messages_per_page=n, max_messages=n, visibility_timeout=self.visibility))
        out: list[Delivery] = []
        for m in messages:
            d = Delivery(body=m.content.encode("utf-8"), queue=queue, tag=m.id, extra={
                "message_id": m.id, "pop_receipt": m.pop_receipt, "text": m.content,
                "dequeue_count": m.dequeue_count, "consumer": self})
            try:
                ready = self._prepare(d, m)
            except BrokerError as e:
                logger.warning("Azure: message %s: %s (it comes back after its visibility "
                               "timeout)", m.id, e)
                continue
            if ready:
                now = time.monotonic()
                self.holdings.hold(_Held(d, now, extended=now), self._beat)
                out.append(d)
        return out

    def _prepare(self, d: Delivery, m: Any) -> bool:
        """The fork's per-message steps before the task (DLQ rule, not-yet-due, the receive
        fields); False when the message is not handed to the worker."""
        count = int(m.dequeue_count or 0)
        if count > self.max_receives:
            self.send_to_dlq(m.content, f"received {count} times (max_receives "
                             f"{self.max_receives})", m.id)
            self._delete(d)
            return False
        try:
            sig = Signature.from_json(d.body)
        except Exception:
            return True
        inserted = GoTime.from_datetime(m.inserted_on) if m.inserted_on is not None else None
        due = due_ns(sig, None if inserted is None else inserted.unix_ns)
        if due is not None:
            left = (due - time.time_ns()) / _NS
            if left > 0:
                self.set_visibility(d, math.ceil(left))
                logger.debug("Azure: task %s due in %.1f s: hidden until then", sig.uuid, left)
                return False
        if sig.wire_dialect == SUBLIME:
            sig.received_at = GoTime.now()
            sig.azure_message_content = m.content
            sig.azure_pop_receipt = m.pop_receipt
            sig.attempt_count = max(count - 1, 0)
            sig.ingestion_time = inserted
            if not sig.uuid:
                sig.no_backend = True
            sig.routing_key = self.default_queue
            d.body = sig.to_json()
        return True

    # -- visibility extension -------------------------------------------------------------
    def _beat(self) -> float:
        return self.holdings.beat(time.monotonic(),
                                  lambda h, now: h.extended + self._extend_after,
                                  lambda h: h.delivery.queue, self._extend)

    def _extend(self, queue: str, items: list[_Held], now: float) -> None:
        for held in items:
            try:
                self.set_visibility(held.delivery, self.visibility)
                held.extended = now
            except BrokerError as e:
                logger.warning("Azure: extending the visibility of message %s: %s",
                               held.delivery.extra["message_id"], e)
                if "MessageNotFound" in str(e) or "PopReceiptMismatch" in str(e):
                    self.holdings.discard(held)

    def held(self) -> list[Delivery]:
        return self.holdings.deliveries()

    def stop_consuming(self, *, idle: bool = True) -> None:
        """Stop fetching and extending (what is still held becomes visible again after its
        visibility timeout)."""
        self._stop.set()
        self.holdings.stop()

    def close(self) -> None:
        self.stop_consuming()


__all__ = ["AZURE_HOST_MARK", "AzureBroker", "AzureConsumer", "due_ns", "is_azure_url",
           "make_service_client"]
