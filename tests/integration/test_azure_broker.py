"""The Azure Storage Queues broker (the sublime-security fork's) on Azurite, with Redis results:
the fork's bytes on the wire (golden captures), selection by URL, consume + delete, the receive
fields, the DLQ past MaxReceives and for undecodable text, delays (beyond the 7-minute cap too),
visibility extension and a consumer that dies holding a message.  Each test has its own queue."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from machinery_compat import Machinery
from machinery_compat.brokers import create_broker
from machinery_compat.brokers.azure import AzureBroker, AzureConsumer
from machinery_compat.config import AzureConfig, Config
from machinery_compat.exceptions import ConfigError
from machinery_compat.protocol import Signature
from machinery_compat.worker import Worker
from tests.helpers import wait_for
from tests.services._base import die_with_parent_prefix
from tests.services.azurite_svc import Azurite

GOLDEN = {e["name"]: e["json"] for e in json.loads(
    (Path(__file__).resolve().parents[1] / "data" / "golden" / "sublime.json").read_text())}


@pytest.fixture
def queue(azurite: Azurite, azure_queue: str) -> str:
    azurite.create_queue(azure_queue)
    return azure_queue


@pytest.fixture
def make_app(azurite: Azurite, queue: str, redis_url: str) -> Iterator[Callable[..., Machinery]]:
    apps: list[Machinery] = []

    def make(azure: AzureConfig | None = None, **kwargs: Any) -> Machinery:
        a = Machinery(broker=azurite.broker_url, result_backend=redis_url, default_queue=queue,
                      **kwargs)
        a.config.azure = azure or AzureConfig(visibility_timeout=5)
        apps.append(a)
        return a

    yield make
    for a in apps:
        a.close()


@pytest.fixture
def start_worker(start_any_worker: Callable[..., Worker]) -> Callable[..., Worker]:
    return start_any_worker


def broker_of(app: Machinery) -> AzureBroker:
    assert isinstance(app.broker, AzureBroker)
    return app.broker


def consumer_of(app: Machinery) -> AzureConsumer:
    c = broker_of(app).consumer([broker_of(app).default_queue])
    assert isinstance(c, AzureConsumer)
    return c


# -- selection and bytes ----------------------------------------------------------------------


def test_selected_as_the_fork_selects_it(azurite: Azurite, queue: str) -> None:
    cfg = Config(broker="https://acct.queue.core.windows.net/", default_queue=queue,
                 azure=AzureConfig(connection_string=azurite.connection_string))
    broker = create_broker(cfg)
    assert isinstance(broker, AzureBroker)
    assert broker.service.account_name == "devstoreaccount1"
    assert isinstance(create_broker(Config(broker=azurite.broker_url)), AzureBroker)
    with pytest.raises(ConfigError, match="connection string"):
        create_broker(Config(broker="azure://")).service  # noqa: B018
    with pytest.raises(ConfigError, match="needs a credential"):
        create_broker(Config(broker="https://acct.queue.core.windows.net/")).service  # noqa: B018


def test_the_forks_config_keys(tmp_path: Path) -> None:
    env = {"BROKER": "https://acct.queue.core.windows.net/", "DEFAULT_QUEUE": "jobs",
           "AZURE_TTL": "168h", "AZURE_VISIBILITYTIMEOUT": "45s", "AZURE_MAXRECEIVES": "4",
           "AZURE_DLQTTL": "24h", "AZURE_DLQ_QUEUE": "jobs-bad"}
    cfg = Config.from_env(env)
    assert cfg.azure == AzureConfig(ttl=604800, visibility_timeout=45, max_receives=4,
                                    dlq_ttl=86400, dlq_queue="jobs-bad")
    broker = create_broker(cfg)
    assert isinstance(broker, AzureBroker)
    assert (broker.visibility, broker.max_receives, broker.dlq_ttl, broker.dlq_name,
            broker.max_delay) == (45, 4, 86400, "jobs-bad", 420)
    yml = tmp_path / "c.yml"
    # (the Go field names lowercased, no underscores: visibility_timeout is ignored, as by Go)
    yml.write_text("azure:\n  ttl: 60000000000\n  visibilitytimeout: 2m\n  maxreceives: 0\n"
                   "  visibility_timeout: 3s\n")
    got = Config.from_yaml(str(yml)).azure
    assert got is not None and (got.ttl, got.visibility_timeout) == (60, 120)
    defaults = AzureBroker("azure://", "jobs", azure=got)
    assert (defaults.max_receives, defaults.dlq_ttl, defaults.dlq_name) == (10, 2592000,
                                                                           "jobs-dead")


def test_published_text_is_the_forks(make_app: Callable[..., Machinery], azurite: Azurite,
                                     queue: str) -> None:
    broker = broker_of(make_app())
    # the fork's SendTask body for Delay 5 s and no routing key (golden capture of the fork:
    # encoded before the routing key is defaulted, the same for its SQS and Azure brokers)
    golden = GOLDEN["sublime_sqs_add_delay_5s"]
    sig = Signature.from_json(golden.encode())
    started = time.monotonic()
    broker.publish(sig)
    assert sig.routing_key == queue
    assert azurite.peek_texts(queue) == []  # hidden for the delay (visibility timeout 5 s)
    assert azurite.depth(queue) == 1
    wait_for(lambda: azurite.peek_texts(queue), timeout=10, what="the delayed message")
    assert time.monotonic() - started >= 4.0
    assert azurite.peek_texts(queue) == [golden]
    # without a delay: at once, verbatim (the fork's RPUSH body, routed to this queue)
    plain = GOLDEN["sublime_add_1_1"].replace('"RoutingKey":"machinery_tasks"',
                                              f'"RoutingKey":"{queue}"')
    broker.publish(Signature.from_json(plain.encode()))
    assert azurite.peek_texts(queue) == [golden, plain]


def test_publish_caps_the_delay_and_sends_the_ttl(make_app: Callable[..., Machinery]) -> None:
    broker = broker_of(make_app(AzureConfig(ttl=3600)))
    sig = Signature.from_json(GOLDEN["sublime_sqs_add_delay_5s"].encode())
    sig.delay = 3600 * 10**9
    _, params = broker.message_params(sig)
    assert params["visibility_timeout"] == 420 and params["time_to_live"] == 3600
    assert json.loads(params["content"])["Delay"] == 3600 * 10**9


# -- consuming ----------------------------------------------------------------------------------


def test_worker_runs_tasks_and_deletes_them(make_app: Callable[..., Machinery], azurite: Azurite,
                                            queue: str, start_worker: Callable[..., Worker]) -> None:
    app = make_app()
    app.register_task("add", lambda a, b: a + b)
    results = [app.send_task("add", [i, 1]) for i in range(6)]
    worker = start_worker(app)
    assert [r.get(timeout=20) for r in results] == [i + 1 for i in range(6)]
    wait_for(lambda: worker.outcomes["run"] == 6, what="6 runs")
    wait_for(lambda: azurite.depth(queue) == 0, what="every message deleted")


def test_fork_message_gets_the_receive_fields(make_app: Callable[..., Machinery],
                                              azurite: Azurite, queue: str) -> None:
    app = make_app()
    text = GOLDEN["sublime_add_1_1"]
    azurite.queue(queue).send_message(text)
    consumer = consumer_of(app)
    try:
        [d] = wait_for(lambda: consumer.fetch([queue], 4, 0.5), what="the message")
        sig = Signature.from_json(d.body)
        assert sig.attempt_count == 0
        assert sig.azure_message_content == text
        assert sig.azure_pop_receipt and sig.azure_message_id == ""
        assert sig.ingestion_time is not None and sig.received_at is not None
        assert abs(sig.received_at.timestamp() - time.time()) < 10
        assert sig.routing_key == queue and not sig.no_backend
        consumer.requeue([d])  # visible again at once: received a second time
        [d2] = wait_for(lambda: consumer.fetch([queue], 4, 0.5), what="the message again")
        assert Signature.from_json(d2.body).attempt_count == 1
        consumer.ack(d2)
        assert azurite.depth(queue) == 0
        # a message without a UUID gets NoBackend (the fork: no state for it)
        azurite.queue(queue).send_message(text.replace(
            '"UUID":"task_7e0b7c39-3d0c-4b5e-9e1a-2f7d5c1b8a90"', '"UUID":""'))
        [d3] = wait_for(lambda: consumer.fetch([queue], 4, 0.5), what="the UUID-less message")
        assert Signature.from_json(d3.body).no_backend
        consumer.drop(d3)
        assert azurite.depth(queue) == 0
    finally:
        consumer.stop_consuming()


def test_past_max_receives_goes_to_the_dlq(make_app: Callable[..., Machinery],
                                           azurite: Azurite, queue: str) -> None:
    app = make_app(AzureConfig(visibility_timeout=1, max_receives=1))
    text = GOLDEN["sublime_add_1_1"]
    azurite.queue(queue).send_message(text)
    consumer = consumer_of(app)
    try:
        [d] = wait_for(lambda: consumer.fetch([queue], 1, 0.5), what="the message")
        consumer.holdings.stop()  # not extended, not settled: back after 1 s, 2nd receive
        consumer.holdings.forget(d)
        later = consumer_of(app)
        got: list[Any] = []
        # the 2nd receive (count 2 > 1) moves it to the DLQ instead of handing it out
        wait_for(lambda: got.extend(later.fetch([queue], 1, 0.3)) or azurite.depth(queue) == 0,
                 timeout=10, what="the message moved")
        assert got == []
        later.stop_consuming()
    finally:
        consumer.stop_consuming()
    assert azurite.peek_texts(f"{queue}-dead") == [text]
    assert azurite.depth(queue) == 0


def test_undecodable_text_goes_to_the_dlq_with_a_reason(
        make_app: Callable[..., Machinery], azurite: Azurite, queue: str,
        start_worker: Callable[..., Worker], caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(AzureConfig(visibility_timeout=5, dlq_queue=f"{queue}-bad"))
    app.register_task("add", lambda a, b: a + b)
    azurite.queue(queue).send_message("{not json")
    with caplog.at_level("WARNING"):
        worker = start_worker(app)
        wait_for(lambda: worker.outcomes["dead_lettered"] == 1, what="one dead letter")
        # (the worker counts it before the broker's calls)
        wait_for(lambda: azurite.depth(queue) == 0, what="deleted from its queue")
    assert azurite.peek_texts(f"{queue}-bad") == ["{not json"]
    assert f"moved to the dead-letter queue {queue}-bad: invalid JSON" in caplog.text


def test_delays_beyond_the_cap_are_held_until_due(make_app: Callable[..., Machinery],
                                                  start_worker: Callable[..., Worker]) -> None:
    # cap 1 s (the fork's is 7 minutes): a 4 s delay needs the consumer to hide it again
    ran: dict[str, float] = {}
    for dialect in ("sublime", "upstream"):
        app = make_app(AzureConfig(visibility_timeout=5, max_delay_seconds=1),
                       wire_dialect=dialect)
        app.register_task("add", lambda a, b, d=dialect: ran.setdefault(d, time.time()) and a + b)
        sent = time.time()
        result = app.send_task("add", [1, 1], countdown=4)
        worker = start_worker(app)
        assert result.get(timeout=20) == 2
        worker.stop(timeout=10)
        # never before due (the fork layout counts from Azure's whole-second insertion time)
        assert ran[dialect] - sent >= (3.0 if dialect == "sublime" else 4.0), ran


def test_visibility_is_extended_while_a_task_runs(make_app: Callable[..., Machinery],
                                                  azurite: Azurite, queue: str,
                                                  start_worker: Callable[..., Worker]) -> None:
    app = make_app(AzureConfig(visibility_timeout=2))
    runs: list[str] = []

    def slow(a: int, b: int) -> int:
        runs.append("x")
        time.sleep(4)
        return a + b

    app.register_task("add", slow)
    result = app.send_task("add", [2, 3])
    start_worker(app, concurrency=2)
    start_worker(app, concurrency=2)
    assert result.get(timeout=20) == 5
    wait_for(lambda: azurite.depth(queue) == 0, what="the message deleted")
    assert runs == ["x"]  # 4 s with a 2 s visibility timeout: never seen by the other worker


_CRASHING_WORKER = """
import os, sys, time
from machinery_compat import Machinery
from machinery_compat.config import AzureConfig
app = Machinery(broker=os.environ["MC_BROKER"], result_backend=os.environ["MC_BACKEND"],
                default_queue=os.environ["MC_QUEUE"], wire_dialect="sublime")
app.config.azure = AzureConfig(visibility_timeout=2)
def add(a, b):
    open(os.environ["MC_STARTED"], "w").close()
    time.sleep(120)
app.register_task("add", add)
app.worker(concurrency=1, poll_timeout=0.2).run()
"""


def test_worker_killed_mid_task_its_message_comes_back_and_runs(
        make_app: Callable[..., Machinery], azurite: Azurite, queue: str, redis_url: str,
        start_worker: Callable[..., Worker], tmp_path: Path) -> None:
    app = make_app(AzureConfig(visibility_timeout=2), wire_dialect="sublime")
    attempts: list[int] = []

    @app.task(name="add", bind=True)
    def add(self: Any, a: int, b: int) -> int:
        attempts.append(self.request.signature.attempt_count)
        return a + b

    result = app.send_task("add", [4, 4])
    started = tmp_path / "started"
    env = {**os.environ, "MC_BROKER": azurite.broker_url, "MC_BACKEND": redis_url,
           "MC_QUEUE": queue, "MC_STARTED": str(started)}
    crashing = subprocess.Popen([*die_with_parent_prefix(), sys.executable, "-c",
                                 _CRASHING_WORKER], env=env,
                                cwd=Path(__file__).resolve().parents[2],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        wait_for(started.exists, timeout=30, what="the task running in the other process")
        time.sleep(3)  # its visibility was extended past the 2 s timeout meanwhile
        assert azurite.peek_texts(queue) == []
        crashing.kill()  # SIGKILL mid-task: nothing settled, no more extensions
        crashing.wait(10)
    finally:
        if crashing.poll() is None:
            crashing.kill()
            crashing.wait(10)
    t0 = time.monotonic()
    worker = start_worker(app)
    assert result.get(timeout=20) == 8
    assert time.monotonic() - t0 >= 0.5  # once its visibility timeout ran out
    wait_for(lambda: worker.outcomes["run"] == 1, what="one run")
    wait_for(lambda: azurite.depth(queue) == 0, what="deleted by the second worker")
    assert attempts == [1]  # the fork's AttemptCount: dequeue count - 1


def test_private_azurite_has_no_state_after_a_restart() -> None:
    with Azurite() as az:
        name = f"mc-{uuid.uuid4().hex[:8]}"
        az.create_queue(name)
        port = az.port
        az.restart()
        assert az.port == port
        assert [q.name for q in az.service().list_queues()] == []
