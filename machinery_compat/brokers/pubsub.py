"""Google Cloud Pub/Sub broker (google-cloud-pubsub), with Go Machinery's wire format (§5.4 of
the protocol notes).

URL: ``gcppubsub://<project>/<subscription>``, as Go: the project holding the topics and the
subscription workers consume.  Topics and subscriptions are not created (except dead-letter
ones, below): create them as you do for Go workers (Go refuses to start without the topic
named ``default_queue`` and the subscription).  The client library's usual settings apply:
Application Default Credentials, or ``PUBSUB_EMULATOR_HOST=host:port`` for an emulator.

Configuration: ``GCPPubSubConfig`` (code only, as in Go): ``client`` (an object with
``publisher`` and ``subscriber`` attributes holding ``google.cloud.pubsub_v1`` clients, else
they are made on first use) and ``max_extension`` (seconds a running task's ack deadline is
extended at most, Go's ``MaxExtension``; 0: one hour, the Go client's default).

Install with ``pip install machinery-compat[pubsub]`` (google-cloud-pubsub).

Producing
---------

* Topic = the routing key (defaulted to ``default_queue`` *before* encoding, as Go does),
  message ``data`` = the Signature JSON, no attributes, no ordering key (§12.4).  One
  ``Publish`` call per task; :meth:`PubSubBroker.publish_many` (``send_group``) sends one call
  per topic (at most 1,000 messages a call).  A missing topic raises
  :class:`~machinery_compat.exceptions.PublishError` naming it.
* ETA: Go blocks the publishing call for the delay (it sets the client's batching
  ``DelayThreshold`` to ETA - now), so a Go producer sending a task due in an hour hangs for an
  hour, and nothing is delayed on the server.  This broker publishes at once, with the ETA in
  the JSON, and a **Python** worker holds a task received before its ETA (below) until due.
  A **Go** worker ignores ETAs: it runs such a task as soon as it receives it.

Consuming
---------

* A worker's queue is a subscription: the URL's for ``default_queue``, a subscription named
  after the queue for any other (Go consumes only the URL's).  Messages are taken with unary
  ``Pull`` calls of at most as many messages as the worker has free threads; Pub/Sub answers
  as soon as messages arrive (the call is given up, as empty, after the worker's poll period
  or a second, whichever is longer).  With ``PUBSUB_EMULATOR_HOST`` set, a consumer keeps up
  to :data:`EMULATOR_PULLS` pulls in flight, started :data:`PULL_STAGGER` (0.05 s) apart, in
  background threads (what they get waits in the consumer, held, for the worker's next
  fetch): the emulator holds an empty pull 0.5 s without answering when a message arrives
  meanwhile, while it feeds streaming pulls (Go's) every 10 ms.  No pull is cancelled while
  the server may be answering it (a cancelled pull's messages stay leased, unseen, until
  their ack deadline).  A
  :class:`Delivery`'s ``tag`` is the ack id; ``extra`` holds the subscription path, message id,
  attributes, delivery attempt (0 without a dead-letter policy) and publish time.
* Ack-deadline extension: while a worker holds a message (from its receipt until it is
  settled), one thread per worker extends its ack deadline (``ModifyAckDeadline``) to
  :data:`LEASE_SECONDS` every third of that (the first time within 4 s of the receipt, inside
  any subscription's deadline of at least 10 s), for at most ``max_extension`` seconds while
  its task runs (then it is left to expire and may run a second time, as with Go's
  ``MaxExtension``).
* Delays, done better than Go: a task received before its ETA is not handed to the worker:
  the consumer keeps it in a local timer heap (no worker thread is held by it), extends its
  ack deadline meanwhile, and hands it to the worker once due.  Past :data:`MAX_EARLY` tasks
  held that way, a further one is given back with an ack deadline of the time left (at most
  600 s, Pub/Sub's longest), so it comes back nearer its ETA.  A worker that stops gives back
  the tasks it held (ack deadline 0: redelivered at once, to another worker).
* Settling: acknowledged = ``Acknowledge``, after the task's final state was stored (Go acks
  failed and retried tasks too).  A task that failed with ``StopTaskDeletionOnError`` is not
  acknowledged: its deadline is no longer extended, so it comes back after the subscription's
  ack deadline (and a dead-letter policy can move it), as Go nacks it.  Given back (a task
  this worker lacks; taken but not started when the worker stops) = ``ModifyAckDeadline(0)``,
  redelivered at once to any subscriber; :meth:`~PubSubBroker.requeue_later` = an ack deadline
  of the delay (at most 600 s).  Dropped (``IgnoreWhenTaskNotRegistered``) = acknowledged.
* Undecodable messages (bad JSON, empty data, no task name): Go nacks them, so they come back
  forever.  This broker publishes the bytes to the topic ``<queue>.dead`` with the attributes
  ``reason``, ``subscription`` and ``message_id``, then acknowledges the message; the topic and
  a subscription of the same name (which keeps the messages: a topic alone drops them) are
  created when missing.  The worker logs each with its reason.
* Errors: every call has a bounded retry of transient errors (unavailable, aborted,
  exhausted, internal), then raises
  :class:`~machinery_compat.exceptions.BrokerConnectionError` (the worker backs off and
  retries); a missing subscription too, with its path in the message.

Inspection: Pub/Sub cannot list a subscription without pulling it, so
:meth:`~PubSubBroker.pending_tasks` and :meth:`~PubSubBroker.delayed_tasks` raise
``NotImplementedError``.

Threads and processes: one publisher and one subscriber client per broker and process (gRPC
clients are thread-safe but do not survive a fork: a forked child makes its own).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import heapq
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..exceptions import (
    BrokerConnectionError,
    BrokerError,
    ConfigError,
    PublishError,
)
from ..protocol import Signature
from ._held import Held, Holdings
from ._peek import eta_ns, stop_task_deletion
from .base import Broker, Delivery

if TYPE_CHECKING:
    from ..config import Config, GCPPubSubConfig

logger = logging.getLogger(__name__)

SCHEMES = ("gcppubsub",)
#: Seconds each extension sets a held message's ack deadline to (renewed every third of it).
LEASE_SECONDS = 60
#: Seconds after its receipt a message's deadline is first extended (any subscription's
#: deadline is at least 10 s).
FIRST_EXTENSION = 4.0
#: Pub/Sub's longest ack deadline.
MAX_ACK_DEADLINE = 600
#: ``max_extension`` when the config leaves it 0: the Go client's default (one hour).
DEFAULT_MAX_EXTENSION = 3600.0
#: Tasks received before their ETA a consumer holds at most; past that, given back until nearer.
MAX_EARLY = 10_000
#: Most messages per Publish call.
MAX_PUBLISH_BATCH = 1000
#: Seconds each call may take, transient errors retried within.
CALL_DEADLINE = 20.0
#: Against an emulator (``PUBSUB_EMULATOR_HOST``): pulls a consumer keeps in flight per queue,
#: started this many seconds apart, each given up after PULL_DEADLINE_EMULATOR seconds.
EMULATOR_PULLS = 10
PULL_STAGGER = 0.05
PULL_DEADLINE_EMULATOR = 5.0
#: Suffix of the dead-letter topic (and subscription) of a queue.
DEAD_SUFFIX = ".dead"


def parse_url(url: str) -> tuple[str, str]:
    """``(project, subscription)`` of a ``gcppubsub://<project>/<subscription>`` URL."""
    rest = url.split("://", 1)[1] if "://" in url else ""
    project, _, subscription = rest.partition("/")
    subscription = subscription.strip("/")
    if not url.lower().startswith("gcppubsub://") or not project or not subscription \
            or "/" in subscription:
        raise ConfigError(f"a Pub/Sub broker URL is gcppubsub://<project>/<subscription>, "
                          f"not {url!r}")
    return project, subscription


def dead_letter_topic(queue: str) -> str:
    """Where this broker keeps undecodable messages of ``queue``: topic (and subscription)
    ``<queue>.dead``."""
    return queue + DEAD_SUFFIX


def _require_pubsub() -> Any:
    try:
        from google.cloud import pubsub_v1
    except ImportError as e:
        raise ConfigError("the Pub/Sub broker needs google-cloud-pubsub: "
                          "pip install machinery-compat[pubsub]") from e
    return pubsub_v1


def _retry() -> Any:
    from google.api_core import exceptions as gx
    from google.api_core.retry import Retry, if_exception_type

    return Retry(initial=0.1, maximum=2.0, multiplier=2.0, timeout=CALL_DEADLINE,
                 predicate=if_exception_type(gx.ServiceUnavailable, gx.Aborted,
                                             gx.ResourceExhausted, gx.InternalServerError))


@dataclass
class _Held(Held):
    """A message a consumer holds (received, not settled yet)."""

    next_extension: float = 0.0  # monotonic
    for_eta: bool = False  # held for its ETA (not running): extended without limit


class PubSubBroker(Broker):
    """See the module documentation."""

    schemes = SCHEMES

    def __init__(self, url: str, default_queue: str = "machinery_tasks", *,
                 pubsub: GCPPubSubConfig | None = None, publisher: Any = None,
                 subscriber: Any = None) -> None:
        """``publisher`` / ``subscriber``: ``google.cloud.pubsub_v1`` clients to use (else
        ``pubsub.client``'s, else made on first use)."""
        super().__init__(default_queue)
        self.url = url
        self.project, self.subscription = parse_url(url)
        given = pubsub.client if pubsub is not None else None
        self._given_publisher = publisher or getattr(given, "publisher", None)
        self._given_subscriber = subscriber or getattr(given, "subscriber", None)
        max_extension = pubsub.max_extension if pubsub is not None else 0.0
        #: seconds a running task's ack deadline is extended at most
        self.max_extension = max_extension if max_extension > 0 else DEFAULT_MAX_EXTENSION
        if self._given_publisher is None or self._given_subscriber is None:
            _require_pubsub()
        self._clients: tuple[Any, Any] | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._consumers: list[PubSubConsumer] = []
        self._consumer: PubSubConsumer | None = None
        self._dead_ready: set[str] = set()

    @classmethod
    def from_config(cls, config: Config) -> PubSubBroker:
        return cls(config.broker, config.default_queue, pubsub=config.gcppubsub)

    # -- clients ------------------------------------------------------------------------
    def _both(self) -> tuple[Any, Any]:
        if self._clients is not None and self._pid == os.getpid():
            return self._clients
        with self._lock:
            if self._clients is None or self._pid != os.getpid():
                pubsub_v1 = None
                publisher, subscriber = self._given_publisher, self._given_subscriber
                if publisher is None or subscriber is None:
                    pubsub_v1 = _require_pubsub()
                if publisher is None:
                    assert pubsub_v1 is not None
                    publisher = pubsub_v1.PublisherClient()
                if subscriber is None:
                    assert pubsub_v1 is not None
                    subscriber = pubsub_v1.SubscriberClient()
                self._clients = (publisher, subscriber)
                self._pid = os.getpid()
            return self._clients

    @property
    def publisher(self) -> Any:
        return self._both()[0]

    def _gapic_publish(self, **request: Any) -> Any:
        """The GAPIC ``Publish`` call (synchronous: not the batching ``publish`` of
        ``pubsub_v1.PublisherClient``, which runs a thread per batch)."""
        from google.pubsub_v1.services.publisher.client import PublisherClient as Gapic

        publisher = self.publisher
        if isinstance(publisher, Gapic):
            return Gapic.publish(publisher, **request)
        return publisher.publish(**request)  # pragma: no cover - a GAPIC-like stand-in

    @property
    def subscriber(self) -> Any:
        return self._both()[1]

    def topic_path(self, topic: str) -> str:
        return f"projects/{self.project}/topics/{topic}"

    def subscription_path(self, queue: str) -> str:
        """The subscription a worker consuming ``queue`` pulls: the URL's for the default
        queue, else the one named after the queue."""
        name = self.subscription if queue == self.default_queue else queue
        return f"projects/{self.project}/subscriptions/{name}"

    @contextlib.contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        """google-api-core errors as this library's: unreachable, transient (after the
        retries) and missing resources as :class:`BrokerConnectionError`; anything else
        Pub/Sub refused as :class:`BrokerError`."""
        from google.api_core import exceptions as gx

        try:
            yield
        except gx.NotFound as e:
            raise BrokerConnectionError(f"Pub/Sub broker: {doing}: it does not exist ({e}); "
                                        f"create it as for Go workers") from e
        except (gx.ServiceUnavailable, gx.DeadlineExceeded, gx.RetryError, gx.Aborted,
                gx.ResourceExhausted, gx.InternalServerError) as e:
            raise BrokerConnectionError(f"Pub/Sub broker: {doing}: {e}") from e
        except gx.GoogleAPIError as e:
            raise BrokerError(f"Pub/Sub broker: {doing}: {e}") from e

    # -- producer -----------------------------------------------------------------------
    def message_data(self, sig: Signature) -> bytes:
        """The message ``data`` Go publishes for ``sig`` (the routing key is defaulted
        first, as Go does); adjusts ``sig.routing_key``."""
        self.adjust_routing_key(sig)
        return sig.to_json()

    def publish(self, sig: Signature) -> None:
        data = self.message_data(sig)
        self._publish(sig.routing_key, [data], f"task {sig.name}[{sig.uuid}]")

    def publish_many(self, sigs: Sequence[Signature]) -> None:
        """One ``Publish`` call per topic (at most 1,000 messages a call)."""
        by_topic: dict[str, list[bytes]] = {}
        for sig in sigs:
            data = self.message_data(sig)
            by_topic.setdefault(sig.routing_key, []).append(data)
        for topic, items in by_topic.items():
            for i in range(0, len(items), MAX_PUBLISH_BATCH):
                chunk = items[i:i + MAX_PUBLISH_BATCH]
                self._publish(topic, chunk, f"{len(chunk)} task(s)")

    def _publish(self, topic: str, items: list[bytes], what: str,
                 attributes: dict[str, str] | None = None) -> None:
        path = self.topic_path(topic)
        messages = [{"data": d, **({"attributes": attributes} if attributes else {})}
                    for d in items]
        try:
            with self._translated(f"publish {what} to {path}"):
                self._gapic_publish(topic=path, messages=messages, retry=_retry(),
                                    timeout=CALL_DEADLINE)
        except BrokerError as e:
            cause = type(e.__cause__).__name__
            if cause == "NotFound":
                raise PublishError(f"Publish message error: topic does not exist: {path} "
                                   f"(create it as for Go producers)") from e
            raise PublishError(f"Publish message error: {e}") from e

    # -- consumer -----------------------------------------------------------------------
    def consumer(self, queues: Sequence[str], *, crash_safe: bool = True,
                 heartbeat_ttl: float | None = None) -> Broker:
        """A :class:`PubSubConsumer` for one worker (its own ack-deadline thread).  Pub/Sub
        redelivers every message not acknowledged, so consuming is always crash-safe; the
        arguments are not used."""
        consumer = PubSubConsumer(self)
        with self._lock:
            self._consumers.append(consumer)
        return consumer

    def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        with self._lock:
            if self._consumer is None:
                self._consumer = PubSubConsumer(self)
                self._consumers.append(self._consumer)
            consumer = self._consumer
        return consumer.fetch(queues, max_messages, timeout)

    def pull(self, queue: str, max_messages: int, wait: float) -> list[Any]:
        """One ``Pull`` of ``queue``'s subscription (``ReceivedMessage`` objects); given up as
        empty after ``wait`` seconds (at least one)."""
        from google.api_core import exceptions as gx

        path = self.subscription_path(queue)
        wait = max(1.0, min(wait, CALL_DEADLINE))
        try:
            with self._translated(f"pull from {path}"):
                reply = self.subscriber.pull(
                    subscription=path, max_messages=max(1, min(max_messages, 1000)),
                    retry=_retry(), timeout=wait)
        except BrokerConnectionError as e:
            if isinstance(e.__cause__, gx.DeadlineExceeded):
                return []
            raise
        except BrokerError as e:  # the emulator's server-side expiry comes back as UNKNOWN
            if isinstance(e.__cause__, gx.Unknown) and "deadline exceeded" in str(e.__cause__):
                return []
            raise
        return list(reply.received_messages)

    # -- settling -----------------------------------------------------------------------
    @staticmethod
    def _forget(delivery: Delivery) -> None:
        consumer = delivery.extra.get("consumer")
        if isinstance(consumer, PubSubConsumer):
            consumer.forget(delivery)

    def _subscription_of(self, delivery: Delivery) -> str:
        return str(delivery.extra.get("subscription") or self.subscription_path(delivery.queue))

    def ack(self, delivery: Delivery) -> None:
        """``Acknowledge`` (the task finished), except for a task that failed with
        ``StopTaskDeletionOnError``: its deadline is no longer extended, so it comes back
        (Go nacks it).  The worker marks a failed task's delivery ``extra["failed"]``."""
        if delivery.extra.get("failed") and stop_task_deletion(delivery.body):
            self._forget(delivery)
            logger.info("Pub/Sub: task failed with StopTaskDeletionOnError: message %s not "
                        "acknowledged (it comes back after its ack deadline; a dead-letter "
                        "policy can move it)", delivery.extra.get("message_id", "?"))
            return
        self._acknowledge(delivery)

    def drop(self, delivery: Delivery) -> None:
        self._acknowledge(delivery)

    def _acknowledge(self, delivery: Delivery) -> None:
        ack_id = delivery.extra.get("ack_id")
        if ack_id is None:
            return  # not received from Pub/Sub: nothing to acknowledge
        self._forget(delivery)
        path = self._subscription_of(delivery)
        with self._translated(f"acknowledge message {delivery.extra.get('message_id', '?')} "
                              f"of {path}"):
            self.subscriber.acknowledge(subscription=path, ack_ids=[ack_id], retry=_retry(),
                                        timeout=CALL_DEADLINE)

    def _set_deadline(self, deliveries: Sequence[Delivery], seconds: int, doing: str) -> None:
        by_sub: dict[str, list[str]] = {}
        for d in deliveries:
            ack_id = d.extra.get("ack_id")
            if ack_id is None:  # bytes not received from Pub/Sub: publish them again
                self._publish(d.queue, [d.body], "a message given back")
                continue
            self._forget(d)
            by_sub.setdefault(self._subscription_of(d), []).append(ack_id)
        for path, ack_ids in by_sub.items():
            with self._translated(f"{doing} {len(ack_ids)} message(s) of {path}"):
                self.subscriber.modify_ack_deadline(
                    subscription=path, ack_ids=ack_ids, ack_deadline_seconds=seconds,
                    retry=_retry(), timeout=CALL_DEADLINE)

    def requeue(self, deliveries: Sequence[Delivery], *, front: bool = False) -> None:
        """``ModifyAckDeadline(0)``: redelivered at once, to any subscriber (Pub/Sub has no
        head or tail to choose)."""
        self._set_deadline(deliveries, 0, "give back")

    def requeue_later(self, deliveries: Sequence[Delivery], delay: float) -> bool:
        """An ack deadline of ``delay`` (whole seconds, 1 to 600): the message is redelivered
        then, held by nobody meanwhile."""
        if any(d.extra.get("ack_id") is None for d in deliveries):
            return False
        seconds = max(1, min(math.ceil(delay), MAX_ACK_DEADLINE))
        self._set_deadline(deliveries, seconds, f"hand back in {seconds} s")
        return True

    def dead_letter_place(self, queue: str) -> str:
        return dead_letter_topic(queue)

    def dead_letter(self, delivery: Delivery, reason: str) -> str:
        """Publish the bytes to the topic ``<queue>.dead`` (topic and subscription created
        when missing) with the attributes ``reason``, ``subscription`` and ``message_id``,
        then acknowledge the message; returns that topic's name."""
        where = dead_letter_topic(delivery.queue)
        self._ensure_dead_letter(where)
        attributes = {"reason": reason[:1000] or "?",
                      "subscription": self._subscription_of(delivery),
                      "message_id": str(delivery.extra.get("message_id", ""))}
        self._publish(where, [delivery.body], "an unusable message", attributes)
        self._acknowledge(delivery)
        return where

    def _ensure_dead_letter(self, name: str) -> None:
        from google.api_core import exceptions as gx

        if name in self._dead_ready:
            return
        topic = self.topic_path(name)
        subscription = f"projects/{self.project}/subscriptions/{name}"
        with self._translated(f"create the dead-letter topic {topic}"):
            try:
                self.publisher.create_topic(name=topic, retry=_retry(), timeout=CALL_DEADLINE)
                logger.warning("Pub/Sub: created the dead-letter topic %s", topic)
            except gx.AlreadyExists:
                pass
            try:
                self.subscriber.create_subscription(
                    name=subscription, topic=topic, ack_deadline_seconds=MAX_ACK_DEADLINE,
                    retry=_retry(), timeout=CALL_DEADLINE)
                logger.warning("Pub/Sub: created the dead-letter subscription %s", subscription)
            except gx.AlreadyExists:
                pass
        self._dead_ready.add(name)

    # -- inspection ---------------------------------------------------------------------
    def pending_tasks(self, queue: str | None = None) -> list[Signature]:
        raise NotImplementedError("Pub/Sub cannot list a subscription's messages without "
                                  "pulling them")

    def delayed_tasks(self) -> list[Signature]:
        raise NotImplementedError("Pub/Sub has no delayed messages: a task with an ETA waits "
                                  "in its subscription, then in a Python worker's consumer")

    def close(self) -> None:
        with self._lock:
            consumers, self._consumers, self._consumer = self._consumers, [], None
            clients, self._clients = self._clients, None
        for consumer in consumers:
            consumer.stop_consuming()
        if clients is not None and self._pid == os.getpid():
            for client, given in zip(clients, (self._given_publisher, self._given_subscriber),
                                     strict=True):
                if client is not given:
                    with contextlib.suppress(Exception):
                        client.transport.close()


class PubSubConsumer(PubSubBroker):
    """The receiving side of the Pub/Sub broker for one worker: pulls messages, holds tasks
    received before their ETA until due, and extends the ack deadline of every message it
    holds until the message is settled (one thread).  A :class:`Delivery` it received carries
    it as ``extra["consumer"]``, so whichever broker settles the message stops the extension.
    """

    def __init__(self, broker: PubSubBroker) -> None:
        self.broker = broker
        self.default_queue = broker.default_queue
        self.url = broker.url
        self.project, self.subscription = broker.project, broker.subscription
        self.max_extension = broker.max_extension
        self._dead_ready = broker._dead_ready
        self._pid = os.getpid()
        self._reset()

    def _reset(self) -> None:
        self._held: Holdings[_Held] = Holdings("ack_id", "mc-pubsub-lease")
        self._stop = threading.Event()
        self._ready: dict[str, collections.deque[Delivery]] = {}
        self._early: list[tuple[int, int, Delivery]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        #: emulator: pulls in flight in background threads, per queue (their start times)
        self._inflight: dict[str, list[float]] = {}
        self._poll_error: BaseException | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def _both(self) -> tuple[Any, Any]:
        return self.broker._both()

    def consumer(self, queues: Sequence[str], *, crash_safe: bool = True,
                 heartbeat_ttl: float | None = None) -> Broker:
        return self

    def __repr__(self) -> str:
        return f"<PubSubConsumer {self.url} holding {len(self._held)}>"

    # -- receiving ----------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        """Up to ``max_messages`` due messages of the first of ``queues`` (in that order) that
        has any, pulling each in turn, for about ``timeout`` seconds at most (at least one
        pull).  Tasks not due yet stay here (see the module documentation)."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._reset()
        deadline = time.monotonic() + max(timeout, 0.0)
        first = True
        while True:
            out = self._take(queues, max_messages)
            if out:
                return out
            left = deadline - time.monotonic()
            if left <= 0 and not first:
                return []
            first = False
            soon = self._next_due_in()
            if soon is not None and soon < min(1.0, max(left, 0.0)):
                self._stop.wait(soon)  # a held task is due before a pull would return
                continue
            if os.environ.get("PUBSUB_EMULATOR_HOST"):
                self._pull_in_background(queues, max_messages, max(left, 0.0), soon)
            else:
                for q in queues:
                    wait = max(left, 0.0) if soon is None else min(max(left, 0.0), soon)
                    messages = self.pull(q, max_messages, wait)
                    if messages:
                        self._taken(q, messages)
                        break
            if self._stop.is_set():
                return []

    def _pull_in_background(self, queues: Sequence[str], n: int, left: float,
                            soon: float | None) -> None:
        """Emulator: start a pull of each queue if fewer than :data:`EMULATOR_PULLS` are in
        flight and none started in the last :data:`PULL_STAGGER` seconds, then wait for an
        arrival (at most ``left``, the stagger, or until a held task is due)."""
        error, self._poll_error = self._poll_error, None
        if error is not None:
            raise error
        now = time.monotonic()
        pool = self._pool
        if pool is None:
            pool = self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=min(EMULATOR_PULLS * len(queues), 32),
                thread_name_prefix="mc-pubsub-pull")
        start = []
        with self._cond:
            for q in queues:
                started = self._inflight.setdefault(q, [])
                if len(started) < EMULATOR_PULLS and (not started
                                                       or now - started[-1] >= PULL_STAGGER):
                    started.append(now)
                    start.append(q)
        for q in start:  # (a callback may run at once, in this thread: not under the lock)
            try:
                future = pool.submit(self.pull, q, n, PULL_DEADLINE_EMULATOR)
            except RuntimeError:  # stop_consuming shut the pool down meanwhile
                return
            future.add_done_callback(functools.partial(self._pulled, q, now))
        with self._cond:
            if not any(self._ready.get(q) for q in queues):
                self._cond.wait(min(left, PULL_STAGGER, PULL_STAGGER if soon is None else soon))

    def _pulled(self, queue: str, started: float,
                future: concurrent.futures.Future[list[Any]]) -> None:
        try:
            messages = future.result()
        except BaseException as e:  # raised by the next fetch
            self._poll_error, messages = e, []
        if messages:
            self._taken(queue, messages)
        with self._cond:
            with contextlib.suppress(ValueError):
                self._inflight.get(queue, []).remove(started)
            self._cond.notify_all()

    def _take(self, queues: Sequence[str], n: int) -> list[Delivery]:
        with self._cond:
            now_ns = time.time_ns()
            while self._early and self._early[0][0] <= now_ns:
                d = heapq.heappop(self._early)[2]
                self._ready.setdefault(d.queue, collections.deque()).append(d)
                with self._held.lock:
                    held = self._held.get(d)
                    if held is not None:  # due: from now on it runs (max_extension applies)
                        held.for_eta, held.received = False, time.monotonic()
            for q in queues:
                buffered = self._ready.get(q)
                if buffered:
                    return [buffered.popleft() for _ in range(min(max(n, 1), len(buffered)))]
        return []

    def _next_due_in(self) -> float | None:
        with self._cond:
            if not self._early:
                return None
            return max(0.0, (self._early[0][0] - time.time_ns()) / 1e9)

    def _taken(self, queue: str, messages: list[Any]) -> None:
        """Hold what was pulled (ack-deadline extension), due tasks ready for the worker,
        early ones in the timer heap (or given back, past :data:`MAX_EARLY`)."""
        now = time.monotonic()
        path = self.subscription_path(queue)
        ready: list[Delivery] = []
        early: list[tuple[int, Delivery]] = []
        later: list[tuple[float, Delivery]] = []
        for m in messages:
            msg = m.message
            delivery = Delivery(bytes(msg.data), queue, m.ack_id, {
                "ack_id": m.ack_id,
                "subscription": path,
                "message_id": msg.message_id,
                "attributes": dict(msg.attributes),
                "delivery_attempt": int(m.delivery_attempt or 0),
                "publish_time": msg.publish_time,
                "received": now,
                "consumer": self,
            })
            due = eta_ns(delivery.body)
            left = None if due is None else (due - time.time_ns()) / 1e9
            if left is not None and left > 0:
                with self._cond:
                    crowded = len(self._early) + len(early) >= MAX_EARLY
                if crowded:
                    later.append((left, delivery))
                    continue
                self._hold(delivery, now, for_eta=True)
                early.append((due or 0, delivery))
            else:
                self._hold(delivery, now)
                ready.append(delivery)
        for left, delivery in later:
            self.requeue_later([delivery], left)
        if self._stop.is_set():  # pulled after the worker stopped: give back
            self._give_back([*ready, *(d for _, d in early)])
            return
        with self._cond:
            self._ready.setdefault(queue, collections.deque()).extend(ready)
            for due_ns, d in early:
                heapq.heappush(self._early, (due_ns, next(self._seq), d))
            self._cond.notify_all()

    def _give_back(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        try:
            self.requeue(deliveries)
        except BrokerError as e:
            logger.warning("Pub/Sub: could not give back %d message(s) (%s): they are "
                           "redelivered after their ack deadline", len(deliveries), e)

    # -- the ack-deadline extension -----------------------------------------------------
    def _hold(self, delivery: Delivery, now: float, *, for_eta: bool = False) -> None:
        self._held.hold(_Held(delivery, now, next_extension=now + FIRST_EXTENSION,
                              for_eta=for_eta), self.beat)

    def forget(self, delivery: Delivery) -> None:
        """Stop extending ``delivery``'s deadline (it is being settled); waits for an
        extension of it on its way, so that it cannot undo the settling call."""
        self._held.forget(delivery)

    def held(self) -> list[Delivery]:
        """The deliveries this consumer holds (received, not settled)."""
        return self._held.deliveries()

    def beat(self, now: float | None = None) -> float:
        """Extend the deadline of every held message due for it; returns the seconds until
        the next one is due (at most 1)."""
        return self._held.beat(time.monotonic() if now is None else now, self._due,
                               lambda held: str(held.delivery.extra["subscription"]),
                               self._extend)

    def _due(self, held: _Held, now: float) -> float | None:
        if not held.for_eta and now - held.received > self.max_extension:
            logger.warning("Pub/Sub: message %s has run for more than max_extension (%g s): "
                           "its ack deadline is no longer extended, it may be redelivered and "
                           "run a second time", held.delivery.extra.get("message_id", "?"),
                           self.max_extension)
            self._held.discard(held)
            return None
        return held.next_extension

    def _extend(self, path: str, items: list[_Held], now: float) -> None:
        try:
            with self._translated(f"extend the ack deadline of {len(items)} message(s) of "
                                  f"{path}"):
                self.subscriber.modify_ack_deadline(
                    subscription=path, ack_ids=[h.delivery.extra["ack_id"] for h in items],
                    ack_deadline_seconds=LEASE_SECONDS, retry=_retry(), timeout=CALL_DEADLINE)
        except BrokerError as e:
            logger.warning("Pub/Sub ack-deadline extension: %s; trying again shortly", e)
            for h in items:
                h.next_extension = now + 1.0
            return
        for h in items:
            h.next_extension = now + LEASE_SECONDS / 3

    def stop_consuming(self, *, idle: bool = True) -> None:
        """Give back what was pulled but not handed out (tasks held for their ETA included:
        redelivered at once, to another worker) and stop the extension thread (messages still
        held are redelivered after their ack deadline)."""
        self._stop.set()
        with self._cond:
            left = [d for q in self._ready.values() for d in q] + [d for _, _, d in self._early]
            self._ready, self._early = {}, []
        self._give_back(left)
        pool, self._pool = self._pool, None
        if pool is not None:  # what pulls in flight still get is given back (_taken)
            pool.shutdown(wait=False, cancel_futures=True)
        self._held.stop()

    def close(self) -> None:
        self.stop_consuming()


__all__ = [
    "LEASE_SECONDS",
    "MAX_EARLY",
    "PubSubBroker",
    "PubSubConsumer",
    "dead_letter_topic",
    "parse_url",
]
