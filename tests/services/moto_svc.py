"""moto server (SQS, DynamoDB) for tests: :class:`MotoServer` and the aws fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    pass

from tests.services._base import (
    LOOPBACK,
    STARTUP_TIMEOUT,
    ServiceError,
    ServiceUnavailable,
    _ServerProcess,
    _session_service,
    start_or_report,
)

#: Dummy credentials and region for clients of a :class:`MotoServer` (moto accepts any).
AWS_TEST_ENV: dict[str, str] = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


#: How :class:`MotoServer` starts moto's server: ``python -m moto.server`` with one fix.  moto
#: 5's ReceiveMessage scans and marks a queue's messages without holding the queue's lock, so
#: two concurrent receivers (two workers) now and then both get the same message (about 1 in
#: 400 under 4 receiving threads), which SQS practically never does; tests asserting "ran once"
#: with competing workers would be flaky.  The scan runs under the queue's lock here (a
#: Condition on an RLock: a long poll's wait releases it, as before).
_MOTO_BOOTSTRAP = """
import sys
from moto.sqs import models

_receive = models.SQSBackend.receive_message


def receive_message(self, queue_name, *args, **kwargs):
    with self.get_queue(queue_name)._messages_lock:
        return _receive(self, queue_name, *args, **kwargs)


models.SQSBackend.receive_message = receive_message

# moto's threaded server checks a DynamoDB condition and then writes with nothing in between,
# so two racing conditional writes can both succeed; DynamoDB serializes writes to an item.
# moto also changes an item's attributes one by one, so a read racing an UpdateItem could see
# it half done (a SUCCESS without its Results); on DynamoDB one item's update is atomic: reads
# take the same lock.
import threading
from moto.dynamodb import models as dynamodb_models

_dynamodb_items = threading.RLock()


def _serialized(name):
    original = getattr(dynamodb_models.DynamoDBBackend, name)

    def write(self, *args, **kwargs):
        with _dynamodb_items:
            return original(self, *args, **kwargs)

    setattr(dynamodb_models.DynamoDBBackend, name, write)


for _name in ("put_item", "update_item", "delete_item", "transact_write_items",
              "batch_write_item", "get_item", "batch_get_item", "query", "scan"):
    _serialized(_name)
from moto.server import main

sys.exit(main(sys.argv[1:]))
"""


class MotoServer(_ServerProcess):
    """A private ``moto`` server (``python -m moto.server``) on a free loopback port,
    serving every AWS service moto emulates (SQS, DynamoDB, ...) at :attr:`endpoint_url`.
    Its SQS ReceiveMessage is made atomic per queue and its DynamoDB writes are serialized,
    as on AWS (see :data:`_MOTO_BOOTSTRAP`).

    * ``start()`` launches it and waits until ``/moto-api/`` answers; after ``stop()`` it
      starts again on the *same* port (with no state: moto keeps everything in memory).
    * ``reset()`` forgets every resource (``POST /moto-api/reset``) without a restart.
    * ``client(service)`` / ``resource(service)``: boto3 objects for this endpoint with
      :data:`AWS_TEST_ENV`'s dummy credentials and region (never the caller's real ones).
    * ``close()`` stops it and removes the temp dir holding ``moto.log``.
    """

    name = "moto"

    binary_name = "moto.server"

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = LOOPBACK,
        startup_timeout: float = STARTUP_TIMEOUT,
        die_with_parent: bool = True,
        python: str | None = None,
    ) -> None:
        try:
            import boto3  # noqa: F401
            import moto.server  # noqa: F401
        except ImportError as exc:
            raise ServiceUnavailable(
                f"moto[server] or boto3 is not installed ({exc}; pip install -e '.[dev]')"
            ) from exc
        self.python = python or sys.executable
        self.host = host
        self._port = port
        self._fixed_port = port is not None
        self.startup_timeout = startup_timeout
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    # -- addresses ---------------------------------------------------------
    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT`` (the endpoint for every service)."""
        return f"http://{self.host}:{self.port}"

    url = endpoint_url

    @property
    def region(self) -> str:
        return AWS_TEST_ENV["AWS_DEFAULT_REGION"]

    @property
    def dir(self) -> Path:
        if self._dir is None:
            raise ServiceError("MotoServer has no directory yet: call start() first")
        return self._dir

    @property
    def log_path(self) -> Path:
        return self.dir / "moto.log"

    def client_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``boto3.client(service, **kwargs)`` aimed at this server."""
        return {
            "endpoint_url": self.endpoint_url,
            "region_name": AWS_TEST_ENV["AWS_DEFAULT_REGION"],
            "aws_access_key_id": AWS_TEST_ENV["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": AWS_TEST_ENV["AWS_SECRET_ACCESS_KEY"],
        }

    def client(self, service: str, **kwargs: Any) -> Any:
        """A boto3 client for ``service`` on this server (dummy credentials)."""
        import boto3

        return boto3.session.Session().client(service, **{**self.client_kwargs(), **kwargs})

    def resource(self, service: str, **kwargs: Any) -> Any:
        """A boto3 resource for ``service`` on this server (dummy credentials)."""
        import boto3

        return boto3.session.Session().resource(service, **{**self.client_kwargs(), **kwargs})

    def _api(self, method: str, path: str, timeout: float = 5.0) -> bytes:
        import urllib.request

        request = urllib.request.Request(self.endpoint_url + path, method=method,
                                         data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read()
            return body

    def reset(self) -> None:
        """Forget every resource of every service (``POST /moto-api/reset``)."""
        self._api("POST", "/moto-api/reset")

    # -- lifecycle ---------------------------------------------------------
    def _launch(self) -> None:
        env = {**os.environ, **AWS_TEST_ENV}
        # moto's own stdout must not be buffered away from the log on a crash.
        env["PYTHONUNBUFFERED"] = "1"
        self._spawn([self.python, "-c", _MOTO_BOOTSTRAP, "-H", self.host, "-p", str(self.port)],
                    self._answers, "answer", cwd=self.dir, env=env)

    def _answers(self) -> bool:
        self._api("GET", "/moto-api/data.json", timeout=1.0)  # refused: URLError, an OSError
        return True


MOTO_FIXTURES = frozenset({"moto_server", "moto_endpoint"})


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server for the whole session.  While it runs, ``os.environ`` holds
    :data:`AWS_TEST_ENV`'s dummy credentials and region (restored afterwards), so any boto3
    client built from the default chain (the SQS broker's, a Go program started with this
    environment) signs with them and never with real credentials.  Tests share it: use
    unique queue/table names, or call ``moto_server.reset()``."""
    server = start_or_report(MotoServer)
    saved = {name: os.environ.get(name) for name in AWS_TEST_ENV}
    os.environ.update(AWS_TEST_ENV)
    try:
        with _session_service("moto_server", server):
            yield server
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def moto_endpoint(moto_server: MotoServer) -> str:
    """``http://127.0.0.1:PORT`` of the session moto server (started again if a test left
    it stopped; its state is not reset: use unique names)."""
    if not moto_server.running:
        moto_server.start()
    return moto_server.endpoint_url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test using one of MOTO_FIXTURES ``aws``."""
    for item in items:
        if MOTO_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.aws)
