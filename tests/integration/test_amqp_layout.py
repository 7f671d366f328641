"""What Go Machinery expects to find in RabbitMQ, checked on a real node: exchanges, queues,
bindings and their flags and argument types (``rabbitmqctl list_*``), message properties and
bodies (read back with py-amqp), delay queues, and the AMQP result backend's queues.

Every test gets a fresh vhost (``rabbitmq_vhost_url``), so queue names are Go's defaults.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import amqp
import pytest

from machinery_compat import GoTime, Machinery, PublishError, Signature
from machinery_compat.backends.amqp import AMQPBackend
from machinery_compat.brokers import amqp as amqp_broker_module
from machinery_compat.config import AMQPConfig, Config
from machinery_compat.protocol import TaskState
from tests.helpers import GOLDEN_BODY, UUID, state_bytes, wait_for
from tests.services import RabbitMQServer

#: GOLDEN_BODY as Go's AMQP producer sends it: routing key = the binding key (12.2).
AMQP_GOLDEN_BODY = GOLDEN_BODY.replace(b'"RoutingKey":"machinery_tasks"',
                                       b'"RoutingKey":"machinery_task"')


@pytest.fixture
def vhost(rabbitmq_vhost_url: str) -> str:
    return rabbitmq_vhost_url.rsplit("/", 1)[1]


@pytest.fixture
def make_app(rabbitmq_vhost_url: str) -> Iterator[Callable[..., Machinery]]:
    apps: list[Machinery] = []

    def make(config: Config | None = None, **kwargs: Any) -> Machinery:
        cfg = config or Config()
        cfg.broker = cfg.result_backend = rabbitmq_vhost_url
        a = Machinery(config=cfg, **kwargs)
        apps.append(a)
        return a

    yield make
    for a in apps:
        a.close()


@pytest.fixture
def peek(rabbitmq_server: RabbitMQServer, vhost: str) -> Iterator[Callable[[str], list[Any]]]:
    """``peek(queue)``: the messages ready in a queue (amqp.Message, with properties), left
    in place."""
    conn = rabbitmq_server.connection(vhost)

    def read(queue: str) -> list[Any]:
        ch = conn.channel()
        out = []
        try:
            while (msg := ch.basic_get(queue, no_ack=False)) is not None:
                out.append(msg)
        finally:
            ch.close()  # unacked messages go back, in order
        return out

    yield read
    conn.close()


def _args(row: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    return {name: (kind, value) for name, kind, value in row["arguments"]}


def _queues(server: RabbitMQServer, vhost: str) -> dict[str, dict[str, Any]]:
    cols = ("name", "durable", "auto_delete", "exclusive", "arguments", "messages")
    return {q["name"]: q for q in server.queues(vhost, cols)}


def _bindings(server: RabbitMQServer, vhost: str) -> set[tuple[str, str, str]]:
    out = server.ctl("list_bindings", "-p", vhost, "--formatter", "json", "source_name",
                     "destination_name", "routing_key")
    return {(b["source_name"], b["destination_name"], b["routing_key"]) for b in json.loads(out)
            if b["source_name"]}


def test_default_config_producer_topology_and_message(
    make_app: Callable[..., Machinery], rabbitmq_server: RabbitMQServer, vhost: str,
    peek: Callable[[str], list[Any]],
) -> None:
    app = make_app()
    app.broker.publish(Signature.from_json(GOLDEN_BODY.replace(b'"machinery_tasks"', b'""')))
    exchanges = {e["name"]: e for e in json.loads(rabbitmq_server.ctl(
        "list_exchanges", "-p", vhost, "--formatter", "json", "name", "type", "durable",
        "auto_delete", "internal", "arguments"))}
    assert exchanges["machinery_exchange"] == {
        "name": "machinery_exchange", "type": "direct", "durable": True, "auto_delete": False,
        "internal": False, "arguments": []}
    queues = _queues(rabbitmq_server, vhost)
    assert list(queues) == ["machinery_task"]  # named after the routing key (Go's quirk)
    q = queues["machinery_task"]
    assert (q["durable"], q["auto_delete"], q["exclusive"], q["arguments"]) == (True, False, False, [])
    assert _bindings(rabbitmq_server, vhost) == {("machinery_exchange", "machinery_task", "machinery_task")}
    (msg,) = peek("machinery_task")
    assert bytes(msg.body) == AMQP_GOLDEN_BODY
    assert msg.properties == {"content_type": "application/json", "delivery_mode": 2}
    assert msg.delivery_info["exchange"] == "machinery_exchange"
    assert msg.delivery_info["routing_key"] == "machinery_task"


def test_worker_topology_copies_default_routed_tasks_into_both_queues(
    make_app: Callable[..., Machinery], rabbitmq_server: RabbitMQServer, vhost: str,
    peek: Callable[[str], list[Any]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # an idle consumer is cancelled after IDLE_CANCEL s: keep it while a slow rabbitmqctl lists it
    monkeypatch.setattr(amqp_broker_module, "IDLE_CANCEL", 120.0)
    app = make_app(default_queue="machinery_tasks")
    app.broker.fetch(["machinery_tasks"], 1, 0.05)  # declares, binds and consumes, as Go's worker
    consumers = json.loads(rabbitmq_server.ctl("list_consumers", "-p", vhost, "--formatter",
                                               "json", "queue_name", "ack_required", "prefetch_count"))
    assert [(c["queue_name"], c["ack_required"], c["prefetch_count"]) for c in consumers] == [
        ("machinery_tasks", True, 3)]
    assert _bindings(rabbitmq_server, vhost) == {("machinery_exchange", "machinery_tasks", "machinery_task")}
    app.broker.close()
    app.send_task("add", args=[1])
    wait_for(lambda: len(peek("machinery_tasks")) == 1, what="the worker queue's copy")
    assert len(peek("machinery_task")) == 1  # and the producer queue's copy


def test_priority_headers_and_go_int_arguments_from_yaml(
    make_app: Callable[..., Machinery], rabbitmq_server: RabbitMQServer, vhost: str,
    peek: Callable[[str], list[Any]],
) -> None:
    yaml = ("default_queue: machinery_tasks\namqp:\n  binding_key: machinery_task\n"
            "  exchange: machinery_exchange\n  exchange_type: direct\n"
            "  queue_declare_args:\n    x-max-priority: 10\n")
    app = make_app(Config.from_yaml(io.StringIO(yaml)))
    sig = Signature(uuid="task_p", name="add", priority=5, headers={"trace": "abc", "n": 7})
    app.broker.publish(sig)
    q = _queues(rabbitmq_server, vhost)["machinery_task"]
    assert _args(q) == {"x-max-priority": ("signedint", 10)}  # Go int -> I
    (msg,) = peek("machinery_task")
    assert msg.properties == {"content_type": "application/json", "delivery_mode": 2,
                              "priority": 5, "application_headers": {"trace": "abc", "n": 7}}


def test_eta_goes_through_a_per_delay_queue_then_to_the_routing_key(
    make_app: Callable[..., Machinery], rabbitmq_server: RabbitMQServer, vhost: str,
    peek: Callable[[str], list[Any]],
) -> None:
    app = make_app(default_queue="machinery_tasks")
    app.broker.fetch(["machinery_tasks"], 1, 0.05)  # a worker's queue, bound with machinery_task
    app.broker.close()
    sig = Signature(uuid="task_eta", name="add", priority=4, headers={"h": "v"},
                    eta=GoTime(time.time_ns() + 30_000_000_000))
    app.broker.publish(sig)
    queues = _queues(rabbitmq_server, vhost)
    (name,) = [n for n in queues if n.startswith("delay.")]
    ms = int(name.split(".")[1])
    assert 29_000 < ms <= 30_000
    assert name == f"delay.{ms}.machinery_exchange.machinery_task"
    q = queues[name]
    assert (q["durable"], q["auto_delete"]) == (True, False)
    assert _args(q) == {
        "x-dead-letter-exchange": ("longstr", "machinery_exchange"),
        "x-dead-letter-routing-key": ("longstr", "machinery_task"),
        "x-message-ttl": ("long", ms),  # Go int64 -> l
        "x-expires": ("long", 2 * ms),
    }
    assert ("machinery_exchange", name, name) in _bindings(rabbitmq_server, vhost)
    (msg,) = peek(name)
    # the same properties, without the priority
    assert msg.properties == {"content_type": "application/json", "delivery_mode": 2,
                              "application_headers": {"h": "v"}}
    assert Signature.from_json(bytes(msg.body)).eta == sig.eta  # the JSON keeps the ETA
    # unlike Go's, the producer also declared the queue named after the routing key (as its
    # plain publish does), so the task never dead-letters into nothing
    assert queues["machinery_task"]["arguments"] == []
    # after the TTL RabbitMQ dead-letters it to the queues bound with the routing key
    app.broker.publish(Signature(uuid="task_soon", name="add", eta=GoTime.now().add_seconds(1)))
    (moved,) = wait_for(lambda: peek("machinery_tasks"), timeout=10, what="dead-lettered task")
    assert Signature.from_json(bytes(moved.body)).uuid == "task_soon"
    assert [Signature.from_json(bytes(m.body)).uuid for m in peek("machinery_task")] == ["task_soon"]
    # an ETA closer than MIN_DELAY_MS is due now: a delay queue that short could expire (and
    # drop the task) before the message's TTL moves it
    from machinery_compat.brokers.amqp import MIN_DELAY_MS

    app.broker.publish(Signature(uuid="task_now", name="add",
                                 eta=GoTime(time.time_ns() + MIN_DELAY_MS * 500_000)))
    assert [Signature.from_json(bytes(m.body)).uuid for m in peek("machinery_task")] == [
        "task_soon", "task_now"]


def test_delayed_queue_setting_uses_one_queue_and_per_message_expiration(
    make_app: Callable[..., Machinery], rabbitmq_server: RabbitMQServer, vhost: str,
    peek: Callable[[str], list[Any]],
) -> None:
    app = make_app(Config(amqp=AMQPConfig(delayed_queue="my_delayed", auto_delete=False)))
    app.broker.publish(Signature(uuid="task_d", name="add", eta=GoTime.now().add_seconds(30)))
    q = _queues(rabbitmq_server, vhost)["my_delayed"]
    assert _args(q) == {"x-dead-letter-exchange": ("longstr", "machinery_exchange"),
                        "x-dead-letter-routing-key": ("longstr", "machinery_task")}
    (msg,) = peek("my_delayed")
    assert 29_000 < int(msg.properties["expiration"]) <= 30_000
    assert set(msg.properties) == {"content_type", "delivery_mode", "expiration"}


def test_fanout_exchange_routes_by_default_queue(
    make_app: Callable[..., Machinery], rabbitmq_server: RabbitMQServer, vhost: str,
    peek: Callable[[str], list[Any]],
) -> None:
    app = make_app(Config(amqp=AMQPConfig(exchange="fan", exchange_type="fanout",
                                          binding_key="bk")), default_queue="jobs")
    res = app.send_task("add", args=[1])
    assert _bindings(rabbitmq_server, vhost) >= {("fan", "jobs", "bk")}
    (msg,) = peek("jobs")
    assert Signature.from_json(bytes(msg.body)).routing_key == "jobs"
    assert res.id in {Signature.from_json(bytes(msg.body)).uuid}


def test_result_backend_queue_per_task_one_message_per_state(
    make_app: Callable[..., Machinery], rabbitmq_server: RabbitMQServer, vhost: str,
    peek: Callable[[str], list[Any]],
) -> None:
    app = make_app(default_queue="machinery_tasks")

    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    worker = app.worker(concurrency=1, poll_timeout=0.1).start()
    wait_for(lambda: "machinery_tasks" in _queues(rabbitmq_server, vhost), what="worker queue")
    res = app.send_task("add", args=[1, 1])
    try:
        wait_for(lambda: len(peek(res.id)) == 4, what="four state messages")
    finally:
        worker.stop(timeout=10)
    q = _queues(rabbitmq_server, vhost)[res.id]
    assert (q["durable"], q["auto_delete"]) == (False, True)
    assert _args(q) == {"x-message-ttl": ("signedint", 3_600_000),  # Go int32 -> I
                        "x-expires": ("signedint", 3_600_000)}
    assert ("machinery_exchange", res.id, res.id) in _bindings(rabbitmq_server, vhost)
    msgs = peek(res.id)
    states = [TaskState.from_json(bytes(m.body)) for m in msgs]
    assert [s.state for s in states] == ["PENDING", "RECEIVED", "STARTED", "SUCCESS"]
    created = states[0].created_at
    assert created is not None and states[0].task_name == "add"
    zero = "0001-01-01T00:00:00Z"
    assert bytes(msgs[3].body) == state_bytes(res.id, "", "SUCCESS", zero,
                                              results='[{"Type":"int64","Value":2}]')
    assert all(m.properties == {"content_type": "application/json", "delivery_mode": 2}
               for m in msgs)
    # reading consumes: get() takes them all, the queue is then empty
    assert res.get(timeout=5) == 2
    assert peek(res.id) == []


def test_results_expire_in_sets_32_bit_queue_arguments(
    make_app: Callable[..., Machinery], rabbitmq_server: RabbitMQServer, vhost: str,
) -> None:
    app = make_app(Config(results_expire_in=86400))
    app.backend.set_state_pending(Signature(uuid=UUID, name="add"))
    assert _args(_queues(rabbitmq_server, vhost)[UUID]) == {
        "x-message-ttl": ("signedint", 86_400_000), "x-expires": ("signedint", 86_400_000)}


def test_publish_errors_nack_and_unroutable(make_app: Callable[..., Machinery]) -> None:
    full = make_app(Config(amqp=AMQPConfig(queue_declare_args={
        "x-max-length": 0, "x-overflow": "reject-publish"})))
    with pytest.raises(PublishError, match="Failed delivery of delivery tag: 1"):
        full.broker.publish(Signature(uuid="task_n", name="add"))
    nobody = make_app(Config(amqp=AMQPConfig(exchange="hdr", exchange_type="headers",
                                             queue_binding_args={"x-match": "all", "k": "v"})))
    with pytest.raises(PublishError, match="returned the message"):
        nobody.broker.publish(Signature(uuid="task_u", name="add", headers={"k": "other"}))


def test_field_table_long_is_written_as_l(rabbitmq_server: RabbitMQServer, vhost: str) -> None:
    from machinery_compat._amqp import Long, ensure_field_types

    ensure_field_types()
    conn = rabbitmq_server.connection(vhost)
    try:
        ch = conn.channel()
        ch.queue_declare("typed", durable=False, auto_delete=False,
                         arguments={"x-message-ttl": Long(5), "x-expires": 5000,
                                    "x-a": amqp.serialization.__name__})
    finally:
        conn.close()
    assert _args(_queues(rabbitmq_server, vhost)["typed"]) == {
        "x-message-ttl": ("long", 5), "x-expires": ("signedint", 5000),
        "x-a": ("longstr", "amqp.serialization")}


@pytest.mark.parametrize("exchange_type", ["fanout", "headers"])
def test_amqp_backend_warns_on_exchanges_that_mix_up_results(
    exchange_type: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Go's AMQP backend publishes states through the broker's exchange; a fanout or headers
    # exchange hands each state to every task's result queue (interop/tests/test_yaml_config.py
    # runs those exchanges with a Redis backend instead)
    cfg = Config(broker="memory://", result_backend="amqp://guest:guest@127.0.0.1:1/",
                 amqp=AMQPConfig(exchange_type=exchange_type))
    AMQPBackend.from_config(cfg).close()
    (msg,) = [r.getMessage() for r in caplog.records if "mixed up" in r.getMessage()]
    assert f"through the {exchange_type} exchange 'machinery_exchange'" in msg
    caplog.clear()
    AMQPBackend.from_config(Config(broker="memory://", result_backend=cfg.result_backend,
                                   amqp=AMQPConfig(exchange_type="topic"))).close()
    assert not [r for r in caplog.records if "mixed up" in r.getMessage()]
