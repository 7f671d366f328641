"""Task events, stats and the Prometheus endpoint on real services: once over a Redis stack
(events in the stream ``machinery_compat.events``) and once over an AMQP-only stack (the
fanout exchange ``machinery_compat.events`` and its history queue), each through the API and
the CLI; the ``--metrics-port`` endpoint of a worker subprocess scraped over HTTP (Redis)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from machinery_compat import Machinery
from machinery_compat.cli import main
from machinery_compat.config import Config
from machinery_compat.events import EventsConfig, history
from machinery_compat.events.model import Event, encode_batch
from machinery_compat.worker import Worker
from tests.helpers import wait_for
from tests.services._base import free_port

ROOT = Path(__file__).resolve().parents[2]

# the app the CLI worker subprocess loads (-A tests.integration.test_events:app --config FILE)
app = Machinery(broker=os.environ.get("MC_TEST_BROKER", "redis://127.0.0.1:1/0"))


def _register(target: Machinery) -> None:
    @target.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    @target.task(name="boom")
    def boom() -> None:
        raise ValueError("kaput")


_register(app)


@pytest.fixture(params=["redis", "amqp"])
def config_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    queue = f"ev_{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "config.yml"
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        cfg.write_text(f"broker: {url}\nresult_backend: {url}\ndefault_queue: {queue}\n")
    else:
        url = request.getfixturevalue("rabbitmq_vhost_url")
        cfg.write_text(f"broker: {url}\nresult_backend: {url}\ndefault_queue: {queue}\n"
                       f"amqp:\n  exchange: machinery_exchange\n  exchange_type: direct\n"
                       f"  binding_key: {queue}\n")
    return cfg


@pytest.fixture
def apps(config_file: Path) -> Iterator[list[Machinery]]:
    made: list[Machinery] = []
    yield made
    for a in made:
        a.close()


def _app(config_file: Path, made: list[Machinery], **events: Any) -> Machinery:
    a = Machinery(config=Config.from_yaml(str(config_file)))
    a.events_config = EventsConfig(**{"worker_events": True, **events})
    _register(a)
    made.append(a)
    return a


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def test_events_tail_history_stats_and_cli(config_file: Path, apps: list[Machinery]) -> None:
    worker_app = _app(config_file, apps)
    producer = _app(config_file, apps, send_events=True)
    reader = _app(config_file, apps)
    queue = reader.config.default_queue
    live: list[Event] = []
    tailing = threading.Event()

    start = time.time() - 1

    def tail() -> None:  # from a second ago: whatever came before the tail listened, then live
        for e in reader.events(since=start, timeout=20):
            tailing.set()
            live.append(e)
            types = [x.type for x in live]  # (two apps: their events may interleave)
            if "task-dead-lettered" in types and types.count("task-sent") == 4:
                return

    t = threading.Thread(target=tail, daemon=True)
    t.start()
    w: Worker = worker_app.worker(concurrency=2, poll_timeout=0.1).start()
    try:
        assert tailing.wait(15), "no worker-online event seen by the tail"
        oks = [producer.send_task("add", args=[i, 1]) for i in range(3)]
        bad = producer.send_task("boom")
        assert [r.get(timeout=15) for r in oks] == [1, 2, 3]
        with pytest.raises(Exception, match="kaput"):
            bad.get(timeout=15)
        if worker_app.config.broker.startswith("redis"):
            worker_app.broker.client.rpush(queue, b"not json")
        else:
            worker_app.broker.publish_raw(queue, b"not json")
        t.join(20)
        assert not t.is_alive(), f"the tail missed events: {[e.type for e in live]}"
    finally:
        w.stop(timeout=10)
    producer.close()  # writes its last task-sent events
    worker_app.close()

    def by(kind: str, events: list[Event]) -> list[Event]:
        return [e for e in events if e.type == kind]

    assert by("worker-online", live)[0].extra["queues"] == [queue]
    assert {e.uuid for e in by("task-sent", live)} == {r.task_id for r in [*oks, bad]}
    assert {e.uuid for e in by("task-succeeded", live)} == {r.task_id for r in oks}
    failed = by("task-failed", live)
    assert [(e.uuid, e.exception, e.queue) for e in failed] == [(bad.task_id, "kaput", queue)]
    assert by("task-dead-lettered", live)[0].queue == queue

    def stored_offline() -> list[Event]:
        kept = history(reader)
        return kept if by("worker-offline", kept) else []

    kept = wait_for(stored_offline, 10, "worker-offline kept")
    assert len(by("task-started", kept)) == 4 and len(by("task-sent", kept)) == 4
    for r in oks:  # each process's events in the order it wrote them
        assert [e.type for e in kept if e.uuid == r.task_id and e.type != "task-sent"] == [
            "task-started", "task-succeeded"]

    stats = reader.stats()
    q = stats["queues"][queue]
    assert (q["enqueued"], q["started"], q["succeeded"], q["failed"], q["dead_lettered"]) == (
        4, 4, 3, 1, 1)
    assert q["depth"] == 0
    add = stats["tasks"]["add"]
    assert add["succeeded"] == 3 and add["runtime"]["count"] == 3
    assert 0 <= add["runtime"]["p50"] <= add["runtime"]["p99"] < 5
    assert stats["events"]["store"] == ("redis" if "redis" in config_file.read_text() else "amqp")
    assert stats["workers"] == []  # it went offline

    code, out = _cli("events", "--config", str(config_file), "--json", "--limit", "1000")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert {ln["uuid"] for ln in lines if ln["type"] == "task-succeeded"} == {
        r.task_id for r in oks}
    code, out = _cli("events", "--config", str(config_file))
    assert code == 0 and f"task-failed  boom  {bad.task_id}  {queue}" in out
    assert "error='kaput'" in out
    code, out = _cli("stats", "--config", str(config_file), "--json")
    assert code == 0 and json.loads(out)["queues"][queue]["succeeded"] == 3
    code, out = _cli("stats", "--config", str(config_file))
    assert code == 0 and queue in out and "P99 S" in out


def test_follow_from_since_gives_history_then_new_events(config_file: Path,
                                                         apps: list[Machinery]) -> None:
    worker_app = _app(config_file, apps)
    reader = _app(config_file, apps)
    w = worker_app.worker(concurrency=1, poll_timeout=0.1).start()
    try:
        first = worker_app.send_task("add", args=[1])
        first.get(timeout=15)
        wait_for(lambda: any(e.uuid == first.task_id and e.type == "task-succeeded"
                             for e in history(reader)), 10, "first task's events kept")
        since = time.time() - 60
        seen: list[Event] = []
        second = None
        for e in reader.events(since=since, timeout=10):
            seen.append(e)
            if e.uuid == first.task_id and e.type == "task-succeeded" and second is None:
                second = worker_app.send_task("add", args=[2])  # while the tail runs
            if second is not None and e.uuid == second.task_id and e.type == "task-succeeded":
                break
        assert second is not None and second.get(timeout=5) == 2
    finally:
        w.stop(timeout=10)
    succeeded = [e.uuid for e in seen if e.type == "task-succeeded"]
    assert succeeded.count(first.task_id) == 1 and succeeded[-1] == second.task_id


def test_a_worker_emits_task_events_by_default(redis_url: str, redis_client: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """No events config and no environment variable: a worker emits (producers do not)."""
    monkeypatch.delenv("MACHINERY_COMPAT_WORKER_EVENTS", raising=False)
    monkeypatch.delenv("MACHINERY_COMPAT_SEND_EVENTS", raising=False)
    a = Machinery(broker=redis_url, result_backend=redis_url, default_queue="ev_default")
    _register(a)
    try:
        w = a.worker(concurrency=1, poll_timeout=0.1).start()
        try:
            res = a.send_task("add", args=[1])
            assert res.get(timeout=10) == 1
        finally:
            w.stop(timeout=10)
        wait_for(lambda: any(e.type == "worker-offline" for e in history(a)), 10,
                 "the stopped worker's worker-offline")
        assert [e.type for e in history(a) if e.uuid == res.task_id] == [
            "task-started", "task-succeeded"]
        assert not [e for e in history(a) if e.type == "task-sent"]
    finally:
        a.close()


def test_tasks_waiting_when_a_worker_starts_have_their_events(redis_url: str,
                                                              redis_client: Any) -> None:
    """The worker's threads take waiting messages at once: its events (and metrics) are
    wired before they run, so none of its first tasks goes uncounted."""
    a = Machinery(broker=redis_url, result_backend=redis_url, default_queue="ev_waiting")
    a.events_config = EventsConfig(worker_events=True)
    _register(a)
    try:
        waiting = [a.send_task("add", args=[i]) for i in range(40)]
        w = a.worker(concurrency=4, poll_timeout=0.1).start()
        try:
            assert [r.get(timeout=15) for r in waiting] == list(range(40))
        finally:
            w.stop(timeout=10)
        wait_for(lambda: any(e.type == "worker-offline" for e in history(a)), 10,
                 "the stopped worker's worker-offline")
        seen = history(a)
        for kind in ("task-started", "task-succeeded"):
            missing = {r.task_id for r in waiting} - {e.uuid for e in seen if e.type == kind}
            assert not missing, f"{len(missing)} of 40 waiting tasks have no {kind}"
        assert next(e.type for e in seen if e.type.startswith("worker-")) == "worker-online"
    finally:
        a.close()


def test_worker_events_off_writes_nothing(redis_url: str, redis_client: Any) -> None:
    a = Machinery(broker=redis_url, result_backend=redis_url, default_queue="ev_off")
    a.events_config = EventsConfig(worker_events=False)
    _register(a)
    w = a.worker(concurrency=1, poll_timeout=0.1).start()
    try:
        assert a.send_task("add", args=[1]).get(timeout=10) == 1
    finally:
        w.stop(timeout=10)
        a.close()
    assert redis_client.exists("machinery_compat.events") == 0
    with pytest.raises(Exception, match="no event store"):
        next(Machinery(broker="memory://ev-none").events(timeout=0))


def test_the_redis_stream_packs_a_batch_per_entry_and_keeps_about_max_len_events(
        redis_client: Any) -> None:
    """One entry per written batch; the cap (``MAXLEN ~ max_len // n``) keeps about
    ``max_len`` events of batches of one size; ``limit`` counts events, not entries; entries
    of the older format (field ``e``: one event per line, or one event) are still read; an
    item or a line that is no event is skipped."""
    from machinery_compat.events.redis_store import RedisEventStore

    key = f"ev_stream_{uuid.uuid4().hex[:8]}"
    store = RedisEventStore(redis_client, 400, key=key)

    def events(start: int, n: int) -> list[Event]:
        return [Event("task-succeeded", 1000.0 + i, f"t{i}", "add", "q", "h", runtime=0.5)
                for i in range(start, start + n)]

    for b in range(100):  # compact task events, as the flusher writes them
        store.write(encode_batch([(e.type, e.timestamp, e.uuid, e.name, e.queue, e.hostname,
                                   e.runtime) for e in events(b * 50, 50)]), 50)
    # an entry of 50 events is bigger than a macro node (stream-node-max-bytes 4096): one
    # node each, so "~" trims to exactly 400 // 50 entries here
    assert redis_client.xlen(key) == 8
    kept = store.history()
    assert len(kept) == 400
    assert [e.uuid for e in kept[-3:]] == ["t4997", "t4998", "t4999"]
    entry_id = redis_client.xrevrange(key, count=1)[0][0].decode()
    assert kept[-1].id == entry_id and kept[-1].runtime == 0.5
    newest = store.history(limit=75)
    assert [e.uuid for e in newest] == [f"t{i}" for i in range(4925, 5000)]
    # entries written before batches were JSON arrays (field "e": one object per line)
    redis_client.xadd(key, {"e": events(7, 1)[0].to_json()})
    redis_client.xadd(key, {"e": "not json\n" + events(8, 1)[0].to_json()})
    # an item that is no event is skipped, the rest of its batch kept
    redis_client.xadd(key, {"j": b'[42,' + encode_batch(events(9, 1))[1:]})
    assert [e.uuid for e in store.history(limit=3)] == ["t7", "t8", "t9"]
    redis_client.delete(key)


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_worker_metrics_port_serves_prometheus_metrics(redis_url: str, redis_client: Any,
                                                       tmp_path: Path) -> None:
    queue = f"ev_m_{uuid.uuid4().hex[:6]}"
    cfg = tmp_path / "config.yml"
    cfg.write_text(f"broker: {redis_url}\nresult_backend: {redis_url}\ndefault_queue: {queue}\n")
    producer = Machinery(config=Config.from_yaml(str(cfg)))
    port = free_port()
    waiting = [producer.send_task("add", args=[i]) for i in range(3)]  # before the worker
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "machinery_compat", "worker", "-A",
         "tests.integration.test_events:app", "--config", str(cfg), "-c", "2",
         "-n", "metrics@test", "--metrics-port", str(port), "--metrics-address", "127.0.0.1"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "MACHINERY_COMPAT_WORKER_EVENTS": "1"})
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        def scraped() -> dict[str, float] | None:
            try:
                return _scrape(url)
            except OSError:
                assert proc.poll() is None, (tmp_path / "worker.log").read_text()
                return None

        wait_for(scraped, 30, "the metrics endpoint")
        assert [r.get(timeout=15) for r in waiting] == [0, 1, 2]
        bad = producer.send_task("boom")
        with pytest.raises(Exception, match="kaput"):
            bad.get(timeout=15)
        redis_client.rpush(queue + "_other", b"x")  # not the worker's queue: not shown
        labels = f'hostname="metrics@test",name="add",queue="{queue}"'

        def counted() -> dict[str, float] | None:
            m = _scrape(url)
            return m if m.get(f"machinery_task_succeeded_total{{{labels}}}") == 3 else None

        m = wait_for(counted, 10, "three succeeded tasks counted")
        assert m[f'machinery_task_failed_total{{hostname="metrics@test",name="boom",queue="{queue}"}}'] == 1
        assert m[f"machinery_task_started_total{{{labels}}}"] == 3
        assert m[f'machinery_task_runtime_seconds_count{{name="add",queue="{queue}"}}'] == 3
        assert m[f'machinery_task_runtime_seconds_bucket{{le="+Inf",name="add",queue="{queue}"}}'] == 3
        assert m['machinery_worker_up{hostname="metrics@test"}'] == 1
        assert m['machinery_worker_tasks_active{hostname="metrics@test"}'] == 0
        assert m["machinery_events_dropped_total"] == 0
        producer.send_task("add", args=[9], countdown=120)  # waits in delayed_tasks
        time.sleep(1.1)  # past the scrape cache of the broker's counts
        m = _scrape(url)
        assert m[f'machinery_queue_length{{queue="{queue}"}}'] == 0
        assert m["machinery_queue_delayed"] == 1
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
            producer.close()
    assert proc.returncode == 0, (tmp_path / "worker.log").read_text()
