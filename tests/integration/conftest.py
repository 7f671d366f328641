"""Fixtures for the Redis integration tests: an app on the session redis-server."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from machinery_compat import Machinery
from machinery_compat.worker import Worker


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


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def _worker_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="machinery_compat")
