"""Fixtures for the Redis integration tests: an app on the session redis-server.

``wait_for`` is :func:`tests.helpers.wait_for`, re-exported for the tests here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from machinery_compat import Machinery
from machinery_compat.worker import Worker
from tests.helpers import wait_for

__all__ = ["wait_for"]


@pytest.fixture
def app(redis_url: str) -> Machinery:
    return Machinery(broker=redis_url, result_backend=redis_url, default_queue="machinery_tasks")


@pytest.fixture
def start_worker(app: Machinery) -> Iterator[Callable[..., Worker]]:
    """Start workers (``start_worker(concurrency=2)``); all are stopped at teardown."""
    workers: list[Worker] = []

    def start(target: Machinery | None = None, **options: Any) -> Worker:
        options.setdefault("concurrency", 2)
        options.setdefault("poll_timeout", 0.1)
        options.setdefault("delayed_poll_interval", 0.05)
        w = (target or app).worker(**options).start()
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.stop(timeout=10)


@pytest.fixture
def start_any_worker() -> Iterator[Callable[..., Worker]]:
    """``start(app, **options)``: a worker of the app given (2 threads, 0.2 s polls unless
    told), for the broker modules that build their own apps (SQS, Pub/Sub, Azure); all are
    stopped at teardown."""
    workers: list[Worker] = []

    def start(target: Machinery, **options: Any) -> Worker:
        options.setdefault("concurrency", 2)
        options.setdefault("poll_timeout", 0.2)
        w = target.worker(**options).start()
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.stop(timeout=15)


@pytest.fixture(autouse=True)
def _worker_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="machinery_compat")
