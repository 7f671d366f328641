"""RabbitMQ restarts under load: a worker and producers on a private node ride through it.

Tasks and their queues are durable and persistent, so they survive the restart; a message
a worker held unacked when the connection dropped is redelivered (at-least-once), so a task
may run twice but none is lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from machinery_compat import Machinery
from machinery_compat.config import AMQPConfig, Config
from tests.helpers import wait_for
from tests.services import RabbitMQServer

pytestmark = pytest.mark.slow

N_TASKS = 1000
N_DURING = 100


def test_restart_while_1000_tasks_run_loses_nothing(
    rabbitmq_server_factory: Callable[..., RabbitMQServer], caplog: pytest.LogCaptureFixture
) -> None:
    node = rabbitmq_server_factory()
    cfg = Config(amqp=AMQPConfig(binding_key="machinery_tasks", prefetch_count=8))
    cfg.broker = cfg.result_backend = node.url
    app = Machinery(config=cfg, default_queue="machinery_tasks")
    seen: dict[int, int] = {}
    lock = threading.Lock()

    @app.task(name="work")
    def work(i: int) -> int:
        time.sleep(0.03)
        with lock:
            seen[i] = seen.get(i, 0) + 1
        return i

    for i in range(N_TASKS):  # queued first: sending is slower than running them
        app.send_task("work", args=[i])
    worker = app.worker(concurrency=4, poll_timeout=0.1)
    worker.start()
    try:
        wait_for(lambda: len(seen) >= N_TASKS // 4, timeout=60, what="a quarter processed")

        # producers keep sending while the node goes away and comes back
        sent_during: list[int] = []
        errors: list[BaseException] = []

        def produce() -> None:
            for i in range(N_TASKS, N_TASKS + N_DURING):
                try:
                    app.send_task("work", args=[i])
                    sent_during.append(i)
                except BaseException as e:  # pragma: no cover - reported below
                    errors.append(e)
                time.sleep(0.02)

        producer = threading.Thread(target=produce)
        producer.start()
        down_at = len(seen)  # processed when the restart began
        node.stop()
        time.sleep(1.0)
        node.start()
        producer.join(timeout=60)
        assert not errors, errors
        assert len(sent_during) == N_DURING

        total = N_TASKS + N_DURING
        wait_for(lambda: len(seen) == total, timeout=90, what="every task processed")
        assert set(seen) == set(range(total))
        assert down_at < N_TASKS * 0.75, "the restart began after most tasks ran: make them slower"
        assert all(t.is_alive() for t in worker._threads), "a worker thread exited"
        assert any("AMQP consumer connected" in r.getMessage() for r in caplog.records)
        # the worker goes on serving after the outage
        assert app.send_task("work", args=[-1]).get(timeout=20) == -1
    finally:
        worker.stop(timeout=20)
        app.close()
