"""memcached for tests: :class:`MemcachedServer`, :class:`MemcachedNodes` (three of them, the
pool a ``memcache://a,b,c`` URL names) and the memcache fixtures."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.services._base import (
    LOOPBACK,
    STARTUP_TIMEOUT,
    ServiceError,
    ServiceUnavailable,
    _ServerProcess,
    _session_service,
    missing_service,
)


class MemcachedServer(_ServerProcess):
    """A private ``memcached`` on a free loopback port (TCP only, 64 MB, one thread).

    ``start()`` waits until ``version`` answers; after ``stop()`` it restarts on the same port.
    :meth:`command` sends one raw protocol line and returns the reply (``flush_all``, ``mg``…).
    """

    name = "memcached"

    binary_name = "memcached"

    def __init__(self, *, binary: str | None = None, port: int | None = None,
                 host: str = LOOPBACK, startup_timeout: float = STARTUP_TIMEOUT,
                 die_with_parent: bool = True) -> None:
        name = binary or os.environ.get("MEMCACHED_BIN") or self.binary_name
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}")
                                       else None)
        if found is None:
            raise ServiceUnavailable(f"{name} not found on PATH (install it: `make bootstrap`, "
                                     "or apt-get install -y memcached)")
        try:
            import pymemcache  # noqa: F401
        except ImportError as exc:
            raise ServiceUnavailable("pymemcache is not installed (pip install -e '.[dev]')") from exc
        self.binary = found
        self.host = host
        self._port = port
        self._fixed_port = port is not None
        self.startup_timeout = startup_timeout
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"memcache://{self.address}"

    def _launch(self) -> None:
        # -u root: memcached refuses to run as root without it (CI runs as root)
        user = ["-u", "root"] if os.geteuid() == 0 else []
        self._spawn([self.binary, "-l", self.host, "-p", str(self.port), "-U", "0", "-m", "64",
                     "-t", "1", "-c", "256", *user],
                    lambda: self.command("version").startswith(b"VERSION"), "answer `version`")

    def command(self, line: str, timeout: float = 2.0) -> bytes:
        """Send one protocol line, return the reply up to its terminating line."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as s:
            s.sendall(line.encode() + b"\r\n")
            reply = b""
            while not _complete(line, reply):
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
            return reply

    def flush(self) -> None:
        if self.command("flush_all") != b"OK\r\n":
            raise ServiceError(f"memcached on port {self.port}: flush_all failed")

def _complete(line: str, reply: bytes) -> bool:
    """Whether ``reply`` holds the whole answer to ``line``: ``get`` ends with ``END``, a
    meta-get ``mg`` is ``EN``/``HD …`` or ``VA n …`` plus n bytes, others are one line."""
    if not reply.endswith(b"\r\n"):
        return False
    if line.startswith(("get ", "gets ")):
        return reply.endswith(b"END\r\n")
    head, _, rest = reply.partition(b"\r\n")
    if line.startswith("mg ") and head.startswith(b"VA "):
        return len(rest) >= int(head.split()[1]) + 2
    return True


class MemcachedNodes:
    """Several :class:`MemcachedServer` (3 by default) started together; :attr:`url` is
    ``memcache://a,b,c`` in their order (the order decides which node holds a key)."""

    def __init__(self, count: int = 3) -> None:
        self.nodes = [MemcachedServer() for _ in range(count)]

    @property
    def url(self) -> str:
        return "memcache://" + ",".join(n.address for n in self.nodes)

    @property
    def running(self) -> bool:
        return all(n.running for n in self.nodes)

    def start(self) -> MemcachedNodes:
        for n in self.nodes:
            n.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        for n in self.nodes:
            n.stop(timeout)

    def close(self) -> None:
        for n in self.nodes:
            n.close()

    def flush(self) -> None:
        for n in self.nodes:
            if not n.running:
                n.start()
            n.flush()

    def __repr__(self) -> str:
        return f"<MemcachedNodes {self.url}>"


MEMCACHE_FIXTURES = frozenset({"memcached_nodes", "memcache_url"})


@pytest.fixture(scope="session")
def memcached_nodes() -> Iterator[MemcachedNodes]:
    """Three memcached servers for the whole session (shared by tests/ and interop/tests)."""
    try:
        nodes = MemcachedNodes()
    except ServiceUnavailable as exc:
        missing_service(str(exc))
    nodes.start()
    with _session_service("memcached_nodes", nodes):  # type: ignore[type-var]
        yield nodes


@pytest.fixture
def memcache_url(memcached_nodes: MemcachedNodes) -> str:
    """``memcache://a,b,c`` of the session nodes, every node flushed first."""
    memcached_nodes.flush()
    return memcached_nodes.url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test using one of MEMCACHE_FIXTURES ``memcache``."""
    for item in items:
        if MEMCACHE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.memcache)
