"""The AMQP broker's own behaviour on a real node: redelivery in place, dead letters, pending
tasks, fail-over URLs, publishing from many threads, and amqps:// (TLS).

Broker behaviour shared with the other brokers (worker, producer, workflows) runs on AMQP in
tests/behaviour/ (kinds ``amqp`` and ``amqp+redis``).
"""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from machinery_compat import Machinery, Signature
from machinery_compat.brokers.amqp import AMQPBroker
from machinery_compat.config import AMQPConfig, Config
from tests.services import RabbitMQServer, free_port


def _sig(uuid: str, queue: str = "q") -> Signature:
    return Signature(uuid=uuid, name="t", routing_key=queue, headers={})


@pytest.fixture
def broker(rabbitmq_vhost_url: str) -> Iterator[AMQPBroker]:
    b = AMQPBroker(rabbitmq_vhost_url, "q", amqp=AMQPConfig(binding_key="q"))
    yield b
    b.close()


def _uuids(deliveries: list[object]) -> list[str]:
    return [Signature.from_json(d.body).uuid for d in deliveries]  # type: ignore[attr-defined]


def test_requeued_delivery_goes_back_to_its_place(rabbitmq_vhost_url: str) -> None:
    # prefetch 1: nothing else is buffered here, so the next delivery shows the queue's head
    broker = AMQPBroker(rabbitmq_vhost_url, "q", amqp=AMQPConfig(binding_key="q", prefetch_count=1))
    for i in range(3):
        broker.publish(_sig(f"task_{i}"))
    first = broker.fetch(["q"], 1, 1.0)
    assert _uuids(first) == ["task_0"]
    broker.requeue(first, front=True)  # a stopping worker's unstarted message
    again = broker.fetch(["q"], 1, 1.0)
    assert _uuids(again) == ["task_0"] and again[0].extra["redelivered"]
    for d in again:
        broker.ack(d)
    rest = broker.fetch(["q"], 5, 1.0)
    broker.ack(rest[0])
    rest += broker.fetch(["q"], 5, 1.0)
    assert _uuids(rest) == ["task_1", "task_2"]
    broker.close()


def test_unregistered_requeue_goes_to_the_tail_with_its_properties(rabbitmq_vhost_url: str) -> None:
    broker = AMQPBroker(rabbitmq_vhost_url, "q", amqp=AMQPConfig(binding_key="q", prefetch_count=1))
    try:
        sig = _sig("task_0")
        sig.headers, sig.priority = {"h": "v"}, 3
        broker.publish(sig)
        broker.publish(_sig("task_1"))
        first = broker.fetch(["q"], 1, 1.0)
        broker.requeue(first)  # not registered here: behind the others, for another worker
        second = broker.fetch(["q"], 1, 1.0)
        assert _uuids(second) == ["task_1"]
        broker.ack(second[0])
        (again,) = broker.fetch(["q"], 1, 1.0)
        assert again.body == first[0].body and not again.extra["redelivered"]
        assert again.extra["properties"] == {"content_type": "application/json", "delivery_mode": 2,
                                             "priority": 3, "application_headers": {"h": "v"}}
    finally:
        broker.close()


def test_requeue_later_holds_nothing_and_comes_back_unchanged(
    rabbitmq_server: RabbitMQServer, rabbitmq_vhost_url: str
) -> None:
    broker = AMQPBroker(rabbitmq_vhost_url, "q", amqp=AMQPConfig(binding_key="q", prefetch_count=1))
    vhost = rabbitmq_vhost_url.rsplit("/", 1)[1]
    try:
        sig = _sig("task_0")
        sig.headers, sig.priority = {"h": "v"}, 3
        broker.publish(sig)
        (d,) = broker.fetch(["q"], 1, 1.0)
        # 5 s: rabbitmqctl below can take seconds on a loaded machine (1.5 s was outlasted)
        assert broker.requeue_later([d], 5.0) is True
        assert broker.fetch(["q"], 1, 0.2) == []  # not back yet
        rows = {q["name"]: q for q in rabbitmq_server.queues(
            vhost, ("name", "messages_ready", "messages_unacknowledged"))}
        # acked at once: the prefetch slot is free while the message waits elsewhere
        assert (rows["q"]["messages_ready"], rows["q"]["messages_unacknowledged"]) == (0, 0)
        assert rows["machinery_compat.handback.5000.q"]["messages_ready"] == 1
        (again,) = broker.fetch(["q"], 1, 8.0)
        assert again.body == d.body and again.queue == "q"
        props = again.extra["properties"]
        # RabbitMQ adds its x-death record, as for the tasks Go delays (Go reads the body only)
        headers = {k: v for k, v in props.pop("application_headers").items()
                   if not k.startswith("x-")}
        assert headers == {"h": "v"}
        assert props == {"content_type": "application/json", "delivery_mode": 2, "priority": 3}
        broker.ack(again)
    finally:
        broker.close()


def test_worker_hands_unregistered_tasks_back_through_a_delay_not_its_prefetch(
    rabbitmq_server: RabbitMQServer, rabbitmq_vhost_url: str
) -> None:
    # prefetch 2: were the unknown tasks kept aside in the worker, their deliveries would hold
    # both slots and the worker's own tasks would wait behind them
    config = Config(broker=rabbitmq_vhost_url, result_backend="memory://", default_queue="q",
                    amqp=AMQPConfig(binding_key="q", prefetch_count=2))
    app = Machinery(config=config)

    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    for i in range(4):
        app.send_task("go_only", args=[i])
    worker = app.worker(concurrency=2, queues=["q"])
    worker.start()
    try:
        results = [app.send_task("add", args=[i, 1]) for i in range(20)]
        assert [r.get(timeout=30) for r in results] == [i + 1 for i in range(20)]
        assert worker._parked == []  # nothing held in the worker
        assert worker.outcomes["handed_back"] >= 4
    finally:
        worker.stop()
        app.close()
    vhost = rabbitmq_vhost_url.rsplit("/", 1)[1]
    total = sum(q["messages_ready"] + q["messages_unacknowledged"] for q in rabbitmq_server.queues(
        vhost, ("name", "messages_ready", "messages_unacknowledged")))
    assert total == 4  # the unknown tasks are all still somewhere, for a worker that has them


def test_undecodable_message_goes_to_dot_dead_and_is_acked(
    broker: AMQPBroker, rabbitmq_server: RabbitMQServer, rabbitmq_vhost_url: str
) -> None:
    broker.fetch(["q"], 1, 0.05)  # declare the worker's queue
    broker.publish_raw("q", b"\xffnot json")
    (d,) = broker.fetch(["q"], 1, 1.0)
    assert broker.dead_letter(d, "undecodable") == "q.dead"
    vhost = rabbitmq_vhost_url.rsplit("/", 1)[1]
    rows = {q["name"]: q for q in rabbitmq_server.queues(
        vhost, ("name", "messages_ready", "messages_unacknowledged", "durable"))}
    assert rows["q.dead"]["messages_ready"] == 1 and rows["q.dead"]["durable"]
    assert (rows["q"]["messages_ready"], rows["q"]["messages_unacknowledged"]) == (0, 0)
    (dead,) = broker.fetch(["q.dead"], 1, 1.0)
    assert dead.body == b"\xffnot json"


def test_pending_tasks_browse_and_give_back(broker: AMQPBroker) -> None:
    for i in range(3):
        broker.publish(_sig(f"task_{i}"))
    assert [s.uuid for s in broker.pending_tasks()] == ["task_0", "task_1", "task_2"]
    assert [s.uuid for s in broker.pending_tasks("q")] == ["task_0", "task_1", "task_2"]
    got: list[str] = []
    while len(got) < 3:  # all still there, in order
        batch = broker.fetch(["q"], 5, 2.0)
        assert batch, got
        got += _uuids(batch)
    assert got == ["task_0", "task_1", "task_2"]


def test_several_urls_are_tried_in_order(rabbitmq_vhost_url: str) -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    b = AMQPBroker(f"{dead}|{rabbitmq_vhost_url}", "q", amqp=AMQPConfig(binding_key="q"),
                   separator="|")
    try:
        b.publish(_sig("task_fo"))
        assert _uuids(b.fetch(["q"], 1, 2.0)) == ["task_fo"]
    finally:
        b.close()


def test_publishing_from_many_threads(broker: AMQPBroker) -> None:
    errors: list[BaseException] = []

    def send(t: int) -> None:
        try:
            for i in range(50):
                broker.publish(_sig(f"task_{t}_{i}"))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=send, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    got: list[str] = []
    while len(got) < 400:
        batch = broker.fetch(["q"], 50, 2.0)
        assert batch, f"only {len(got)} of 400 arrived"
        got += _uuids(batch)
        for d in batch:
            broker.ack(d)
    assert sorted(got) == sorted(f"task_{t}_{i}" for t in range(8) for i in range(50))


def test_acks_from_pool_threads_while_fetch_waits(broker: AMQPBroker) -> None:
    for i in range(20):
        broker.publish(_sig(f"task_{i}"))
    done: list[str] = []
    pending: list[threading.Thread] = []
    while len(done) < 20:
        for d in broker.fetch(["q"], 3, 1.0):
            def ack(d: object = d) -> None:
                broker.ack(d)  # type: ignore[arg-type]
                done.append(Signature.from_json(d.body).uuid)  # type: ignore[attr-defined]

            t = threading.Thread(target=ack)
            t.start()
            pending.append(t)
    for t in pending:
        t.join()
    assert sorted(done) == sorted(f"task_{i}" for i in range(20))


def _self_signed(dir: Path) -> tuple[Path, Path]:
    key, cert = dir / "key.pem", dir / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return key, cert


@pytest.mark.slow
def test_amqps_with_an_ssl_context(
    rabbitmq_server_factory: Callable[..., RabbitMQServer], tmp_path: Path
) -> None:
    key, cert = _self_signed(tmp_path)
    tls_port = free_port()
    node = rabbitmq_server_factory(config_lines=[
        f"listeners.ssl.default = 127.0.0.1:{tls_port}",
        f"ssl_options.cacertfile = {cert}", f"ssl_options.certfile = {cert}",
        f"ssl_options.keyfile = {key}", "ssl_options.verify = verify_none",
        "ssl_options.fail_if_no_peer_cert = false",
        # guest logs in from loopback only; TLS connections from 127.0.0.1 are loopback too
    ])
    url = f"amqps://guest:guest@127.0.0.1:{tls_port}/"
    ctx = ssl.create_default_context(cafile=str(cert))
    app = Machinery(broker=url, result_backend=url, default_queue="machinery_tasks")
    app.config.tls_config = ctx
    try:
        @app.task(name="add")
        def add(a: int, b: int) -> int:
            return a + b

        worker = app.worker(concurrency=1, poll_timeout=0.1).start()
        try:
            assert app.send_task("add", args=[2, 3]).get(timeout=20) == 5
        finally:
            worker.stop(timeout=10)
        conns = json.loads(node.ctl("list_connections", "--formatter", "json", "ssl", "port"))
        assert conns and all(c["ssl"] for c in conns if c["port"] == tls_port)
    finally:
        app.close()
    # an untrusted certificate is refused (Go's DialTLS with system roots does the same)
    strict = AMQPBroker(url, "q")
    try:
        with pytest.raises(Exception, match=r"(?i)certificate|ssl"):
            strict.publish(_sig("task_tls"))
    finally:
        strict.close()


def test_refused_credentials_fail_at_once(rabbitmq_server: RabbitMQServer) -> None:
    import time

    from machinery_compat import PublishError

    b = AMQPBroker(f"amqp://guest:wrong@127.0.0.1:{rabbitmq_server.port}/", "q")
    start = time.monotonic()
    try:
        with pytest.raises(PublishError, match="ACCESS_REFUSED"):
            b.publish(_sig("task_auth"))
    finally:
        b.close()
    assert time.monotonic() - start < 5  # not retried for the whole publish budget


def test_publish_gives_up_after_its_budget() -> None:
    import time

    from machinery_compat import PublishError

    b = AMQPBroker(f"amqp://guest:guest@127.0.0.1:{free_port()}/", "q", publish_budget=1.0)
    start = time.monotonic()
    try:
        with pytest.raises(PublishError, match=r"gave up after \d+ attempt"):
            b.publish(_sig("task_down"))
    finally:
        b.close()
    assert 0.5 < time.monotonic() - start < 5


def test_stop_consuming_gives_prefetched_messages_back_at_once(
    broker: AMQPBroker, rabbitmq_server: RabbitMQServer, rabbitmq_vhost_url: str
) -> None:
    for i in range(5):
        broker.publish(_sig(f"task_{i}"))
    (held,) = broker.fetch(["q"], 1, 1.0)  # prefetch 3: two more wait in the consumer
    broker.stop_consuming()
    vhost = rabbitmq_vhost_url.rsplit("/", 1)[1]
    (row,) = rabbitmq_server.queues(vhost, ("name", "messages_ready", "messages_unacknowledged",
                                            "consumers"))
    assert (row["messages_ready"], row["messages_unacknowledged"], row["consumers"]) == (4, 1, 0)
    broker.ack(held)  # the worker may still settle what it holds
    got: list[str] = []
    while len(got) < 4:
        batch = broker.fetch(["q"], 5, 2.0)
        assert batch, got
        got += _uuids(batch)
        for d in batch:
            broker.ack(d)
    assert got == [f"task_{i}" for i in range(1, 5)]  # back in their places, in order


FORK_SCRIPT = r"""
import os, sys
from machinery_compat import Machinery
from machinery_compat.config import AMQPConfig, Config, Config

url = sys.argv[1]
cfg = Config(amqp=AMQPConfig(binding_key="q"))
cfg.broker = cfg.result_backend = url
app = Machinery(config=cfg, default_queue="q")
app.send_task("noop", args=[0]).state            # parent's producer and backend links in use
pids = []
for c in range(3):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for i in range(50):
                app.send_task("noop", args=[i])
            code = 0
        finally:
            os._exit(code)
    pids.append(pid)
for i in range(50):
    app.send_task("noop", args=[i])                # the parent's links still work
assert all(os.waitpid(p, 0)[1] == 0 for p in pids), "a child failed"
app.close()
print("ok")
"""


def test_forked_children_publish_on_their_own_connections(
    rabbitmq_vhost_url: str, rabbitmq_server: RabbitMQServer, tmp_path: Path
) -> None:
    import shutil
    import sys

    script = tmp_path / "fork.py"
    script.write_text(FORK_SCRIPT)
    setpriv = shutil.which("setpriv")
    prefix = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([*prefix, sys.executable, str(script), rabbitmq_vhost_url],
                          cwd=root, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    vhost = rabbitmq_vhost_url.rsplit("/", 1)[1]
    (row,) = [q for q in rabbitmq_server.queues(vhost, ("name", "messages")) if q["name"] == "q"]
    assert row["messages"] == 1 + 3 * 50 + 50
