"""The SQS broker against a real SQS API (moto server, ``moto_server`` fixture), with Redis
results: Go's bytes and queue URLs, delays (Go's truncation, and ETAs past SQS's 15 minutes
stepped with a shortened limit), FIFO group and deduplication ids, batches, the visibility
heartbeat, settling (delete after the task, StopTaskDeletionOnError, hand-backs, dead letters)
and errors."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from machinery_compat import Machinery
from machinery_compat.brokers import create_broker
from machinery_compat.brokers.base import Delivery
from machinery_compat.brokers.sqs import (
    FIFO_GROUP_ERROR,
    SQSBroker,
    SQSConsumer,
    dead_letter_queue,
    deduplication_id,
)
from machinery_compat.config import Config, SQSConfig
from machinery_compat.exceptions import BrokerConnectionError, ConfigError, PublishError
from machinery_compat.protocol import Arg, GoTime, Signature
from machinery_compat.worker import Worker
from tests.helpers import GOLDEN_BODY, wait_for
from tests.services import MotoServer

ACCOUNT = "123456789012"
AWS_PREFIX = f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}"


@pytest.fixture
def sqs(moto_server: MotoServer, moto_endpoint: str) -> Any:
    return moto_server.client("sqs")


@pytest.fixture
def prefix(moto_endpoint: str) -> str:
    """The broker URL: moto's queue URL prefix (the broker sends its calls to that host)."""
    return f"{moto_endpoint}/{ACCOUNT}"


@pytest.fixture
def make_queue(sqs: Any) -> Iterator[Callable[..., str]]:
    """``make_queue(fifo=False, **attributes)``: a new, unique queue's name."""
    made: list[str] = []

    def make(fifo: bool = False, **attributes: str) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}" + (".fifo" if fifo else "")
        attrs = dict(attributes)
        if fifo:
            attrs["FifoQueue"] = "true"
        url = sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
        made.append(url)
        return name

    yield make
    for url in made:
        with contextlib.suppress(Exception):
            sqs.delete_queue(QueueUrl=url)


@pytest.fixture
def queue(make_queue: Callable[..., str]) -> str:
    return make_queue()


@pytest.fixture
def make_app(prefix: str, redis_url: str, queue: str) -> Iterator[Callable[..., Machinery]]:
    apps: list[Machinery] = []

    def make(sqs_config: SQSConfig | None = None, **kwargs: Any) -> Machinery:
        kwargs.setdefault("default_queue", queue)
        a = Machinery(broker=kwargs.pop("broker", prefix), result_backend=redis_url,
                      config=Config(sqs=sqs_config or SQSConfig()), **kwargs)
        apps.append(a)
        return a

    yield make
    for a in apps:
        a.close()


@pytest.fixture
def app(make_app: Callable[..., Machinery]) -> Machinery:
    return make_app()


@pytest.fixture
def start_worker(start_any_worker: Callable[..., Worker]) -> Callable[..., Worker]:
    return start_any_worker


def receive_all(sqs: Any, url: str, wait: int = 1, visibility: int = 30) -> list[dict[str, Any]]:
    """Every message visible in the queue (received: hidden for ``visibility`` s)."""
    out: list[dict[str, Any]] = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=wait,
                                  VisibilityTimeout=visibility, MessageAttributeNames=["All"],
                                  MessageSystemAttributeNames=["All"]).get("Messages", [])
        if not got:
            return out
        out += got
        wait = 0


def calls_of(client: Any, operation: str) -> list[dict[str, Any]]:
    """The parameters of every ``operation`` call ``client`` makes from now on."""
    seen: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        seen.append(dict(params))

    client.meta.events.register(f"provide-client-params.sqs.{operation}", record)
    return seen


def add_sig(**changes: Any) -> Signature:
    return Signature(uuid=f"task_{uuid.uuid4()}", name="add",
                     args=[Arg("int64", 1), Arg("int64", 1)], headers={}).copy(**changes)


# -- producing ------------------------------------------------------------------------


def test_factory_picks_sqs_for_https_and_http(prefix: str) -> None:
    for url in (AWS_PREFIX, prefix):
        broker = create_broker(Config(broker=url, sqs=SQSConfig()))
        assert isinstance(broker, SQSBroker)
        assert broker.queue_url("machinery_tasks") == url + "/machinery_tasks"
        broker.close()


def test_go_body_and_queue_url_on_the_wire(moto_server: MotoServer, moto_endpoint: str,
                                           sqs: Any) -> None:
    """Go's broker URL (an AWS host) with the Python-only endpoint_url: SendMessage goes to
    <broker>/machinery_tasks with §12.3's bytes (empty RoutingKey), no attributes, no delay."""
    url = sqs.create_queue(QueueName="machinery_tasks")["QueueUrl"]
    try:
        broker = SQSBroker(AWS_PREFIX, sqs=SQSConfig(endpoint_url=moto_endpoint))
        sent = calls_of(broker.client, "SendMessage")
        sig = Signature.from_json(GOLDEN_BODY).copy(routing_key="")
        broker.publish(sig)
        assert sent == [{"QueueUrl": f"{AWS_PREFIX}/machinery_tasks",
                         "MessageBody": GOLDEN_BODY.decode().replace(
                             '"RoutingKey":"machinery_tasks"', '"RoutingKey":""')}]
        assert sig.routing_key == "machinery_tasks"  # defaulted after encoding, as Go does
        (msg,) = receive_all(sqs, url)
        assert msg["Body"] == sent[0]["MessageBody"]
        assert "MessageAttributes" not in msg
        broker.close()
    finally:
        sqs.delete_queue(QueueUrl=url)


def test_eta_delay_seconds_truncated_as_go(app: Machinery, queue: str) -> None:
    broker = app.broker
    assert isinstance(broker, SQSBroker)
    now = time.time_ns()
    cases = [(5.9, 5), (5.0, 5), (0.9, None), (-3, None), (900.0, 900), (900.5, 900),
             (3600, 900)]
    for ahead, expected in cases:
        sig = add_sig(eta=GoTime(now + int(ahead * 1e9)))
        params = broker.message_params(sig, now_ns=now)
        assert params.get("DelaySeconds") == expected, ahead
    sent = calls_of(broker.client, "SendMessage")
    broker.publish(add_sig(eta=GoTime.now().add_seconds(4.5)))
    assert sent[0]["DelaySeconds"] in (3, 4)


def test_delayed_task_runs_after_its_delay(app: Machinery, start_worker: Callable[..., Worker],
                                           sqs: Any, queue: str) -> None:
    ran: list[float] = []
    app.register_task("add", lambda a, b: ran.append(time.time()) or a + b)
    eta = time.time() + 2.5
    result = app.send_task("add", [1, 1], eta=eta)
    start_worker(app)
    assert result.get(timeout=15) == 2
    # DelaySeconds 2 (truncated, as Go): visible ~0.5 s early; held by the consumer until due
    assert ran[0] >= eta


def test_eta_past_sqs_limit_is_stepped_until_due(make_app: Callable[..., Machinery],
                                                 start_worker: Callable[..., Worker],
                                                 sqs: Any, queue: str) -> None:
    """Past the longest delay (``sqs.max_delay_seconds``: 2 s here, SQS's 900 s by default)
    the task is sent with that delay and handed back by the worker (a new message with the
    remaining delay, the old one deleted) until due; a task with no ETA is not held up
    meanwhile."""
    app = make_app(SQSConfig(max_delay_seconds=2))
    broker = app.broker
    assert isinstance(broker, SQSBroker)
    assert broker.max_delay == 2
    ran: dict[str, float] = {}
    app.register_task("mark", lambda tag: ran.setdefault(tag, time.time()) and None)
    sends = calls_of(broker.client, "SendMessage")
    eta = time.time() + 5.5
    late = app.send_task("mark", ["late"], eta=eta)
    assert sends[0]["DelaySeconds"] == 2
    start_worker(app)
    app.send_task("mark", ["now"]).get(timeout=10)
    assert ran["now"] < eta - 3
    late.get(timeout=20)
    assert ran["late"] >= eta
    handbacks = [p for p in sends[1:] if p.get("DelaySeconds")]
    assert 1 <= len(handbacks) <= 3, sends
    assert all(p["DelaySeconds"] <= 2 for p in handbacks)
    assert all(p["MessageBody"] == sends[0]["MessageBody"] for p in handbacks)  # same bytes
    url = broker.queue_url(queue)
    assert broker.queue_depth(queue) == {"visible": 0, "in_flight": 0, "delayed": 0}, url


def test_max_delay_comes_from_the_config(prefix: str) -> None:
    assert SQSBroker(prefix).max_delay == 900
    assert SQSBroker(prefix, sqs=SQSConfig(max_delay_seconds=0)).max_delay == 900
    broker = create_broker(Config.from_env({"BROKER": prefix, "SQS_MAX_DELAY_SECONDS": "3"}))
    assert isinstance(broker, SQSBroker)
    assert broker.max_delay == 3
    assert broker.message_params(add_sig(eta=GoTime.now().add_seconds(60)))["DelaySeconds"] == 3
    broker.close()
    with pytest.raises(ConfigError, match="max_delay_seconds"):
        SQSBroker(prefix, sqs=SQSConfig(max_delay_seconds=901))


# -- FIFO -------------------------------------------------------------------------------


def test_fifo_needs_a_message_group(make_app: Callable[..., Machinery],
                                    make_queue: Callable[..., str]) -> None:
    fifo = make_queue(fifo=True)
    app = make_app(default_queue=fifo)
    with pytest.raises(PublishError, match=FIFO_GROUP_ERROR):
        app.broker.publish(add_sig(routing_key=fifo))


def test_fifo_group_id_dedup_id_and_eta_ignored(make_app: Callable[..., Machinery],
                                                make_queue: Callable[..., str], sqs: Any) -> None:
    fifo = make_queue(fifo=True)
    app = make_app(default_queue=fifo)
    sends = calls_of(app.broker.client, "SendMessage")
    sig = add_sig(routing_key=fifo, broker_message_group_id="g1",
                  eta=GoTime.now().add_seconds(60))
    body = sig.to_json()
    app.broker.publish(sig)
    assert sends[0]["MessageGroupId"] == "g1"
    assert sends[0]["MessageDeduplicationId"] == deduplication_id(body)
    assert "DelaySeconds" not in sends[0]  # Go ignores ETA on FIFO queues
    (msg,) = receive_all(sqs, app.broker.queue_url(fifo))
    assert msg["Attributes"]["MessageGroupId"] == "g1"


def test_fifo_retry_is_not_swallowed_by_deduplication(
        make_app: Callable[..., Machinery], make_queue: Callable[..., str],
        start_worker: Callable[..., Worker], sqs: Any) -> None:
    """A failing task with RetryCount 2 on a FIFO queue: its retries (same UUID, re-sent while
    the original is still in flight) all run.  With Go's dedup id (the UUID) SQS drops them."""
    fifo = make_queue(fifo=True)
    app = make_app(default_queue=fifo)
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("not yet")
        return "ok"

    app.register_task("flaky", flaky)
    result = app.send_signature(app.build_signature("flaky", [], retry_count=2,
                                                    broker_message_group_id="g"))
    worker = start_worker(app)
    assert result.get(timeout=20) == "ok"
    assert len(attempts) == 3
    worker.stop(timeout=15)  # else it may receive the messages below first

    # the hazard this avoids, shown on the same server: Go's UUID dedup id
    url = app.broker.queue_url(fifo)
    for n in (1, 2):
        sqs.send_message(QueueUrl=url, MessageBody=f"retry {n}", MessageGroupId="g",
                         MessageDeduplicationId="task_same_uuid")
    assert [m["Body"] for m in receive_all(sqs, url)] == ["retry 1"]


def test_fifo_group_runs_in_order_on_a_worker_with_concurrency_4(
        make_app: Callable[..., Machinery], make_queue: Callable[..., str],
        start_worker: Callable[..., Worker]) -> None:
    """SQS FIFO semantics on a Python worker taking up to 4 tasks at a time: one
    ReceiveMessage may return several messages of a group, but each runs only after its
    predecessor finished (in order); two groups still run side by side."""
    fifo = make_queue(fifo=True)
    app = make_app(default_queue=fifo)
    runs: list[tuple[str, int, float, float]] = []
    lock = threading.Lock()

    def step(group: str, i: int) -> int:
        start = time.monotonic()
        time.sleep(0.15)
        with lock:
            runs.append((group, i, start, time.monotonic()))
        return i

    app.register_task("step", step)
    results = [app.send_signature(app.build_signature("step", [g, i],
                                                      broker_message_group_id=g))
               for i in range(8) for g in ("g", "h")]
    start_worker(app, concurrency=4)
    assert [r.get(timeout=40) for r in results] == [i for i in range(8) for _ in "gh"]
    for g in ("g", "h"):
        mine = [r for r in runs if r[0] == g]
        assert [r[1] for r in mine] == list(range(8)), runs  # in order
        assert all(b[2] >= a[3] for a, b in itertools.pairwise(mine)), mine  # one at a time
    # the two groups overlap (the worker still runs different groups at the same time)
    assert any(a[0] != b[0] and a[2] < b[3] and b[2] < a[3] for a in runs for b in runs), runs


def test_fifo_messages_waiting_for_their_group_are_given_back(
        make_app: Callable[..., Machinery], make_queue: Callable[..., str], sqs: Any) -> None:
    """A consumer hands out one message of a group at a time; the others wait, their
    visibility kept by the heartbeat.  The next is released when its predecessor is deleted;
    when the predecessor is handed back instead, or the consumer stops, the waiting ones are
    given back (visible again, in order): nothing is lost, nothing overtakes."""
    fifo = make_queue(fifo=True)
    app = make_app(default_queue=fifo)
    broker = app.broker
    assert isinstance(broker, SQSBroker)
    sigs = [add_sig(routing_key=fifo, broker_message_group_id="g") for _ in range(3)]
    for sig in sigs:
        broker.publish(sig)

    def uuid_of(d: Delivery) -> str:
        return Signature.from_json(d.body).uuid

    consumer = broker.consumer([fifo])
    assert isinstance(consumer, SQSConsumer)
    (first,) = wait_for(lambda: consumer.fetch([fifo], 10, 1), what="a delivery")
    assert uuid_of(first) == sigs[0].uuid
    wait_for(lambda: len(consumer.held()) == 3, what="all three received")
    assert consumer.fetch([fifo], 10, 0.3) == []  # the others wait for the first
    broker.requeue([first])  # handed back: the waiting ones go back too
    assert consumer.held() == []
    (again,) = wait_for(lambda: consumer.fetch([fifo], 10, 1), what="the first again")
    assert uuid_of(again) == sigs[0].uuid
    wait_for(lambda: len(consumer.held()) == 3, what="all three received again")
    broker.ack(again)  # deleted: the second is released
    (second,) = consumer.fetch([fifo], 10, 1)
    assert uuid_of(second) == sigs[1].uuid
    consumer.stop_consuming()  # the third (waiting) is given back; the second is in flight
    broker.requeue([second])  # a worker stopping gives back what it did not start
    assert [Signature.from_json(m["Body"].encode()).uuid
            for m in receive_all(sqs, broker.queue_url(fifo))] == [s.uuid for s in sigs[1:]]


# -- batches ----------------------------------------------------------------------------


def test_group_of_25_is_sent_in_3_batches(app: Machinery, start_worker: Callable[..., Worker],
                                          queue: str) -> None:
    from machinery_compat.canvas import group

    app.register_task("add", lambda a, b: a + b)
    batches = calls_of(app.broker.client, "SendMessageBatch")
    singles = calls_of(app.broker.client, "SendMessage")
    members = group(app.signature("add", [i, i]) for i in range(25)).to_signatures()
    # encoded before routing (RoutingKey ""), with the Headers {} SendGroup sets, as Go
    expected = [m.copy(headers=m.headers or {}).to_json().decode() for m in members]
    result = app.send_group(members)
    assert [len(b["Entries"]) for b in batches] == [10, 10, 5]
    assert not singles
    assert all(b["QueueUrl"] == app.broker.queue_url(queue) for b in batches)
    assert [e["MessageBody"] for b in batches for e in b["Entries"]] == expected
    assert '"RoutingKey":""' in expected[0]
    start_worker(app, concurrency=4)
    assert result.get(timeout=20) == [2 * i for i in range(25)]


class _BatchStub:
    """A client whose SendMessageBatch fails chosen entries (per call)."""

    def __init__(self, failures: list[dict[str, dict[str, Any]]]) -> None:
        self.failures = failures
        self.calls: list[list[str]] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        fail = self.failures.pop(0) if self.failures else {}
        self.calls.append([e["Id"] for e in Entries])
        return {"Successful": [{"Id": e["Id"]} for e in Entries if e["Id"] not in fail],
                "Failed": [{"Id": i, **f} for i, f in fail.items()
                           if i in {e["Id"] for e in Entries}]}


def test_batch_entries_failed_by_sqs_are_sent_again() -> None:
    stub = _BatchStub([{"3": {"Code": "InternalError", "Message": "oops", "SenderFault": False}}])
    broker = SQSBroker(AWS_PREFIX, client=stub)
    broker.publish_many([add_sig() for _ in range(5)])
    assert stub.calls == [["0", "1", "2", "3", "4"], ["3"]]


def test_batch_entries_refused_raise_naming_the_task() -> None:
    stub = _BatchStub([{"1": {"Code": "InvalidMessageContents", "Message": "bad char",
                              "SenderFault": True}}])
    broker = SQSBroker(AWS_PREFIX, client=stub)
    sigs = [add_sig() for _ in range(3)]
    with pytest.raises(PublishError, match=rf"1 of 3 .*{sigs[1].uuid}.*InvalidMessageContents"):
        broker.publish_many(sigs)
    assert stub.calls == [["0", "1", "2"]]


# -- consuming and settling -------------------------------------------------------------


def test_message_is_deleted_only_after_the_task_finished(
        app: Machinery, start_worker: Callable[..., Worker], queue: str) -> None:
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(10)
        return "done"

    app.register_task("slow", slow)
    result = app.send_task("slow", [])
    start_worker(app)
    assert started.wait(10)
    broker = app.broker
    assert isinstance(broker, SQSBroker)
    assert broker.queue_depth(queue)["in_flight"] == 1
    release.set()
    assert result.get(timeout=10) == "done"
    wait_for(lambda: broker.queue_depth(queue) == {"visible": 0, "in_flight": 0, "delayed": 0},
             what="the message deleted")


def test_receive_parameters(make_app: Callable[..., Machinery], queue: str) -> None:
    app = make_app(SQSConfig(wait_time_seconds=3, visibility_timeout=7))
    broker = app.broker
    assert isinstance(broker, SQSBroker)
    calls = calls_of(broker.client, "ReceiveMessage")
    assert broker.fetch([queue], 25, 1.5) == []
    assert calls == [{"QueueUrl": broker.queue_url(queue), "MaxNumberOfMessages": 10,
                      "WaitTimeSeconds": 1, "VisibilityTimeout": 7,
                      "MessageSystemAttributeNames": ["ApproximateReceiveCount", "SentTimestamp",
                                                      "MessageGroupId"],
                      "MessageAttributeNames": ["All"]}]
    assert broker.wait_seconds(60) == 3  # the configured wait, at most
    assert SQSBroker(AWS_PREFIX, client=object()).wait_seconds(60) == 20  # Go's 0: long poll
    t0 = time.monotonic()
    assert broker.fetch([queue], 1, 0.3) == []  # below a second: short poll, then sleep
    assert 0.25 <= time.monotonic() - t0 < 1.0
    assert calls[-1]["WaitTimeSeconds"] == 0


def test_several_queues_are_long_polled_at_once(make_app: Callable[..., Machinery],
                                                make_queue: Callable[..., str]) -> None:
    """A fetch on three empty queues with a 5 s timeout returns as soon as the last one gets a
    message; what the other polls receive later waits in the consumer for the next fetch."""
    qa, qb, qc = make_queue(), make_queue(), make_queue()
    app = make_app(default_queue=qa)
    broker = app.broker
    assert isinstance(broker, SQSBroker)
    consumer = broker.consumer([qa, qb, qc])
    assert isinstance(consumer, SQSConsumer)
    threading.Timer(0.5, lambda: broker.publish(add_sig(routing_key=qc))).start()
    t0 = time.monotonic()
    (d,) = consumer.fetch([qa, qb, qc], 10, 5.0)
    assert d.queue == qc and time.monotonic() - t0 < 3
    broker.publish(add_sig(routing_key=qa))
    (d2,) = wait_for(lambda: consumer.fetch([qb, qa], 10, 0.5), what="qa's message")
    assert d2.queue == qa
    broker.ack(d)
    broker.ack(d2)
    consumer.stop_consuming()


def test_a_task_received_early_is_held_then_given_back_at_stop(app: Machinery,
                                                               queue: str) -> None:
    """ETA 1.6 s ahead: sent with DelaySeconds 1, received ~0.6 s early, held (not handed
    out, its visibility kept) until due; a consumer stopping meanwhile gives it back."""
    broker = app.broker
    assert isinstance(broker, SQSBroker)
    consumer = broker.consumer([queue])
    assert isinstance(consumer, SQSConsumer)
    sig = add_sig(eta=GoTime.now().add_seconds(1.6))
    broker.publish(sig)
    # short polls (moto's long polls miss messages that become visible while they wait)
    deadline = time.monotonic() + 5
    while not consumer.held() and time.monotonic() < deadline:
        assert consumer.fetch([queue], 1, 0.2) == []
    assert [Signature.from_json(d.body).uuid for d in consumer.held()] == [sig.uuid]
    assert broker.queue_depth(queue)["in_flight"] == 1
    consumer.stop_consuming()
    assert broker.queue_depth(queue) == {"visible": 1, "in_flight": 0, "delayed": 0}


def test_delivery_carries_receipt_handle_and_attributes(app: Machinery, queue: str) -> None:
    app.broker.publish(add_sig())
    broker = app.broker
    assert isinstance(broker, SQSBroker)
    consumer = broker.consumer([queue])
    (d,) = wait_for(lambda: consumer.fetch([queue], 10, 1), what="a delivery")
    assert d.queue == queue
    assert d.tag == d.extra["receipt_handle"]
    assert d.extra["receive_count"] == 1
    assert d.extra["sent_timestamp"] > 0
    assert d.extra["queue_url"] == broker.queue_url(queue)
    assert b'"SQSReceiptHandle":""' in d.body  # the bytes as sent, not rewritten
    broker.ack(d)
    consumer.stop_consuming()


def test_heartbeat_keeps_a_long_task_from_being_redelivered(
        make_app: Callable[..., Machinery], start_worker: Callable[..., Worker],
        queue: str) -> None:
    """Visibility timeout 2 s, a task of 6.5 s: another worker polling the same queue meanwhile
    never receives it; it runs once."""
    runs: Counter[str] = Counter()
    a = make_app(SQSConfig(visibility_timeout=2))
    b = make_app(SQSConfig(visibility_timeout=2))

    def long_task(tag: str) -> str:
        runs[tag] += 1
        time.sleep(6.5)
        return tag

    for target in (a, b):
        target.register_task("long", long_task)
    result = a.send_task("long", ["x"])
    start_worker(a, concurrency=1)
    wait_for(lambda: runs["x"] == 1, what="the task started")
    start_worker(b, concurrency=1)
    assert result.get(timeout=20) == "x"
    time.sleep(2.5)  # past another visibility timeout: nothing comes back
    assert runs == {"x": 1}
    assert a.broker.queue_depth(queue) == {"visible": 0, "in_flight": 0, "delayed": 0}


def test_heartbeat_uses_the_queues_own_visibility_timeout(
        make_app: Callable[..., Machinery], make_queue: Callable[..., str],
        start_worker: Callable[..., Worker]) -> None:
    """No receive_visibility_timeout configured (Go's default): the queue's own (2 s here)
    is read once and the heartbeat extends by it."""
    q = make_queue(VisibilityTimeout="2")
    a = make_app(default_queue=q)
    b = make_app(default_queue=q)
    runs: Counter[str] = Counter()

    def long_task() -> None:
        runs["x"] += 1
        time.sleep(5)

    a.register_task("long", long_task)
    b.register_task("long", long_task)
    result = a.send_task("long", [])
    start_worker(a, concurrency=1)
    wait_for(lambda: runs["x"] == 1, what="the task started")
    start_worker(b, concurrency=1)
    result.get(timeout=20)
    assert runs == {"x": 1}
    assert isinstance(a.broker, SQSBroker)
    assert a.broker.visibility_of(q) == 2


def test_no_heartbeat_without_a_visibility_timeout_it_can_read() -> None:
    consumer = SQSConsumer(SQSBroker(AWS_PREFIX, client=object()))
    d = Delivery(b"{}", "q", "rh", {"receipt_handle": "rh"})
    consumer._hold(d, "u", time.monotonic(), 0)
    assert consumer._held._thread is None
    assert consumer.held() == [d]
    consumer.forget(d)
    assert consumer.held() == []


class _VisibilityStub:
    def __init__(self) -> None:
        self.calls: list[list[dict[str, Any]]] = []

    def change_message_visibility_batch(self, QueueUrl: str,
                                        Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append(Entries)
        return {"Successful": [{"Id": e["Id"]} for e in Entries]}


def test_heartbeat_every_half_timeout_up_to_12_hours(caplog: pytest.LogCaptureFixture) -> None:
    from machinery_compat.brokers.sqs import _Held

    stub = _VisibilityStub()
    consumer = SQSConsumer(SQSBroker(AWS_PREFIX, client=stub))
    d = Delivery(b"{}", "q", "rh", {"receipt_handle": "rh", "message_id": "m1"})
    t0 = 1000.0
    consumer._held.hold(_Held(d, t0, queue_url="u", extended=t0, visibility=10))
    assert consumer.beat(t0 + 4.5) == pytest.approx(0.5)
    assert stub.calls == []
    consumer.beat(t0 + 5)
    assert stub.calls == [[{"Id": "0", "ReceiptHandle": "rh", "VisibilityTimeout": 10}]]
    consumer.beat(t0 + 43_195)  # SQS allows 12 hours from the receipt: only 4 s more
    assert stub.calls[-1][0]["VisibilityTimeout"] == 4
    with caplog.at_level(logging.WARNING):
        consumer.beat(t0 + 43_200)
    assert "held for 12 hours" in caplog.text and consumer.held() == []
    assert len(stub.calls) == 2


def test_unregistered_task_left_for_another_worker_without_hot_loop(
        make_app: Callable[..., Machinery], start_worker: Callable[..., Worker],
        queue: str, sqs: Any) -> None:
    """A worker without the task gives it back (visibility reset, then growing visibility
    delays): it is received a handful of times in 4 s, not hundreds, and never deleted; a
    worker that has it then runs it."""
    lacking = make_app()
    lacking.register_task("other", lambda: None)
    having = make_app()
    having.register_task("add", lambda a, b: a + b)
    receives = calls_of(lacking.broker.client, "ChangeMessageVisibility")
    result = lacking.send_task("add", [2, 3])
    w = start_worker(lacking, concurrency=1)
    time.sleep(4)
    assert w.outcomes["handed_back"] >= 2
    assert w.outcomes["handed_back"] <= 12, w.outcomes
    assert [c["VisibilityTimeout"] for c in receives][:1] == [0]
    assert any(c["VisibilityTimeout"] >= 1 for c in receives)
    start_worker(having, concurrency=1)
    assert result.get(timeout=60) == 5  # (the growing visibility delay may be ~20 s by now)


def test_requeue_later_hides_the_message_for_the_delay(app: Machinery, queue: str,
                                                       sqs: Any) -> None:
    broker = app.broker
    assert isinstance(broker, SQSBroker)
    broker.publish(add_sig())
    consumer = broker.consumer([queue])
    (d,) = wait_for(lambda: consumer.fetch([queue], 1, 1), what="a delivery")
    assert broker.requeue_later([d], 1.5) is True
    assert consumer.held() == []
    t0 = time.monotonic()
    assert receive_all(sqs, broker.queue_url(queue), wait=0) == []
    (again,) = wait_for(lambda: consumer.fetch([queue], 1, 1), timeout=10, what="redelivery")
    assert time.monotonic() - t0 >= 1.0
    assert again.extra["receive_count"] == 2
    broker.requeue([again])  # visible at once
    assert len(receive_all(sqs, broker.queue_url(queue), wait=0)) == 1
    consumer.stop_consuming()


def test_requeue_later_refuses_bytes_not_received_from_sqs(app: Machinery, queue: str) -> None:
    assert app.broker.requeue_later([Delivery(b"{}", queue)], 1) is False


def test_undecodable_message_goes_to_the_dead_letter_queue(
        app: Machinery, start_worker: Callable[..., Worker], queue: str, sqs: Any) -> None:
    broker = app.broker
    assert isinstance(broker, SQSBroker)
    sqs.send_message(QueueUrl=broker.queue_url(queue), MessageBody="{not json")
    w = start_worker(app)
    dead = dead_letter_queue(queue)
    assert dead == f"{queue}-dead"
    wait_for(lambda: w.outcomes["dead_lettered"] == 1 and broker.queue_depth(queue)["in_flight"] == 0,
             what="dead-lettered")
    (msg,) = receive_all(sqs, broker.queue_url(dead))
    assert msg["Body"] == "{not json"
    assert "reason" in msg["MessageAttributes"]
    assert broker.queue_depth(queue) == {"visible": 0, "in_flight": 0, "delayed": 0}
    sqs.delete_queue(QueueUrl=broker.queue_url(dead))


def test_dead_letter_queue_of_a_fifo_queue(make_app: Callable[..., Machinery],
                                           make_queue: Callable[..., str], sqs: Any) -> None:
    fifo = make_queue(fifo=True)
    app = make_app(default_queue=fifo)
    broker = app.broker
    assert isinstance(broker, SQSBroker)
    url = broker.queue_url(fifo)
    sqs.send_message(QueueUrl=url, MessageBody="garbage", MessageGroupId="g7",
                     MessageDeduplicationId="d1")
    consumer = broker.consumer([fifo])
    (d,) = wait_for(lambda: consumer.fetch([fifo], 1, 1), what="a delivery")
    where = broker.dead_letter(d, "undecodable")
    assert where == fifo[: -len(".fifo")] + "-dead.fifo"
    (msg,) = receive_all(sqs, broker.queue_url(where))
    assert (msg["Body"], msg["Attributes"]["MessageGroupId"]) == ("garbage", "g7")
    assert msg["MessageAttributes"]["reason"]["StringValue"] == "undecodable"
    sqs.delete_queue(QueueUrl=broker.queue_url(where))
    consumer.stop_consuming()


def test_drop_deletes(app: Machinery, queue: str) -> None:
    broker = app.broker
    assert isinstance(broker, SQSBroker)
    broker.publish(add_sig(ignore_when_task_not_registered=True))
    consumer = broker.consumer([queue])
    (d,) = wait_for(lambda: consumer.fetch([queue], 1, 1), what="a delivery")
    broker.drop(d)
    assert broker.queue_depth(queue) == {"visible": 0, "in_flight": 0, "delayed": 0}


def test_stop_task_deletion_on_error_keeps_a_failed_message(app: Machinery,
                                                            queue: str) -> None:
    """The broker's side (the worker marks a failed task's delivery ``extra["failed"]``):
    a failed task with StopTaskDeletionOnError is not deleted; without the flag, or when the
    task did not fail, it is."""
    broker = app.broker
    assert isinstance(broker, SQSBroker)
    consumer = broker.consumer([queue])
    outcomes = {}
    for flag, failed in ((True, True), (True, False), (False, True)):
        broker.publish(add_sig(stop_task_deletion_on_error=flag))
        (d,) = wait_for(lambda: consumer.fetch([queue], 1, 1), what="a delivery")
        if failed:
            d.extra["failed"] = True
        broker.ack(d)
        assert consumer.held() == []  # no heartbeat for it any more, either way
        outcomes[(flag, failed)] = broker.queue_depth(queue)["in_flight"]
        if outcomes[(flag, failed)]:
            broker.requeue([d])  # tidy up for the next case
            (d,) = wait_for(lambda: consumer.fetch([queue], 1, 1), what="a delivery")
            broker.drop(d)
    assert outcomes == {(True, True): 1, (True, False): 0, (False, True): 0}
    consumer.stop_consuming()


def _run_failing_task_with_stop_task_deletion(
        make_app: Callable[..., Machinery], start_worker: Callable[..., Worker],
        make_queue: Callable[..., str]) -> list[int]:
    """A task failing with StopTaskDeletionOnError on a queue with a 1 s visibility timeout:
    how many times it ran within 5 s (kept: again and again; deleted: once)."""
    q = make_queue(VisibilityTimeout="1")
    app = make_app(default_queue=q)
    runs: list[int] = []

    def boom() -> None:
        runs.append(1)
        raise RuntimeError("boom")

    app.register_task("boom", boom)
    result = app.send_signature(app.build_signature("boom", [],
                                                    stop_task_deletion_on_error=True))
    start_worker(app, concurrency=1)
    with pytest.raises(Exception, match="boom"):
        result.get(timeout=10)
    wait_for(lambda: len(runs) >= 2, timeout=5, what="the kept message run again")
    return runs


def test_stop_task_deletion_on_error_through_the_worker(
        make_app: Callable[..., Machinery], start_worker: Callable[..., Worker],
        make_queue: Callable[..., str]) -> None:
    _run_failing_task_with_stop_task_deletion(make_app, start_worker, make_queue)


def test_stop_task_deletion_on_error_with_the_worker_mark(
        make_app: Callable[..., Machinery], start_worker: Callable[..., Worker],
        make_queue: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The same with the proposed one-line worker change applied (monkeypatched here): the
    failed message is kept, comes back after the visibility timeout and fails again, as on Go
    (a redrive policy would move it to a DLQ)."""
    real_fail = Worker._fail

    def marking_fail(self: Worker, sig: Signature, *args: Any, **kwargs: Any) -> None:
        delivery = kwargs.get("delivery")
        if delivery is not None:
            delivery.extra["failed"] = True
        real_fail(self, sig, *args, **kwargs)

    monkeypatch.setattr(Worker, "_fail", marking_fail)
    runs = _run_failing_task_with_stop_task_deletion(make_app, start_worker, make_queue)
    assert len(runs) >= 2


def test_expired_receipt_handle_on_delete_is_logged_not_raised(
        app: Machinery, queue: str, caplog: pytest.LogCaptureFixture) -> None:
    broker = app.broker
    assert isinstance(broker, SQSBroker)
    d = Delivery(b"{}", queue, "bogus", {"receipt_handle": "bogus"})
    with caplog.at_level(logging.WARNING, logger="machinery_compat.brokers.sqs"):
        broker.ack(d)
    assert "received again (at-least-once)" in caplog.text


# -- errors -----------------------------------------------------------------------------


def test_missing_queue(app: Machinery, prefix: str) -> None:
    broker = app.broker
    with pytest.raises(PublishError, match=r"no_such_queue.*does not exist"):
        broker.publish(add_sig(routing_key="no_such_queue"))
    with pytest.raises(BrokerConnectionError, match=r"no_such_queue.*does not exist"):
        broker.fetch(["no_such_queue"], 1, 0)


def test_unreachable_endpoint_is_a_connection_error(queue: str) -> None:
    import boto3
    from botocore.config import Config as BotoConfig

    from tests.services import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    client = boto3.session.Session().client(  # one attempt: the test need not wait for retries
        "sqs", endpoint_url=endpoint, region_name="us-east-1",
        config=BotoConfig(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=1))
    broker = SQSBroker(f"{endpoint}/{ACCOUNT}", client=client)
    with pytest.raises(BrokerConnectionError):
        broker.fetch([queue], 1, 0)
    with pytest.raises(PublishError):
        broker.publish(add_sig(routing_key=queue))


def test_inspection_says_what_sqs_cannot_do(app: Machinery, queue: str) -> None:
    with pytest.raises(NotImplementedError, match="queue_depth"):
        app.broker.pending_tasks()
    with pytest.raises(NotImplementedError, match="queue_depth"):
        app.broker.delayed_tasks()


def test_client_from_config_and_missing_boto3(monkeypatch: pytest.MonkeyPatch) -> None:
    client = object()
    assert SQSBroker(AWS_PREFIX, sqs=SQSConfig(client=client)).client is client
    import builtins

    real_import = builtins.__import__

    def no_boto3(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "boto3" or name.startswith("boto3."):
            raise ImportError("No module named 'boto3'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_boto3)
    with pytest.raises(ConfigError, match=r"pip install machinery-compat\[aws\]"):
        SQSBroker(AWS_PREFIX)


def test_region_from_the_url_then_the_chain(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Any) -> None:
    """sqs.region, else the region an AWS queue URL names (even when the environment names
    another), else boto3's chain; none at all is a clear ConfigError."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    broker = SQSBroker("https://sqs.eu-west-3.amazonaws.com/123456789012")
    assert broker.client.meta.region_name == "eu-west-3"
    broker = SQSBroker("https://sqs.eu-west-3.amazonaws.com/1", sqs=SQSConfig(region="ap-south-1"))
    assert broker.client.meta.region_name == "ap-south-1"
    assert SQSBroker("http://127.0.0.1:1/123").client.meta.region_name == "us-east-1"
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="AWS_REGION"):
        _ = SQSBroker("http://127.0.0.1:1/123").client


def test_forked_child_makes_its_own_client(app: Machinery, queue: str, sqs: Any) -> None:
    broker = app.broker
    assert isinstance(broker, SQSBroker)
    parent_client = broker.client
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            if broker.client is not parent_client:
                broker.publish(add_sig(name="from_child"))
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert broker.client is parent_client
    (msg,) = receive_all(sqs, broker.queue_url(queue))
    assert '"Name":"from_child"' in msg["Body"]


# -- pure helpers -----------------------------------------------------------------------


def test_url_helpers() -> None:
    from machinery_compat.brokers.sqs import endpoint_from_url, region_from_url

    assert region_from_url(AWS_PREFIX) == "us-east-1"
    assert region_from_url("https://sqs.cn-north-1.amazonaws.com.cn/1") == "cn-north-1"
    assert region_from_url("https://eu-west-1.queue.amazonaws.com/1") == "eu-west-1"
    assert region_from_url("http://localhost:4566/000000000000") is None
    assert endpoint_from_url(AWS_PREFIX) is None
    assert endpoint_from_url("http://localhost:4566/000000000000") == "http://localhost:4566"
    assert endpoint_from_url("https://elasticmq.internal/queue") == "https://elasticmq.internal"


def test_dead_letter_names_and_dedup_ids() -> None:
    assert dead_letter_queue("machinery_tasks") == "machinery_tasks-dead"
    assert dead_letter_queue("jobs.fifo") == "jobs-dead.fifo"
    first = add_sig(retry_count=2)
    retry = first.copy(retry_count=1, eta=GoTime.now().add_seconds(1))
    assert deduplication_id(first.to_json()) != deduplication_id(retry.to_json())
    assert deduplication_id(first.to_json()) == deduplication_id(first.to_json())
    assert len(deduplication_id(b"x")) == 64  # SQS allows 128


def test_batches_respect_sqs_size_limit() -> None:
    from machinery_compat.brokers.sqs import _chunks

    big = "x" * 100_000
    entries = [(Signature(), {"MessageBody": big}) for _ in range(5)]
    assert [len(c) for c in _chunks(entries)] == [2, 2, 1]
    small = [(Signature(), {"MessageBody": "x"}) for _ in range(25)]
    assert [len(c) for c in _chunks(small)] == [10, 10, 5]
