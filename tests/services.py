"""Real services for tests, started as subprocesses on free loopback ports.

Reusable from any conftest (``tests/``, ``interop/tests/``), benchmarks or
examples run from the repository root::

    from tests.services import RedisServer, free_port

    with RedisServer() as server:
        client = server.client()
        ...

The pytest fixtures (``redis_server``, ``redis_url``, ``redis_client``,
``redis_server_factory``) live at the bottom of this module; a conftest
re-exports them with::

    from tests.services import (  # noqa: F401
        redis_client, redis_server, redis_server_factory, redis_url,
    )

Missing services: :class:`ServiceUnavailable` is raised by the classes; the
fixtures turn it into ``pytest.skip`` locally and ``pytest.fail`` when the
``CI`` environment variable is ``true`` (a missing service is a failure
under CI, never a silent skip).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    import redis

__all__ = [
    "RedisServer",
    "ServiceError",
    "ServiceUnavailable",
    "free_port",
    "in_ci",
    "missing_service",
    "redis_client",
    "redis_server",
    "redis_server_factory",
    "redis_url",
    "start_or_report",
]

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT = float(os.environ.get("TEST_SERVICE_STARTUP_TIMEOUT", "15"))


class ServiceUnavailable(RuntimeError):
    """A service cannot run here at all (binary or client library missing)."""


class ServiceError(RuntimeError):
    """A service binary exists but failed to start or stop properly."""


def in_ci() -> bool:
    """True when running under CI (env ``CI`` is ``true``/``1``/``yes``)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def missing_service(reason: str) -> NoReturn:
    """Skip the current test locally; fail it under CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing service is a failure, not a skip)")
    pytest.skip(reason)


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on ``host`` a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent_prefix() -> list[str]:
    """A command prefix asking Linux to SIGTERM the child if the thread that started it dies
    (so a crashed or SIGKILLed pytest leaves no server behind): util-linux's
    ``setpriv --pdeathsig``.  Not a ``preexec_fn``: Python code run between fork and exec
    can deadlock in a process with threads (it hung CI once), ``setpriv`` cannot."""
    setpriv = shutil.which("setpriv")
    if not sys.platform.startswith("linux") or setpriv is None:
        return []
    return [setpriv, "--pdeathsig", "TERM", "--"]


def _no_retry() -> Any:
    """redis-py retries failed commands with backoff by default (seconds per
    call once the server is gone); the harness's own probes must not."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Retry(NoBackoff(), 0)


_live: weakref.WeakSet[RedisServer] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.close()


class RedisServer:
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
    def port(self) -> int:
        if self._port is None:
            raise ServiceError("RedisServer has no port yet: call start() first")
        return self._port

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

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client(self, *, db: int = 0, **kwargs: Any) -> redis.Redis:
        """A new redis-py client for this server; the caller closes it."""
        import redis

        return redis.Redis(host=self.host, port=self.port, db=db, **kwargs)

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> RedisServer:
        if self.running:
            return self
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="mc-redis-"))
        attempts = 1 if (self._fixed_port or self._port is not None) else 3
        for attempt in range(attempts):
            if self._port is None:
                self._port = free_port(self.host)
            try:
                self._launch()
                _live.add(self)
                return self
            except ServiceError:
                # Lost a race for a freshly picked port: pick another one.
                if attempt + 1 < attempts and "Address already in use" in self._log_tail():
                    self._port = None
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _command(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--dir", str(self.dir),
            *self.extra_args,
        ]  # fmt: skip

    def _launch(self) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"--- starting on port {self.port}\n".encode())
            log.flush()
            prefix = die_with_parent_prefix() if self.die_with_parent else []
            self._proc = subprocess.Popen(
                [*prefix, *self._command()],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready()
        except BaseException:
            self._terminate()
            raise

    def _wait_ready(self) -> None:
        import redis

        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServiceError(
                    f"redis-server exited with status {self._proc.returncode} while "
                    f"starting on port {self.port}; log:\n{self._log_tail()}"
                )
            try:
                with redis.Redis(
                    host=self.host,
                    port=self.port,
                    socket_connect_timeout=0.5,
                    socket_timeout=0.5,
                    retry=_no_retry(),
                ) as probe:
                    if probe.ping():
                        return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
                last_error = exc
            time.sleep(0.05)
        raise ServiceError(
            f"redis-server on port {self.port} did not answer PING within "
            f"{self.startup_timeout}s (last error: {last_error!r}); log:\n{self._log_tail()}"
        )

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
                ) as admin:
                    admin.shutdown(nosave=True)
            except redis.RedisError:
                pass  # already going away, or unreachable: fall back to signals
        self._terminate(timeout)

    def kill(self) -> None:
        """Abrupt crash (SIGKILL), to simulate a broker dying mid-operation."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self._terminate()

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def _terminate(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        """Stop the server and delete its temp dir."""
        self.stop()
        _live.discard(self)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, ServiceError):
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {self.host}:{self._port} {state}>"


def start_or_report(factory: Callable[[], RedisServer]) -> RedisServer:
    """Build and start a server; skip (locally) or fail (CI) if unavailable."""
    try:
        server = factory()
    except ServiceUnavailable as exc:
        missing_service(str(exc))
    return server.start()


# ---------------------------------------------------------------------------
# pytest fixtures (re-exported by tests/conftest.py; import them into any
# other conftest the same way)
# ---------------------------------------------------------------------------

REDIS_FIXTURES = frozenset({"redis_server", "redis_url", "redis_client", "redis_server_factory"})


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the whole session (restarted by redis_url if a
    test left it stopped). Tests that stop/kill it should restart it, or use
    ``redis_server_factory`` for a private one."""
    server = start_or_report(RedisServer)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session server (``redis://127.0.0.1:PORT/0``), FLUSHALLed first."""
    if not redis_server.running:
        redis_server.start()
    with redis_server.client() as client:
        client.flushall()
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
