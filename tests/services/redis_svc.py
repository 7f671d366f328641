"""redis-server for tests: :class:`RedisServer`, :class:`RedisTLSServer` and the redis fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import redis

from tests.services._base import (
    LOOPBACK,
    STARTUP_TIMEOUT,
    ServiceError,
    ServiceUnavailable,
    TLSFiles,
    _no_retry,
    _ServerProcess,
    _session_service,
    start_or_report,
)


class RedisServer(_ServerProcess):
    """A private ``redis-server`` on a free loopback port.

    * ``start()`` launches it (first call picks the port and a temp ``--dir``)
      and waits until ``PING`` answers; calling it again after ``stop()``
      restarts on the *same* port, so clients can reconnect after an outage.
    * ``stop()`` shuts down cleanly (``SHUTDOWN NOSAVE``, then SIGTERM/SIGKILL
      as fallbacks); ``kill()`` simulates a crash (SIGKILL).
    * ``close()`` stops and removes the temp dir; also ``with RedisServer():``.

    Data never persists across restarts (``--save '' --appendonly no``).
    With ``die_with_parent`` (default) Linux kills the server when the thread
    that started it exits: start servers from the main thread (or pass False).
    """

    name = "redis-server"

    binary_name = "redis-server"

    def __init__(
        self,
        *,
        binary: str | None = None,
        port: int | None = None,
        host: str = LOOPBACK,
        extra_args: Sequence[str] = (),
        startup_timeout: float = STARTUP_TIMEOUT,
        die_with_parent: bool = True,
    ) -> None:
        name = binary or os.environ.get("REDIS_SERVER_BIN") or self.binary_name
        found = shutil.which(name)
        if found is None:
            raise ServiceUnavailable(
                f"{name} not found on PATH (install it: `make bootstrap`, or "
                f"apt-get install -y redis-server)"
            )
        try:
            import redis  # noqa: F401
        except ImportError as exc:
            raise ServiceUnavailable("redis-py is not installed (pip install -e '.[dev]')") from exc
        self.binary = found
        self.host = host
        self._port = port
        self._fixed_port = port is not None
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    # -- addresses ---------------------------------------------------------
    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def url_for_db(self, db: int) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    @property
    def dir(self) -> Path:
        if self._dir is None:
            raise ServiceError("RedisServer has no directory yet: call start() first")
        return self._dir

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"


    def client(self, *, db: int = 0, **kwargs: Any) -> redis.Redis:
        """A new redis-py client for this server; the caller closes it."""
        import redis

        return redis.Redis(host=self.host, port=self.port, db=db,
                           **{**self._client_kwargs(), **kwargs})

    def _client_kwargs(self) -> dict[str, Any]:
        """Extra redis-py arguments the harness's own connections need (TLS)."""
        return {}

    # -- lifecycle ---------------------------------------------------------
    def _command(self) -> list[str]:
        return [
            self.binary,
            *self._listen_args(),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--dir", str(self.dir),
            *self.extra_args,
        ]  # fmt: skip

    def _listen_args(self) -> list[str]:
        return ["--port", str(self.port)]

    def _launch(self) -> None:
        self._spawn(self._command(), self._pings, "answer PING", cwd=self.dir)

    def _pings(self) -> bool:
        import redis

        try:
            with redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.5,
                             socket_timeout=0.5, retry=_no_retry(),
                             **self._client_kwargs()) as probe:
                return bool(probe.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            raise OSError(str(exc)) from exc

    def stop(self, timeout: float = 10.0) -> None:
        """Clean shutdown (SHUTDOWN NOSAVE); the port stays reserved for start()."""
        import redis

        if self._proc is None:
            return
        if self._proc.poll() is None:
            try:
                with redis.Redis(
                    host=self.host,
                    port=self.port,
                    socket_connect_timeout=1,
                    socket_timeout=2,
                    retry=_no_retry(),
                    **self._client_kwargs(),
                ) as admin:
                    admin.shutdown(nosave=True)
            except redis.RedisError:
                pass  # already going away, or unreachable: fall back to signals
        self._terminate(timeout)



class RedisTLSServer(RedisServer):
    """A private ``redis-server`` speaking TLS only (``--port 0 --tls-port PORT``) with the
    certificates of ``tls`` (:func:`make_tls_files`).  ``auth_clients=True`` makes it
    require a client certificate signed by that CA (``tls-auth-clients yes``).

    :attr:`url` is ``rediss://127.0.0.1:PORT/0?ssl_ca_certs=…`` (plus the client
    certificate and key when ``auth_clients``); :attr:`bare_url` has no query.
    """

    def __init__(self, tls: TLSFiles, *, auth_clients: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tls = tls
        self.auth_clients = auth_clients

    @property
    def bare_url(self) -> str:
        return f"rediss://{self.host}:{self.port}/0"

    @property
    def url(self) -> str:
        from urllib.parse import urlencode

        query = {"ssl_ca_certs": str(self.tls.ca)}
        if self.auth_clients:
            query |= {"ssl_certfile": str(self.tls.client_cert),
                      "ssl_keyfile": str(self.tls.client_key)}
        return f"{self.bare_url}?{urlencode(query, safe='/')}"

    def url_for_db(self, db: int) -> str:
        return self.url.replace(f":{self.port}/0?", f":{self.port}/{db}?", 1)

    def _listen_args(self) -> list[str]:
        return [
            "--port", "0",
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.tls.server_cert),
            "--tls-key-file", str(self.tls.server_key),
            "--tls-ca-cert-file", str(self.tls.ca),
            "--tls-auth-clients", "yes" if self.auth_clients else "no",
        ]  # fmt: skip

    def _client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"ssl": True, "ssl_ca_certs": str(self.tls.ca)}
        if self.auth_clients:
            kwargs |= {"ssl_certfile": str(self.tls.client_cert),
                       "ssl_keyfile": str(self.tls.client_key)}
        return kwargs

    def __repr__(self) -> str:
        return "<RedisTLSServer" + super().__repr__().removeprefix("<RedisServer")



#: DBs of the session redis-server: tests/ use 0..15 (``redis_url`` flushes those), suites
#: that keep their own DBs on the same server (interop/tests) use
#: ``SHARED_REDIS_DBS..SESSION_REDIS_DATABASES - 1``, which nothing here touches.
SESSION_REDIS_DATABASES = 128
SHARED_REDIS_DBS = 16

REDIS_FIXTURES = frozenset({"redis_server", "redis_url", "redis_client", "redis_server_factory"})


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the whole session, with :data:`SESSION_REDIS_DATABASES` DBs
    (restarted by redis_url if a test left it stopped).  Tests that stop/kill it should
    restart it, or use ``redis_server_factory`` for a private one."""
    server = start_or_report(
        lambda: RedisServer(extra_args=["--databases", str(SESSION_REDIS_DATABASES)]))
    with _session_service("redis_server", server):
        yield server


#: FLUSHDB of DBs 0..SHARED_REDIS_DBS-1 in one call (SELECT in a script stays in the script).
_FLUSH_SHARED_DBS = (f"for db = 0, {SHARED_REDIS_DBS - 1} do "
                     "redis.call('SELECT', db) redis.call('FLUSHDB') end")


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session server (``redis://127.0.0.1:PORT/0``), its DBs 0..15 flushed
    first (the DBs other suites keep on the server are left alone)."""
    if not redis_server.running:
        redis_server.start()
    with redis_server.client() as client:
        client.eval(_FLUSH_SHARED_DBS, 0)
    return redis_server.url


@pytest.fixture
def redis_client(redis_server: RedisServer, redis_url: str) -> Iterator[redis.Redis]:
    """A bytes-mode (decode_responses=False) client on the flushed session server."""
    client = redis_server.client(decode_responses=False)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[..., RedisServer]]:
    """Start private servers (``factory(**RedisServer_kwargs)``), closed at teardown.
    Use for outage tests so the shared session server is left alone."""
    servers: list[RedisServer] = []

    def factory(**kwargs: Any) -> RedisServer:
        server = start_or_report(lambda: RedisServer(**kwargs))
        servers.append(server)
        return server

    try:
        yield factory
    finally:
        for server in servers:
            server.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test using one of REDIS_FIXTURES ``redis``."""
    for item in items:
        if REDIS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)
