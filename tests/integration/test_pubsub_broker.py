"""The Pub/Sub broker against Google's Pub/Sub fake (pstest, ``pubsub_emulator`` fixture), with
Redis results: Go's bytes and topics, ETAs held by the consumer without a worker thread,
ack-deadline extension, settling (ack after the task, StopTaskDeletionOnError, hand-backs,
dead letters) and errors.  Each test has its own project (``pubsub_project``)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from machinery_compat import Machinery
from machinery_compat.brokers import create_broker
from machinery_compat.brokers.base import Delivery
from machinery_compat.brokers.pubsub import (
    LEASE_SECONDS,
    PubSubBroker,
    PubSubConsumer,
    dead_letter_topic,
    parse_url,
)
from machinery_compat.config import Config, GCPPubSubConfig
from machinery_compat.exceptions import BrokerConnectionError, ConfigError, PublishError
from machinery_compat.protocol import Arg, GoTime, Signature
from machinery_compat.worker import Worker
from tests.helpers import GOLDEN_BODY, wait_for
from tests.services.pstest_svc import PubSubEmulator

QUEUE = "machinery_tasks"
SUB = "workers"


class Recorder:
    """A subscriber client that records the calls made through it (then makes them)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not callable(target):
            return target

        def call(**kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            return target(**kwargs)

        return call

    def of(self, name: str) -> list[dict[str, Any]]:
        return [kw for n, kw in self.calls if n == name]


@pytest.fixture
def ps(pubsub_emulator: PubSubEmulator, pubsub_project: str) -> Iterator[PubSubEmulator]:
    """The emulator with this test's topic ``machinery_tasks`` and subscription ``workers``."""
    pubsub_emulator.create_topic(pubsub_project, QUEUE)
    pubsub_emulator.create_subscription(pubsub_project, SUB, QUEUE)
    yield pubsub_emulator


@pytest.fixture
def url(ps: PubSubEmulator, pubsub_project: str) -> str:
    return f"gcppubsub://{pubsub_project}/{SUB}"


@pytest.fixture
def make_app(url: str, redis_url: str) -> Iterator[Callable[..., Machinery]]:
    apps: list[Machinery] = []

    def make(**kwargs: Any) -> Machinery:
        a = Machinery(broker=kwargs.pop("broker", url), result_backend=redis_url,
                      default_queue=QUEUE, **kwargs)
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


def add_sig(**changes: Any) -> Signature:
    return Signature(uuid=f"task_{uuid.uuid4()}", name="add",
                     args=[Arg("int64", 1), Arg("int64", 1)], headers={}).copy(**changes)


def broker_of(app: Machinery) -> PubSubBroker:
    broker = app.broker
    assert isinstance(broker, PubSubBroker)
    return broker


# -- URL and producing ------------------------------------------------------------------


def test_url_and_factory(url: str, pubsub_project: str) -> None:
    assert parse_url("gcppubsub://proj/sub") == ("proj", "sub")
    for bad in ("gcppubsub://proj", "gcppubsub://proj/", "gcppubsub:///sub", "gcppubsub://p/a/b"):
        with pytest.raises(ConfigError, match="gcppubsub://<project>/<subscription>"):
            parse_url(bad)
    broker = create_broker(Config(broker=url, default_queue=QUEUE))
    assert isinstance(broker, PubSubBroker)
    assert broker.subscription_path(QUEUE) == f"projects/{pubsub_project}/subscriptions/{SUB}"
    assert broker.subscription_path("other") == f"projects/{pubsub_project}/subscriptions/other"
    assert broker.topic_path("x") == f"projects/{pubsub_project}/topics/x"
    broker.close()


def test_go_bytes_on_the_wire(app: Machinery, ps: PubSubEmulator, pubsub_project: str) -> None:
    """§12.4: topic = routing key, defaulted BEFORE encoding (unlike SQS), data = the JSON,
    no attributes, no ordering key."""
    sig = Signature.from_json(GOLDEN_BODY).copy(routing_key="")
    broker_of(app).publish(sig)
    (got,) = ps.pull(pubsub_project, SUB)
    assert got.message.data == GOLDEN_BODY
    assert dict(got.message.attributes) == {}
    assert got.message.ordering_key == ""


def test_eta_is_published_at_once_with_the_eta_in_the_body(app: Machinery, ps: PubSubEmulator,
                                                           pubsub_project: str) -> None:
    """Go blocks the publishing call for the delay; this broker does not."""
    eta = GoTime.now().add_seconds(30)
    started = time.monotonic()
    broker_of(app).publish(add_sig(eta=eta))
    assert time.monotonic() - started < 5
    (got,) = ps.pull(pubsub_project, SUB)
    assert Signature.from_json(got.message.data).eta == eta


def test_publish_many_and_missing_topic(app: Machinery, ps: PubSubEmulator,
                                        pubsub_project: str) -> None:
    sigs = [add_sig() for _ in range(5)]
    broker_of(app).publish_many(sigs)
    got = wait_for(lambda: ps.pull(pubsub_project, SUB), what="the batch")
    assert sorted(Signature.from_json(m.message.data).uuid for m in got) == \
        sorted(s.uuid for s in sigs)
    with pytest.raises(PublishError, match=f"topic does not exist: projects/{pubsub_project}"
                                           "/topics/nowhere"):
        broker_of(app).publish(add_sig(routing_key="nowhere"))


# -- consuming ---------------------------------------------------------------------------


def test_worker_runs_tasks_and_acknowledges(app: Machinery, start_worker: Callable[..., Worker],
                                            ps: PubSubEmulator, pubsub_project: str) -> None:
    app.register_task("add", lambda a, b: a + b)
    results = [app.send_task("add", [i, 1]) for i in range(10)]
    worker = start_worker(app)
    assert [r.get(timeout=20) for r in results] == [i + 1 for i in range(10)]
    wait_for(lambda: worker.outcomes["run"] == 10, what="10 runs")
    # acknowledged: nothing comes back, even after the fake's ack deadline
    worker.stop(timeout=10)
    assert ps.pull(pubsub_project, SUB) == []


def test_delivery_carries_ack_id_and_attributes(app: Machinery, ps: PubSubEmulator,
                                                pubsub_project: str) -> None:
    ps.publisher().publish(f"projects/{pubsub_project}/topics/{QUEUE}", GOLDEN_BODY,
                           origin="go").result(10)
    consumer = broker_of(app).consumer([QUEUE])
    (d,) = wait_for(lambda: consumer.fetch([QUEUE], 5, 1.0), what="the message")
    assert d.body == GOLDEN_BODY and d.queue == QUEUE
    assert d.tag == d.extra["ack_id"]
    assert d.extra["attributes"] == {"origin": "go"}
    assert d.extra["subscription"] == f"projects/{pubsub_project}/subscriptions/{SUB}"
    assert isinstance(consumer, PubSubConsumer) and consumer.held() == [d]
    app.broker.ack(d)
    assert consumer.held() == []
    consumer.stop_consuming()


def test_delayed_task_holds_no_worker_thread(app: Machinery, start_worker: Callable[..., Worker]
                                             ) -> None:
    """A task received before its ETA waits in the consumer, not in a worker thread: on a
    worker with ONE thread, a task sent after it runs first, and it runs once due, not
    before."""
    ran: list[tuple[str, float]] = []
    app.register_task("mark", lambda name: ran.append((name, time.time())) or name)
    eta = time.time() + 3.0
    delayed = app.send_task("mark", ["delayed"], eta=eta)
    worker = start_worker(app, concurrency=1)
    time.sleep(1.0)  # the delayed one was pulled meanwhile
    now = app.send_task("mark", ["now"])
    assert now.get(timeout=10) == "now"
    assert time.time() < eta
    assert delayed.get(timeout=15) == "delayed"
    assert [n for n, _ in ran] == ["now", "delayed"]
    assert ran[1][1] >= eta
    # the count follows the stored SUCCESS that get() saw (the ack comes after it)
    wait_for(lambda: worker.outcomes["run"] == 2, what="both counted as run")


def test_stop_gives_back_tasks_held_for_their_eta(app: Machinery, ps: PubSubEmulator,
                                                  pubsub_project: str) -> None:
    broker_of(app).publish(add_sig(eta=GoTime.now().add_seconds(60)))
    consumer = broker_of(app).consumer([QUEUE])
    assert isinstance(consumer, PubSubConsumer)
    assert consumer.fetch([QUEUE], 5, 1.5) == []
    assert len(consumer.held()) == 1  # pulled, held for its ETA, not handed out
    consumer.stop_consuming()
    (got,) = wait_for(lambda: ps.pull(pubsub_project, SUB), what="the message given back")
    assert Signature.from_json(got.message.data).name == "add"


def test_ack_deadline_is_extended_while_held(app: Machinery, caplog: pytest.LogCaptureFixture
                                             ) -> None:
    """Every third of LEASE_SECONDS (first within 4 s), for max_extension seconds of running;
    a task held for its ETA is extended without that limit."""
    broker = broker_of(app)
    recorder = Recorder(broker.subscriber)
    broker._clients = (broker._both()[0], recorder)
    broker.max_extension = 100.0
    broker.publish(add_sig())
    broker.publish(add_sig(eta=GoTime.now().add_seconds(3600)))
    consumer = broker.consumer([QUEUE])
    assert isinstance(consumer, PubSubConsumer)
    consumer._held._thread = threading.current_thread()  # no extension thread: beats driven here
    (d,) = wait_for(lambda: consumer.fetch([QUEUE], 5, 1.0), what="the due task")
    wait_for(lambda: len(consumer.held()) == 2, what="the early task held too")
    t0 = d.extra["received"]
    consumer.beat(now=t0 + 1)
    assert recorder.of("modify_ack_deadline") == []
    consumer.beat(now=t0 + 4.5)
    (call,) = recorder.of("modify_ack_deadline")
    assert call["ack_deadline_seconds"] == LEASE_SECONDS and len(call["ack_ids"]) == 2
    consumer.beat(now=t0 + 4.5 + LEASE_SECONDS / 3 - 1)
    assert len(recorder.of("modify_ack_deadline")) == 1
    consumer.beat(now=t0 + 4.5 + LEASE_SECONDS / 3 + 0.1)
    assert len(recorder.of("modify_ack_deadline")) == 2
    with caplog.at_level(logging.WARNING, logger="machinery_compat.brokers.pubsub"):
        consumer.beat(now=t0 + 101)
    assert "no longer extended" in caplog.text
    assert [h.extra["ack_id"] for h in consumer.held()] != [d.extra["ack_id"]]
    assert len(consumer.held()) == 1  # the early one is still held
    consumer.stop_consuming()


def test_max_extension_from_the_config(url: str) -> None:
    broker = PubSubBroker(url, pubsub=GCPPubSubConfig(max_extension=42))
    assert broker.max_extension == 42
    assert PubSubBroker(url).max_extension == 3600


def test_unregistered_task_is_handed_to_a_worker_that_has_it(
        make_app: Callable[..., Machinery], start_worker: Callable[..., Worker]) -> None:
    lacking, having = make_app(), make_app()
    lacking.register_task("other", lambda: None)
    having.register_task("add", lambda a, b: a + b)
    w1 = start_worker(lacking)
    result = lacking.send_task("add", [2, 3])
    wait_for(lambda: w1.outcomes["handed_back"] >= 1, what="a hand-back")
    start_worker(having)
    assert result.get(timeout=20) == 5


def test_requeue_later_sets_the_ack_deadline(app: Machinery, ps: PubSubEmulator,
                                             pubsub_project: str) -> None:
    broker = broker_of(app)
    recorder = Recorder(broker.subscriber)
    broker._clients = (broker._both()[0], recorder)
    broker.publish(add_sig())
    consumer = broker.consumer([QUEUE])
    (d,) = wait_for(lambda: consumer.fetch([QUEUE], 5, 1.0), what="the message")
    assert broker.requeue_later([d], 1.2) is True
    assert recorder.of("modify_ack_deadline")[-1]["ack_deadline_seconds"] == 2
    assert broker.requeue_later([Delivery(b"x", QUEUE)], 1) is False
    assert ps.pull(pubsub_project, SUB) == []  # not before its deadline
    wait_for(lambda: ps.pull(pubsub_project, SUB), timeout=10, what="the message back")
    consumer.stop_consuming()


def test_undecodable_message_goes_to_the_dead_letter_topic(
        app: Machinery, start_worker: Callable[..., Worker], ps: PubSubEmulator,
        pubsub_project: str, caplog: pytest.LogCaptureFixture) -> None:
    app.register_task("add", lambda a, b: a + b)
    topic = f"projects/{pubsub_project}/topics/{QUEUE}"
    ps.publisher().publish(topic, b"{not json").result(10)
    ps.publisher().publish(topic, b'{"Name":""}').result(10)
    with caplog.at_level(logging.ERROR):
        worker = start_worker(app)
        wait_for(lambda: worker.outcomes["dead_lettered"] == 2, what="two dead letters")
    assert dead_letter_topic(QUEUE) == "machinery_tasks.dead"
    assert "moved to machinery_tasks.dead" in caplog.text
    dead: list[Any] = []

    from google.api_core import exceptions as gx

    def two_dead_letters() -> bool:
        # (the worker counts a dead letter before the broker made the topic and subscription)
        with contextlib.suppress(gx.NotFound):
            dead.extend(ps.pull(pubsub_project, "machinery_tasks.dead"))
        return len(dead) >= 2

    wait_for(two_dead_letters, what=f"two dead letters (got {dead})")
    assert sorted(m.message.data for m in dead) == [b'{"Name":""}', b"{not json"]
    for m in dead:
        assert m.message.attributes["reason"]
        assert m.message.attributes["subscription"].endswith(f"/subscriptions/{SUB}")
    worker.stop(timeout=10)
    assert ps.pull(pubsub_project, SUB) == []  # acknowledged, not redelivered


def test_stop_task_deletion_on_error_leaves_the_message(app: Machinery) -> None:
    """Not acknowledged and no longer extended: it comes back after its ack deadline."""
    broker = broker_of(app)
    recorder = Recorder(broker.subscriber)
    broker._clients = (broker._both()[0], recorder)
    broker.publish(add_sig(stop_task_deletion_on_error=True))
    broker.publish(add_sig())
    consumer = broker.consumer([QUEUE])
    assert isinstance(consumer, PubSubConsumer)
    got = wait_for(lambda: consumer.fetch([QUEUE], 5, 1.0), what="the messages")
    got += consumer.fetch([QUEUE], 5, 0.6)
    assert len(got) == 2
    for d in got:
        d.extra["failed"] = True  # both failed; only the first one asked to stay
        broker.ack(d)
    assert consumer.held() == []
    acked = [i for call in recorder.of("acknowledge") for i in call["ack_ids"]]
    assert acked == [d.extra["ack_id"] for d in got
                     if not Signature.from_json(d.body).stop_task_deletion_on_error]
    consumer.stop_consuming()


def test_missing_subscription_is_a_connection_error(app: Machinery, pubsub_project: str
                                                    ) -> None:
    consumer = broker_of(app).consumer(["elsewhere"])
    with pytest.raises(BrokerConnectionError,
                       match=f"projects/{pubsub_project}/subscriptions/elsewhere.*does not exist"):
        consumer.fetch(["elsewhere"], 1, 0.1)
    consumer.stop_consuming()


def test_inspection_says_what_pubsub_cannot_do(app: Machinery) -> None:
    with pytest.raises(NotImplementedError, match="without pulling"):
        app.broker.pending_tasks()
    with pytest.raises(NotImplementedError):
        app.broker.delayed_tasks()


def test_missing_library_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "google.cloud", None)
    with pytest.raises(ConfigError, match=r"pip install machinery-compat\[pubsub\]"):
        PubSubBroker("gcppubsub://p/s")


# -- the emulator fixture ----------------------------------------------------------------


def test_emulator_fixture_marks_and_isolates(request: pytest.FixtureRequest,
                                             pubsub_emulator: PubSubEmulator,
                                             pubsub_project: str) -> None:
    import os

    assert request.node.get_closest_marker("pubsub") is not None
    assert os.environ["PUBSUB_EMULATOR_HOST"] == pubsub_emulator.emulator_host
    assert pubsub_project.startswith("mc-") and pubsub_emulator.depth(pubsub_project, SUB) is None


def test_private_emulator_restarts_on_the_same_port_with_no_state(
        pubsub_emulator: PubSubEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    from google.api_core import exceptions as gx

    with PubSubEmulator() as private:
        port = private.port
        assert port != pubsub_emulator.port
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", private.emulator_host)
        private.create_topic("p", "t")
        private.stop()
        assert not private.running
        private.start()
        assert private.port == port and private.running
        with pytest.raises(gx.NotFound):
            private.publisher().get_topic(topic="projects/p/topics/t", timeout=10)
