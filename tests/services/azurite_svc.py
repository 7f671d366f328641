"""Azurite (Microsoft's Azure Storage emulator, from npm) for tests: :class:`Azurite` runs its
queue service only (``azurite-queue``, in-memory persistence) on a free loopback port, and the
azure fixtures.

Clients reach it with the well-known development account (:data:`ACCOUNT`, :data:`KEY`, both
published by Microsoft), path style: ``http://127.0.0.1:PORT/devstoreaccount1``::

    with Azurite() as az:
        az.service().create_queue("machinery-tasks")

The binary is installed by ``scripts/install-services.sh`` (``npm install azurite@<pinned>``
into ``${MC_CACHE_DIR:-~/.cache/machinery_compat}/azurite-<version>/``); ``AZURITE_QUEUE``
names another ``azurite-queue`` executable, and one on ``PATH`` is used as a last resort.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services._base import (
    LOOPBACK,
    STARTUP_TIMEOUT,
    ServiceUnavailable,
    _ServerProcess,
    _session_service,
    start_or_report,
)

#: The azurite version scripts/install-services.sh installs (keep the two in step).
AZURITE_VERSION = "3.37.0"
#: Azure's published development-storage account and key (not a secret).
ACCOUNT = "devstoreaccount1"
KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")


def cache_dir() -> Path:
    base = os.environ.get("MC_CACHE_DIR") or str(Path.home() / ".cache" / "machinery_compat")
    return Path(base) / f"azurite-{AZURITE_VERSION}"


def find_binary() -> Path:
    """The ``azurite-queue`` executable: ``$AZURITE_QUEUE``, the install cache, ``PATH``."""
    given = os.environ.get("AZURITE_QUEUE")
    if given:
        return Path(given)
    cached = cache_dir() / "node_modules" / ".bin" / "azurite-queue"
    if cached.exists():
        return cached
    found = shutil.which("azurite-queue")
    if found:
        return Path(found)
    raise ServiceUnavailable(f"azurite-queue is not installed (expected {cached}; run "
                             "scripts/install-services.sh or make bootstrap)")


class Azurite(_ServerProcess):
    """``azurite-queue`` on a free loopback port.  ``stop()`` / ``start()`` restart it on the
    same port with no state (in-memory persistence)."""

    name = "azurite"

    def __init__(self, *, port: int | None = None, host: str = LOOPBACK,
                 startup_timeout: float = max(STARTUP_TIMEOUT, 30.0),
                 die_with_parent: bool = True) -> None:
        try:
            import azure.storage.queue  # noqa: F401
        except ImportError as exc:
            raise ServiceUnavailable(
                f"azure-storage-queue is not installed ({exc}; pip install -e '.[dev]')") from exc
        self.binary = find_binary()
        self.host = host
        self._port = port
        self._fixed_port = port is not None
        self.startup_timeout = startup_timeout
        self.die_with_parent = die_with_parent
        self._proc = None
        self._dir: Path | None = None

    @property
    def account_url(self) -> str:
        """``http://127.0.0.1:PORT/devstoreaccount1`` (path style)."""
        return f"http://{self.host}:{self.port}/{ACCOUNT}"

    @property
    def broker_url(self) -> str:
        """The ``azure://`` broker URL of this emulator (account and key in the URL)."""
        from urllib.parse import quote

        return f"azure://{ACCOUNT}:{quote(KEY, safe='')}@{self.host}:{self.port}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                f"QueueEndpoint={self.account_url};")

    url = broker_url

    def _launch(self) -> None:
        assert self._dir is not None
        self._spawn([str(self.binary), "--queueHost", self.host, "--queuePort", str(self.port),
                     "--inMemoryPersistence", "--extentMemoryLimit", "64", "--skipApiVersionCheck", "--loose",
                     "--disableTelemetry"],
                    self._listening, "start listening", cwd=self._dir)

    def _listening(self) -> bool:
        if "successfully listens on" not in self.log_path.read_text(errors="replace"):
            return False
        socket.create_connection((self.host, self.port), timeout=1).close()
        return True

    # -- clients ---------------------------------------------------------------------------
    def service(self) -> Any:
        """A ``QueueServiceClient`` on this emulator."""
        from azure.storage.queue import QueueServiceClient

        return QueueServiceClient(self.account_url, credential={"account_name": ACCOUNT,
                                                                "account_key": KEY})

    def queue(self, name: str) -> Any:
        """A ``QueueClient`` for ``name`` (no message encoding: the text as sent)."""
        return self.service().get_queue_client(name)

    def create_queue(self, name: str) -> Any:
        q = self.queue(name)
        q.create_queue()
        return q

    def peek_texts(self, name: str) -> list[str]:
        """The text of the visible messages of ``name`` (up to 32), without receiving them."""
        return [m.content for m in self.queue(name).peek_messages(max_messages=32)]

    def depth(self, name: str) -> int:
        """Azure's approximate message count of ``name`` (visible and invisible)."""
        return int(self.queue(name).get_queue_properties().approximate_message_count)


AZURE_FIXTURES = frozenset({"azurite", "azure_queue"})


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """One Azurite queue service for the session; tests isolate themselves by queue name."""
    server = start_or_report(Azurite)
    with _session_service("azurite", server):
        yield server


def fresh_queue_name(prefix: str = "mc") -> str:
    """A queue name no other test used: Azure's rule is 3-63 lowercase letters, digits and
    single hyphens, starting with a letter or digit."""
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


@pytest.fixture
def azure_queue(azurite: Azurite) -> str:
    """A fresh, not yet created queue name on the session's Azurite."""
    if not azurite.running:
        azurite.start()
    return fresh_queue_name()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test using one of AZURE_FIXTURES ``azure``."""
    for item in items:
        if AZURE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.azure)
