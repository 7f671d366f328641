"""Google Cloud Pub/Sub emulator for tests: :class:`PubSubEmulator` (Google's in-memory fake
``pstest``, served on a port by ``interop/bin/pstest``) and the pubsub fixtures.

Go (Machinery's gcppubsub broker, ``cloud.google.com/go/pubsub``) and Python
(``google-cloud-pubsub``) clients reach it through ``PUBSUB_EMULATOR_HOST=127.0.0.1:PORT``,
which the session fixture sets while it runs.  Every project id exists on it without being
created, so each test takes a fresh one (:func:`pubsub_project`) instead of cleaning up::

    with PubSubEmulator() as ps:
        ps.create_topic("my-project", "machinery_tasks")
        ps.create_subscription("my-project", "workers", "machinery_tasks")

The binary is built with ``interop/build.sh`` (Go) when missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services._base import (
    LOOPBACK,
    STARTUP_TIMEOUT,
    ServiceError,
    ServiceUnavailable,
    _ServerProcess,
    _session_service,
    start_or_report,
)

INTEROP = Path(__file__).resolve().parents[2] / "interop"
PSTEST_BINARY = INTEROP / "bin" / "pstest"
#: The environment variable both Go's and Python's Pub/Sub clients read.
EMULATOR_ENV = "PUBSUB_EMULATOR_HOST"
#: The shortest ack deadline the fake accepts for a subscription (Pub/Sub's minimum).
MIN_ACK_DEADLINE = 10


def ensure_binary() -> Path:
    """``interop/bin/pstest``, built with ``interop/build.sh`` when missing."""
    if PSTEST_BINARY.exists():
        return PSTEST_BINARY
    if shutil.which("go") is None:
        raise ServiceUnavailable(f"{PSTEST_BINARY} is missing and go is not installed to build "
                                 "it (interop/build.sh)")
    done = subprocess.run([str(INTEROP / "build.sh")], capture_output=True, text=True,
                          timeout=600, check=False)
    if done.returncode != 0 or not PSTEST_BINARY.exists():
        raise ServiceError(f"interop/build.sh failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return PSTEST_BINARY


class PubSubEmulator(_ServerProcess):
    """``interop/bin/pstest`` on a free loopback port (:attr:`emulator_host`).  ``stop()`` /
    ``start()`` restart it on the same port with no state (everything is in memory)."""

    name = "pstest"

    def __init__(self, *, port: int | None = None, host: str = LOOPBACK,
                 startup_timeout: float = STARTUP_TIMEOUT, die_with_parent: bool = True) -> None:
        try:
            import google.cloud.pubsub_v1  # noqa: F401
        except ImportError as exc:
            raise ServiceUnavailable(
                f"google-cloud-pubsub is not installed ({exc}; pip install -e '.[dev]')") from exc
        self.binary = ensure_binary()
        self.host = host
        self._port = port
        self.startup_timeout = startup_timeout
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    @property
    def emulator_host(self) -> str:
        """``127.0.0.1:PORT``: the value of ``PUBSUB_EMULATOR_HOST``."""
        return f"{self.host}:{self.port}"

    url = emulator_host

    def _launch(self) -> None:
        self._spawn([str(self.binary), "-host", self.host, "-port", str(self.port)],
                    self._listening, "start listening")

    def _listening(self) -> bool:
        if "listening on" not in self.log_path.read_text(errors="replace"):
            return False
        socket.create_connection((self.host, self.port), timeout=1).close()
        return True

    # -- clients (they need PUBSUB_EMULATOR_HOST set to this emulator) ------------------
    def _env(self) -> None:
        if os.environ.get(EMULATOR_ENV) != self.emulator_host:
            raise ServiceError(f"{EMULATOR_ENV} must be {self.emulator_host} for this emulator's "
                               f"clients (the pubsub_emulator fixture sets it)")

    def publisher(self) -> Any:
        from google.cloud import pubsub_v1

        self._env()
        return pubsub_v1.PublisherClient()

    def subscriber(self) -> Any:
        from google.cloud import pubsub_v1

        self._env()
        return pubsub_v1.SubscriberClient()

    def create_topic(self, project: str, topic: str) -> str:
        """Create ``projects/<project>/topics/<topic>``; its path."""
        path = f"projects/{project}/topics/{topic}"
        self.publisher().create_topic(name=path, timeout=10)
        return path

    def create_subscription(self, project: str, subscription: str, topic: str,
                            ack_deadline: int = MIN_ACK_DEADLINE) -> str:
        """Create ``projects/<project>/subscriptions/<subscription>`` on ``topic``; its path."""
        path = f"projects/{project}/subscriptions/{subscription}"
        self.subscriber().create_subscription(
            name=path, topic=f"projects/{project}/topics/{topic}",
            ack_deadline_seconds=ack_deadline, timeout=10)
        return path

    def pull(self, project: str, subscription: str, max_messages: int = 100,
             ack: bool = True) -> list[Any]:
        """The messages waiting in a subscription (``ReceivedMessage`` objects), acked unless
        ``ack`` is false (then they stay leased until their ack deadline)."""
        sub = self.subscriber()
        path = f"projects/{project}/subscriptions/{subscription}"
        got = list(sub.pull(subscription=path, max_messages=max_messages, timeout=10)
                   .received_messages)
        if got and ack:
            sub.acknowledge(subscription=path, ack_ids=[m.ack_id for m in got], timeout=10)
        return got

    def depth(self, project: str, subscription: str) -> int | None:
        """How many messages wait in a subscription (pulled, then given back at once);
        ``None`` when it does not exist."""
        from google.api_core import exceptions as gx

        sub = self.subscriber()
        path = f"projects/{project}/subscriptions/{subscription}"
        got: list[Any] = []
        try:
            while True:
                batch = list(sub.pull(subscription=path, max_messages=1000, timeout=10)
                             .received_messages)
                if not batch:
                    break
                got += batch
        except gx.NotFound:
            return None
        if got:
            sub.modify_ack_deadline(subscription=path, ack_ids=[m.ack_id for m in got],
                                    ack_deadline_seconds=0, timeout=10)
        return len(got)


PUBSUB_FIXTURES = frozenset({"pubsub_emulator", "pubsub_project"})


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[PubSubEmulator]:
    """One Pub/Sub emulator for the session; ``PUBSUB_EMULATOR_HOST`` points at it while it
    runs (restored afterwards), so every client made meanwhile (the broker's, a Go program
    started with this environment) talks to it.  Tests isolate themselves by project."""
    server = start_or_report(PubSubEmulator)
    saved = os.environ.get(EMULATOR_ENV)
    os.environ[EMULATOR_ENV] = server.emulator_host
    try:
        with _session_service("pubsub_emulator", server):
            yield server
    finally:
        if saved is None:
            os.environ.pop(EMULATOR_ENV, None)
        else:
            os.environ[EMULATOR_ENV] = saved


@pytest.fixture
def pubsub_project(pubsub_emulator: PubSubEmulator) -> str:
    """A project id no other test used (cheap isolation on the shared emulator)."""
    if not pubsub_emulator.running:
        pubsub_emulator.start()
    return f"mc-{uuid.uuid4().hex[:16]}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test using one of PUBSUB_FIXTURES ``pubsub``."""
    for item in items:
        if PUBSUB_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.pubsub)
