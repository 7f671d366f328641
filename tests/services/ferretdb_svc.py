"""FerretDB for tests: :class:`FerretDBServer` (the MongoDB wire protocol, on FerretDB's SQLite
backend) and the MongoDB fixtures.

The tests of the MongoDB result backend run against FerretDB v1.24.2 with its SQLite backend
(no MongoDB server is installed here; production users run MongoDB).  The binary is built once
by ``scripts/build-ferretdb.sh`` into ``${MC_CACHE_DIR:-~/.cache/machinery_compat}/
ferretdb-v1.24.2/ferretdb`` (``make bootstrap`` runs it); ``FERRETDB_BIN`` names another one.

* ``ferretdb_server`` (session): one server for the whole session (tests/ and interop/tests);
* ``mongodb_database`` (function): a database name unique to the test (dropped afterwards);
* ``mongodb_url``: the server's ``mongodb://127.0.0.1:PORT/`` URL (the database is a config
  setting, ``mongodb.database``, as in Go: see :mod:`machinery_compat.backends.mongodb`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
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
    missing_service,
)

FERRETDB_VERSION = "v1.24.2"


def default_binary() -> Path:
    """Where ``scripts/build-ferretdb.sh`` puts the binary."""
    cache = os.environ.get("MC_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "machinery_compat")
    return Path(cache) / f"ferretdb-{FERRETDB_VERSION}" / "ferretdb"


class FerretDBServer(_ServerProcess):
    """A private FerretDB on a free loopback port, its SQLite files in a temp dir.

    ``start()`` waits until ``ping`` answers; after ``stop()`` it restarts on the same port with
    the same data.  :meth:`client` is a pymongo client on it.
    """

    name = "ferretdb"

    def __init__(self, *, binary: str | None = None, port: int | None = None,
                 host: str = LOOPBACK, startup_timeout: float = STARTUP_TIMEOUT,
                 die_with_parent: bool = True) -> None:
        path = Path(binary or os.environ.get("FERRETDB_BIN") or default_binary())
        if not (path.is_file() and os.access(path, os.X_OK)):
            found = shutil.which("ferretdb")
            if binary is None and not os.environ.get("FERRETDB_BIN") and found:
                path = Path(found)
            else:
                raise ServiceUnavailable(
                    f"ferretdb {FERRETDB_VERSION} not found at {path} (build it: "
                    "`bash scripts/build-ferretdb.sh`, run by `make bootstrap`)")
        try:
            import pymongo  # noqa: F401
        except ImportError as exc:
            raise ServiceUnavailable("pymongo is not installed (pip install -e '.[dev]')") from exc
        self.binary = str(path)
        self.host = host
        self._port = port
        self._fixed_port = port is not None
        self.startup_timeout = startup_timeout
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    def version(self) -> str:
        """``ferretdb --version``'s first line (``version: v1.24.2``)."""
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True,
                             timeout=30, check=False).stdout
        return out.splitlines()[0].split(":", 1)[-1].strip() if out else "?"

    def _launch(self) -> None:
        assert self._dir is not None
        (self._dir / "data").mkdir(exist_ok=True)
        self._spawn([self.binary, "--handler=sqlite", f"--sqlite-url=file:{self._dir / 'data'}/",
                     f"--listen-addr={self.host}:{self.port}", "--debug-addr=-",
                     "--telemetry=disable", f"--state-dir={self._dir}", "--log-level=warn"],
                    self._pings, "answer ping")

    def _pings(self) -> bool:
        try:
            with self.client(timeout_ms=500) as c:
                c.admin.command("ping")
        except Exception as exc:  # pymongo errors while it starts
            raise OSError(str(exc)) from exc
        return True

    def client(self, timeout_ms: int = 5000, **kwargs: Any) -> Any:
        """A pymongo ``MongoClient`` on this server (close it, or use it as a context)."""
        import pymongo

        return pymongo.MongoClient(self.url, serverSelectionTimeoutMS=timeout_ms,
                                   connectTimeoutMS=timeout_ms, **kwargs)

    def drop_database(self, name: str) -> None:
        with self.client() as c:
            c.drop_database(name)

MONGODB_FIXTURES = frozenset({"ferretdb_server", "mongodb_database", "mongodb_url"})


@pytest.fixture(scope="session")
def ferretdb_server() -> Iterator[FerretDBServer]:
    """One FerretDB for the whole session (shared by tests/ and interop/tests)."""
    try:
        server = FerretDBServer()
    except ServiceUnavailable as exc:
        missing_service(str(exc))
    server.start()
    with _session_service("ferretdb_server", server):
        yield server


@pytest.fixture
def mongodb_url(ferretdb_server: FerretDBServer) -> str:
    """The session server's URL (restarted first if a test stopped it)."""
    if not ferretdb_server.running:
        ferretdb_server.start()
    return ferretdb_server.url


@pytest.fixture
def mongodb_database(ferretdb_server: FerretDBServer, mongodb_url: str) -> Iterator[str]:
    """A database name unique to this test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    if ferretdb_server.running:
        ferretdb_server.drop_database(name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test using one of MONGODB_FIXTURES ``mongodb``."""
    for item in items:
        if MONGODB_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.mongodb)
