"""The operator commands (``inspect``, ``purge``, ``dead``, ``stuck``, ``status``) through the
CLI, once over each stack: Redis broker + Redis results, AMQP broker + AMQP results (RabbitMQ),
SQS broker + DynamoDB results (moto), Pub/Sub broker (pstest) + Redis results.  Table and ``--json`` output, the purge confirmation,
byte-identical dead-letter requeues, stuck tasks re-sent, worker heartbeats in ``status``."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from machinery_compat import Machinery
from machinery_compat.cli import main
from machinery_compat.config import Config
from machinery_compat.ops import heartbeat
from machinery_compat.protocol import STARTED, Signature, TaskState
from machinery_compat.worker import Worker
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"
REGION = "us-east-1"

# the app the worker subprocess loads (-A tests.integration.test_ops_cli:app --config FILE)
app = Machinery(broker=os.environ.get("MC_TEST_BROKER", "redis://127.0.0.1:1/0"))


def _register(target: Machinery) -> None:
    @target.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    @target.task(name="slow")
    def slow(seconds: float) -> float:
        time.sleep(seconds)
        return seconds


_register(app)


def _body(task_id: str, queue: str, n: int = 1) -> bytes:
    return Signature(uuid=task_id, name="add", routing_key=queue, headers={},
                     args=[]).to_json().replace(b'"Args":[]',
                                                b'"Args":[{"Name":"","Type":"int64","Value":%d}]' % n)


@dataclass
class Stack:
    kind: str
    config: Path
    queue: str
    push: Callable[[str, bytes], None]
    push_dead: Callable[[bytes, str], None]
    queued: Callable[[str], list[bytes]]
    apps: list[Machinery] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)

    def app(self) -> Machinery:
        a = Machinery(config=Config.from_yaml(str(self.config)), store_signatures=True)
        _register(a)
        self.apps.append(a)
        return a

    def worker(self, a: Machinery, **options: Any) -> Worker:
        options.setdefault("concurrency", 2)
        options.setdefault("poll_timeout", 0.2)
        w = a.worker(queues=[self.queue], **options).start()
        self.workers.append(w)
        return w


def _redis_stack(request: pytest.FixtureRequest, tmp_path: Path, queue: str) -> Stack:
    url = request.getfixturevalue("redis_url")
    client = request.getfixturevalue("redis_client")
    cfg = tmp_path / "config.yml"
    cfg.write_text(f"broker: {url}\nresult_backend: {url}\ndefault_queue: {queue}\n"
                   "redis:\n  crash_safe: false\n")
    return Stack("redis", cfg, queue,
                 push=lambda q, b: client.rpush(q, b),
                 push_dead=lambda b, reason: client.rpush(queue + ".dead", b),
                 queued=lambda q: list(client.lrange(q, 0, -1)))


def _amqp_stack(request: pytest.FixtureRequest, tmp_path: Path, queue: str) -> Stack:
    from machinery_compat.brokers.amqp import AMQPBroker
    from machinery_compat.ops.amqp import AMQPOps

    url = request.getfixturevalue("rabbitmq_vhost_url")
    cfg = tmp_path / "config.yml"
    cfg.write_text(f"broker: {url}\nresult_backend: {url}\ndefault_queue: {queue}\n"
                   f"amqp:\n  exchange: machinery_exchange\n  exchange_type: direct\n"
                   f"  binding_key: {queue}\n")
    broker = AMQPBroker.from_config(Config.from_yaml(str(cfg)))
    request.addfinalizer(broker.close)

    def queued(q: str) -> list[bytes]:
        ops = AMQPOps(broker)
        try:
            return [m.body for m in ops.pending(q, 1000)]
        finally:
            ops.close()

    return Stack("amqp", cfg, queue,
                 push=lambda q, b: broker.publish_raw(q, b),
                 push_dead=lambda b, reason: broker.publish_raw(
                     queue + ".dead", b, headers={"x-machinery-compat-reason": reason}),
                 queued=queued)


def _sqs_stack(request: pytest.FixtureRequest, tmp_path: Path, queue: str) -> Stack:
    from machinery_compat.backends.dynamodb import create_tables
    from machinery_compat.config import DynamoDBConfig

    moto = request.getfixturevalue("moto_server")
    endpoint = request.getfixturevalue("moto_endpoint")
    sqs = moto.client("sqs", region_name=REGION)
    urls = {q: sqs.create_queue(QueueName=q)["QueueUrl"] for q in (queue, queue + "-dead")}
    request.addfinalizer(lambda: [sqs.delete_queue(QueueUrl=u) for u in urls.values()])
    tables = (f"states_{queue}", f"groups_{queue}")
    create_tables(DynamoDBConfig(endpoint_url=endpoint, region=REGION),
                  task_states_table=tables[0], group_metas_table=tables[1])
    cfg = tmp_path / "config.yml"
    cfg.write_text(f"broker: {endpoint}/{ACCOUNT}\nresult_backend: https://dynamodb.{REGION}."
                   f"amazonaws.com\ndefault_queue: {queue}\n"
                   f"sqs:\n  endpoint_url: {endpoint}\n  region: {REGION}\n"
                   f"  receive_wait_time_seconds: 1\n"
                   f"dynamodb:\n  endpoint_url: {endpoint}\n  region: {REGION}\n"
                   f"  task_states_table: {tables[0]}\n  group_metas_table: {tables[1]}\n")

    def queued(q: str) -> list[bytes]:
        out = []
        msgs = sqs.receive_message(QueueUrl=f"{endpoint}/{ACCOUNT}/{q}", MaxNumberOfMessages=10,
                                   VisibilityTimeout=1).get("Messages", [])
        for m in msgs:
            out.append(m["Body"].encode())
        return out

    def push_dead(b: bytes, reason: str) -> None:
        sqs.send_message(QueueUrl=urls[queue + "-dead"], MessageBody=b.decode(),
                         MessageAttributes={"reason": {"DataType": "String",
                                                       "StringValue": reason}})

    return Stack("sqs", cfg, queue,
                 push=lambda q, b: sqs.send_message(QueueUrl=f"{endpoint}/{ACCOUNT}/{q}",
                                                    MessageBody=b.decode()),
                 push_dead=push_dead, queued=queued)


def _pubsub_stack(request: pytest.FixtureRequest, tmp_path: Path, queue: str) -> Stack:
    ps = request.getfixturevalue("pubsub_emulator")
    project = request.getfixturevalue("pubsub_project")
    redis_url = request.getfixturevalue("redis_url")
    sub = f"workers_{queue}"
    ps.create_topic(project, queue)
    ps.create_subscription(project, sub, queue)
    dead = queue + ".dead"
    ps.create_topic(project, dead)
    ps.create_subscription(project, dead, dead)
    cfg = tmp_path / "config.yml"
    cfg.write_text(f"broker: gcppubsub://{project}/{sub}\nresult_backend: {redis_url}\n"
                   f"default_queue: {queue}\n")
    publisher = ps.publisher()

    def push(q: str, b: bytes, **attributes: str) -> None:
        publisher.publish(f"projects/{project}/topics/{q}", b, **attributes).result(timeout=10)

    def queued(q: str) -> list[bytes]:
        out: list[bytes] = []
        while batch := ps.pull(project, sub if q == queue else q, 100):
            out += [bytes(m.message.data) for m in batch]
        return out

    return Stack("pubsub", cfg, queue, push=push,
                 push_dead=lambda b, reason: push(dead, b, reason=reason), queued=queued)


@pytest.fixture(params=["redis", "amqp", "sqs", "pubsub"])
def stack(request: pytest.FixtureRequest, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    monkeypatch.setattr(heartbeat, "INTERVAL", 0.2)
    queue = f"ops_{uuid.uuid4().hex[:8]}"
    s = {"redis": _redis_stack, "amqp": _amqp_stack, "sqs": _sqs_stack,
         "pubsub": _pubsub_stack}[request.param](
        request, tmp_path, queue)
    yield s
    for w in s.workers:
        w.stop(timeout=10)
    for a in s.apps:
        a.close()


@pytest.fixture
def cli(stack: Stack, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[int, str, str]]:
    """``cli("inspect", "pending", stdin="y\\n")`` -> (exit status, stdout, stderr)."""

    def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        code = main([*argv, "--config", str(stack.config)])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _json(result: tuple[int, str, str]) -> Any:
    code, out, err = result
    assert code == 0, err
    return json.loads(out)


def test_inspect_pending_and_purge_with_confirmation(stack: Stack, cli: Any) -> None:
    q = stack.queue
    bodies = [_body(f"task_p{i}", q, i) for i in range(3)]
    for b in bodies:
        stack.push(q, b)
    if stack.kind == "sqs":
        code, out, err = cli("inspect", "pending", q)
        assert code == 1 and out == "" and len(err.splitlines()) == 1
        assert "SQS cannot list" in err and "status" in err
    elif stack.kind == "pubsub":
        code, out, err = cli("inspect", "pending", q)
        assert code == 1 and out == "" and len(err.splitlines()) == 1
        assert "Pub/Sub cannot list" in err
    else:
        code, out, _ = cli("inspect", "pending", q)
        assert code == 0
        lines = out.splitlines()
        assert lines[0] == f"{q}: 3 message(s)"
        assert lines[1].split() == ["UUID", "NAME", "ETA", "RETRIES", "SIZE"]
        assert [ln.split()[:2] for ln in lines[2:]] == [[f"task_p{i}", "add"] for i in range(3)]
        rows = _json(cli("inspect", "pending", "--json", "--limit", "2"))
        assert [r["uuid"] for r in rows] == ["task_p0", "task_p1"]
        assert [r["body"].encode() for r in rows] == bodies[:2]
        assert stack.queued(q) == bodies  # browsing left them in place, in order
    # no confirmation: nothing purged
    count = "all" if stack.kind == "pubsub" else "3"  # (Pub/Sub does not count)
    for answer in ("", "n\n"):
        code, out, err = cli("purge", q, stdin=answer)
        assert code == 1 and out == ""
        assert f"Purge {count} messages from {q}? [y/N]" in err and "not purged" in err
    waiting = _json(cli("status", "--json"))["queues"][0]["messages"]
    assert waiting == (None if stack.kind == "pubsub" else 3)
    code, out, err = cli("purge", q, "-A", "tests.integration.test_ops_cli:app", stdin="y\n")
    assert code == 0 and out == f"purged 3 message(s) from {q}\n"
    # SQS allows one PurgeQueue per queue every 60 s (moto >= 5.2.5 too): another queue
    q2 = q + "-dead" if stack.kind == "sqs" else q
    for b in bodies:
        stack.push(q2, b)
    assert _json(cli("purge", q2, "--force", "--json")) == {"queue": q2, "purged": 3}
    if stack.kind == "pubsub":
        assert stack.queued(q) == []
    else:
        assert _json(cli("status", "--json"))["queues"][0]["messages"] == 0
    if stack.kind == "sqs":  # a second purge within 60 s: SQS refuses it, in one line
        code, out, err = cli("purge", q, "--force")
        assert code == 1 and out == "" and len(err.splitlines()) == 1
        assert "PurgeQueueInProgress" in err and "60 seconds" in err


def test_dead_list_requeue_keeps_bytes_and_purge(stack: Stack, cli: Any) -> None:
    q = stack.queue
    place = q + ("-dead" if stack.kind == "sqs" else ".dead")
    bodies = [_body("task_d0", q), b'{"not a": "signature" \xc3\xa9']
    for b in bodies:
        stack.push_dead(b, "undecodable")
    code, out, _ = cli("dead", "list", q)
    assert code == 0
    assert out.splitlines()[0] == f"{place}: 2 message(s) shown"
    assert "task_d0" in out and "undecodable:" in out
    rows = _json(cli("dead", "list", "--json"))
    assert sorted(r["body"].encode() for r in rows) == sorted(bodies)
    if stack.kind != "redis":
        assert {r["reason"] for r in rows} == {"undecodable"}
    assert _json(cli("dead", "requeue", "--json")) == {"from": place, "to": q, "requeued": 2}
    assert sorted(stack.queued(q)) == sorted(bodies)  # the same bytes, on their queue
    if stack.kind in ("redis", "amqp"):
        assert stack.queued(q) == bodies  # and in their order
    assert _json(cli("dead", "list", "--json")) == []
    stack.push_dead(bodies[0], "again")
    code, _, err = cli("dead", "purge", q)
    count = "all" if stack.kind == "pubsub" else "1"
    assert code == 1 and f"Purge {count} messages from {place}? [y/N]" in err
    assert _json(cli("dead", "purge", q, "--force", "--json")) == {"queue": place, "purged": 1}
    assert _json(cli("dead", "list", "--json")) == []


def test_inspect_delayed(stack: Stack, cli: Any) -> None:
    a = stack.app()
    r = a.send_task("add", args=[1], countdown=120)
    if stack.kind == "sqs":
        code, out, err = cli("inspect", "delayed")
        assert code == 1 and "SQS cannot list delayed messages" in err
        assert _json(cli("status", "--json"))["delayed"] == 1
        return
    if stack.kind == "pubsub":
        code, out, err = cli("inspect", "delayed")
        assert code == 1 and "Pub/Sub has no delayed messages" in err
        assert _json(cli("status", "--json"))["delayed"] is None
        assert "delayed: unknown (Pub/Sub" in cli("status")[1]
        return
    extra: list[str] = []
    if stack.kind == "amqp":
        code, _, err = cli("inspect", "delayed")
        assert code == 1 and len(err.splitlines()) == 1 and "--delay-queue" in err
        for name in a.broker._delay_queues:  # type: ignore[attr-defined]
            extra += ["--delay-queue", name]
    rows = _json(cli("inspect", "delayed", "--json", *extra))
    assert [row["uuid"] for row in rows] == [r.id]
    assert abs(rows[0]["due"] - (time.time() + 120)) < 10
    code, out, _ = cli("inspect", "delayed", *extra)
    assert code == 0 and out.split()[:4] == ["DUE", "UUID", "NAME", "ETA"] and r.id in out
    assert _json(cli("status", "--json", *extra))["delayed"] == 1


def test_inspect_state_and_group(stack: Stack, cli: Any) -> None:
    from machinery_compat import group

    a = stack.app()
    add = a.tasks["add"]
    res = group(add.s(1, 2), add.s(3, 4)).apply_async()
    stack.worker(a)

    def state(task_id: str) -> Any:
        code, out, _ = cli("inspect", "state", task_id, "--json")
        return json.loads(out) if code == 0 else None

    first = res.results[0].id
    info = wait_for(lambda: (s := state(first)) and s["state"] == "SUCCESS" and s,
                    timeout=20, what="SUCCESS")
    assert info["name"] == "add" or stack.kind == "amqp"  # (AMQP: no merge, as Go)
    assert info["results"] == [{"type": "int64", "value": 3}]
    assert info["signature_stored"] is (stack.kind != "amqp")
    if info["signature_stored"]:
        assert Signature.from_json(info["signature"]).uuid == first
    code, out, _ = cli("inspect", "state", first)
    assert code == 0 and "SUCCESS" in out and "int64:3" in out
    code, _, err = cli("inspect", "state", "task_nobody")
    assert code == 1 and "no state stored for task task_nobody" in err
    if stack.kind == "amqp":
        code, _, err = cli("inspect", "group", res.id)
        assert code == 1 and "AMQP result backend keeps no group meta" in err
        return
    g = wait_for(lambda: (x := _json(cli("inspect", "group", res.id, "--json")))["done"] == 2
                 and x, timeout=20, what="group done")
    assert g["members"] == 2 and [t["uuid"] for t in g["tasks"]] == [m.id for m in res.results]
    code, out, _ = cli("inspect", "group", res.id)
    assert out.splitlines()[0] == f"group {res.id}: 2/2 done"


def _subprocess_worker(stack: Stack) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "machinery_compat", "worker", "-A",
         "tests.integration.test_ops_cli:app", "--config", str(stack.config), "-c", "1",
         "-n", "ops-killed@%h"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, text=True)


def test_stuck_finds_a_killed_workers_task_and_resends_it(stack: Stack, cli: Any) -> None:
    a = stack.app()
    if stack.kind == "amqp":
        code, out, err = cli("stuck")
        assert code == 1 and out == "" and len(err.splitlines()) == 1
        assert "Redis or DynamoDB result backend" in err
        return
    r = a.send_task("slow", args=[2.0])
    if stack.kind == "redis":
        # a worker that pops the message (crash_safe: false, as Go) and is killed mid-task
        proc = _subprocess_worker(stack)
        try:
            wait_for(lambda: a.AsyncResult(r.id).state == STARTED, timeout=20, what="STARTED")
            wait_for(lambda: any(w["hostname"].startswith("ops-killed@") and w["pid"] == proc.pid
                                 for w in _json(cli("status", "--json"))["workers"]),
                     timeout=10, what="the worker's heartbeat with its -n name")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    # a task sent without a stored signature
    a.store_signatures = False
    other = a.send_task("add", args=[1])
    a.store_signatures = True
    if stack.kind == "redis":
        a.broker.client.delete(stack.queue)  # type: ignore[attr-defined]
    else:
        # SQS gives a dead worker's message back by itself; here both went missing (purged
        # at once: SQS allows one PurgeQueue per queue every 60 s)
        assert _json(cli("purge", stack.queue, "--force", "--json"))["purged"] == 2
        a.backend.set_state(TaskState(r.id, STARTED), merge=True)
    a.backend.set_state(TaskState(other.id, STARTED), merge=True)

    rows = _json(cli("stuck", "--older-than", "0", "--json"))
    assert {row["uuid"]: row["state"] for row in rows} == {r.id: "STARTED", other.id: "STARTED"}
    assert all(row["message_checked"] is (stack.kind == "redis") for row in rows)
    code, out, _ = cli("stuck", "--older-than", "0")
    assert code == 0 and r.id in out and ("gone" if stack.kind == "redis" else "not checked") in out
    assert "no stuck tasks" in cli("stuck", "--older-than", "3600")[1]

    if stack.kind in ("sqs", "pubsub"):  # the message cannot be looked for: only with --force
        rows = _json(cli("stuck", "--older-than", "0", "--resend", "--json"))
        mine = {row["uuid"]: row for row in rows}
        assert mine[r.id]["resent"] is False and "without force" in mine[r.id]["reason"]
    code, out, _ = cli("stuck", "--older-than", "0", "--resend", "--force")
    assert code == 0
    lines = {ln.split()[0]: ln for ln in out.splitlines()[1:]}
    assert lines[r.id].endswith("re-sent")
    assert lines[other.id].endswith("cannot re-send: signature not stored")
    stack.worker(a)
    assert r.get(timeout=30) == 2.0
    assert [row["uuid"] for row in _json(cli("stuck", "--older-than", "0", "--json"))] == [other.id]


def test_status_lists_a_live_python_worker_until_it_stops(stack: Stack, cli: Any) -> None:
    a = stack.app()
    w = stack.worker(a, concurrency=3)
    assert a.send_task("add", args=[1, 2]).get(timeout=20) == 3

    def live() -> list[dict[str, Any]]:
        return [x for x in _json(cli("status", "--json"))["workers"] or ()
                if x["pid"] == os.getpid() and x["queues"] == [stack.queue]]

    workers = wait_for(lambda: [x for x in live() if x["processed"] >= 1], timeout=10,
                       what="a heartbeat with the task done")
    assert len(workers) == 1
    rec = workers[0]
    assert rec["concurrency"] == 3 and rec["hostname"].startswith(f"{os.getpid()}@")
    code, out, _ = cli("status")
    assert code == 0 and "workers: " in out and "Go workers publish no heartbeat" in out
    assert rec["hostname"] in out
    queue_line = next(ln for ln in out.splitlines() if ln.startswith(stack.queue))
    assert queue_line.split()[1] == ("-" if stack.kind == "pubsub" else "0")
    w.stop(timeout=10)
    stack.workers.remove(w)
    assert live() == []


def test_app_or_config_is_required_and_errors_are_one_line(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert err == ("machinery-compat: error: give the app (-A module:app) and/or the config "
                   "file (--config FILE)\n")
    # a Redis nobody listens on: one line, exit 1
    cfg = tmp_path / "down.yml"
    cfg.write_text("broker: redis://127.0.0.1:1/0\nredis:\n  connect_timeout: 1\n")
    assert main(["inspect", "pending", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("machinery-compat: ")


def test_status_forgets_a_worker_whose_heartbeat_expired(stack: Stack, cli: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    a = stack.app()
    w = stack.worker(a)

    def live() -> list[dict[str, Any]]:
        return [x for x in _json(cli("status", "--json"))["workers"] or ()
                if x["pid"] == os.getpid() and x["queues"] == [stack.queue]]

    wait_for(live, timeout=10, what="the worker's heartbeat")
    # the worker "dies": its heartbeat thread stops without deleting its record
    beater = heartbeat._beaters[id(w)]
    monkeypatch.setattr(beater.store, "delete", lambda key: None)
    heartbeat._on_shutdown(w)
    wait_for(lambda: not live(), timeout=10, what="the record's expiry")
