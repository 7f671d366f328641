"""Real services for tests, started as subprocesses on free loopback ports.

Reusable from any conftest (``tests/``, ``interop/tests/``), benchmarks or
examples run from the repository root::

    from tests.services import RedisServer, free_port

    with RedisServer() as server:
        client = server.client()
        ...

    with RabbitMQServer() as node:           # its own Erlang node, port, data dir
        url = node.url                       # amqp://guest:guest@127.0.0.1:PORT/
        node.ctl("list_queues", "name", "arguments")

The pytest fixtures (``redis_server``, ``redis_url``, ``redis_client``,
``redis_server_factory``; ``rabbitmq_server``, ``rabbitmq_url``,
``rabbitmq_vhost_url``, ``rabbitmq_restart``, ``rabbitmq_server_factory``;
``moto_server``, ``moto_endpoint``) live at the bottom of this module, which is a pytest
plugin: the repository's root ``conftest.py`` registers it (``pytest_plugins``), so every
test tree (``tests/``, ``interop/tests/``) of a session gets the same session servers: ONE
redis-server (:data:`SESSION_REDIS_DATABASES` DBs: ``tests/`` use 0..15, interop/tests the
rest), ONE RabbitMQ node (``tests/`` use fresh vhosts, interop/tests its own traced vhost,
:meth:`RabbitMQServer.ensure_vhost`) and ONE moto server (unique queue/table names).  Do not
import the fixtures into a conftest: that would define them a second time, and start a
second server of each for the tests below it.

AWS: :class:`MotoServer` runs ``moto[server]`` (SQS, DynamoDB, ...) on a free port; every
client pointed at :attr:`MotoServer.endpoint_url` with dummy credentials talks to it::

    with MotoServer() as moto:
        sqs = moto.client("sqs")             # boto3, region us-east-1, keys "testing"
        moto.reset()                         # POST /moto-api/reset: forget every resource

TLS: :func:`make_tls_files` writes a throwaway CA with a server certificate for
127.0.0.1/localhost and a client certificate; :class:`RedisTLSServer` speaks TLS only
(``rediss://``), ``RabbitMQServer(tls=files)`` adds an ``amqps://`` listener on a second port::

    files = make_tls_files(tmp_path)
    with RedisTLSServer(files, auth_clients=True) as server:
        url = server.url                     # rediss://127.0.0.1:PORT/0?ssl_ca_certs=...

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
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, Self, TypeVar

import pytest

if TYPE_CHECKING:
    import amqp
    import redis

__all__ = [
    "AWS_TEST_ENV",
    "MotoServer",
    "RabbitMQServer",
    "RedisServer",
    "RedisTLSServer",
    "ServiceError",
    "ServiceUnavailable",
    "TLSFiles",
    "free_port",
    "in_ci",
    "make_tls_files",
    "missing_service",
    "moto_endpoint",
    "moto_server",
    "rabbitmq_restart",
    "rabbitmq_server",
    "rabbitmq_server_factory",
    "rabbitmq_url",
    "rabbitmq_vhost_url",
    "redis_client",
    "redis_server",
    "redis_server_factory",
    "redis_url",
    "start_or_report",
]

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT = float(os.environ.get("TEST_SERVICE_STARTUP_TIMEOUT", "15"))
#: An Erlang node takes ~7 s to boot on the 2-core CI machine; give it room.
RABBITMQ_STARTUP_TIMEOUT = float(os.environ.get("TEST_RABBITMQ_STARTUP_TIMEOUT", "90"))


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


_live: weakref.WeakSet[RedisServer | RabbitMQServer | MotoServer] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.close()


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of a throwaway CA (:func:`make_tls_files`)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path, name: str = "mc-test") -> TLSFiles:
    """A new CA (EC P-256, valid for a day) in ``directory``, with a server certificate for
    ``127.0.0.1``/``localhost`` and a client certificate, all signed by it."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:
        raise ServiceUnavailable(
            "cryptography is not installed (pip install -e '.[dev]')"
        ) from exc
    import datetime
    import ipaddress

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))
        path.chmod(0o600)

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None,
             issuer_key: ec.EllipticCurvePrivateKey | None, *, ca: bool = False,
             usage: x509.ObjectIdentifier | None = None,
             sans: Sequence[x509.GeneralName] = ()) -> x509.Certificate:
        subject_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject_name)
            .issuer_name(issuer or subject_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        if usage is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)),
                                            critical=False)
        return builder.sign(issuer_key or key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert(f"{name} CA", ca_key, None, None, ca=True)
    files = TLSFiles(*(directory / f for f in (
        "ca.pem", "server.pem", "server.key", "client.pem", "client.key")))
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for cert_path, key_path, subject, usage, sans in (
        (files.server_cert, files.server_key, f"{name} server", ExtendedKeyUsageOID.SERVER_AUTH,
         [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]),
        (files.client_cert, files.client_key, f"{name} client", ExtendedKeyUsageOID.CLIENT_AUTH,
         []),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        write_key(key, key_path)
        leaf = cert(subject, key, ca_cert.subject, ca_key, usage=usage, sans=sans)
        cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    return files


class _ServerProcess:
    """What every service subprocess shares: its process, liveness, abrupt kill and reaping
    (``_proc`` is set by the subclass's ``start``; ``close`` stops it and removes its files)."""

    _proc: subprocess.Popen[bytes] | None = None
    #: seconds between SIGTERM and SIGKILL when a stop did not end the process
    _TERM_GRACE = 5.0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """Abrupt crash (SIGKILL), to simulate a service dying mid-operation."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self._terminate()

    def _terminate(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=self._TERM_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    host: str
    _port: int | None
    #: the temp dir holding its files (set by ``start``), removed by ``close``
    _dir: Path | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self, timeout: float = 10.0) -> None:
        raise NotImplementedError

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    def restart(self) -> Self:
        self.stop()
        return self.start()

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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self._port} {state}>"


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


    def client(self, *, db: int = 0, **kwargs: Any) -> redis.Redis:
        """A new redis-py client for this server; the caller closes it."""
        import redis

        return redis.Redis(host=self.host, port=self.port, db=db,
                           **{**self._client_kwargs(), **kwargs})

    def _client_kwargs(self) -> dict[str, Any]:
        """Extra redis-py arguments the harness's own connections need (TLS)."""
        return {}

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
                    **self._client_kwargs(),
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


RABBITMQ_LIB_BIN = Path("/usr/lib/rabbitmq/bin")


def _rabbitmq_script(name: str, env_var: str) -> str | None:
    """Debian's /usr/sbin/rabbitmq-* wrappers `su` to the rabbitmq user and write to
    /var/lib/rabbitmq; the scripts behind them run as the caller with our own dirs."""
    configured = os.environ.get(env_var)
    if configured:
        return shutil.which(configured)
    direct = RABBITMQ_LIB_BIN / name
    if direct.is_file() and os.access(direct, os.X_OK):
        return str(direct)
    return shutil.which(name)


class RabbitMQServer(_ServerProcess):
    """A private RabbitMQ node (Debian's ``rabbitmq-server``) on free loopback ports.

    Its own Erlang node name (``mc-<port>@localhost``), AMQP port, distribution port and
    epmd port, its own Mnesia/log/config/cookie under a temp dir, no plugins; nothing of
    the system service (``/var/lib/rabbitmq``, ``/etc/rabbitmq``) is used or touched.

    * ``start()`` boots it and waits until an AMQP connection succeeds; after ``stop()``
      it restarts on the *same* ports with the same data (durable queues and persistent
      messages survive, as on a real restart).
    * ``stop()``: ``rabbitmqctl stop``, then SIGTERM/SIGKILL as fallbacks; ``kill()``
      simulates a crash (SIGKILL); ``restart()``; ``close()`` also stops its epmd and
      removes the temp dir (also ``with RabbitMQServer():``).
    * ``ctl(*args)`` runs ``rabbitmqctl -n <node> ...`` and returns its stdout;
      ``queues(vhost)`` lists ``name``/``arguments``/``messages``/... as dicts (the
      arguments keep RabbitMQ's field-table types: ``long``, ``signedint``, ``longstr``).
    * ``new_vhost()`` returns a fresh, empty virtual host guest may use (created in
      batches, so a test pays ~nothing for isolation); ``url_for(vhost)`` its URL.
    * ``tls=make_tls_files(dir)`` adds an ``amqps`` listener on a second free port
      (``tls_port``, ``tls_url_for(vhost)``) with that CA's server certificate;
      ``tls_client_certs=True`` makes it require a client certificate signed by the CA.
    """

    binary_name = "rabbitmq-server"

    _TERM_GRACE = 10.0  # an Erlang VM can take a while to go

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = LOOPBACK,
        config_lines: Sequence[str] = (),
        startup_timeout: float = RABBITMQ_STARTUP_TIMEOUT,
        die_with_parent: bool = True,
        tls: TLSFiles | None = None,
        tls_client_certs: bool = False,
    ) -> None:
        server = _rabbitmq_script(self.binary_name, "RABBITMQ_SERVER_BIN")
        ctl = _rabbitmq_script("rabbitmqctl", "RABBITMQCTL_BIN")
        if server is None or ctl is None:
            raise ServiceUnavailable(
                "rabbitmq-server not found (install it: `make bootstrap`, or "
                "apt-get install -y rabbitmq-server)"
            )
        try:
            import amqp  # noqa: F401
        except ImportError as exc:
            raise ServiceUnavailable("py-amqp is not installed (pip install -e '.[dev]')") from exc
        self.server_script = server
        self.ctl_script = ctl
        self.epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        self.host = host
        self._port = port
        self._dist_port: int | None = None
        self._epmd_port: int | None = None
        self.config_lines = tuple(config_lines)
        self.startup_timeout = startup_timeout
        self.die_with_parent = die_with_parent
        self.tls = tls
        self.tls_client_certs = tls_client_certs
        self._tls_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._epmd_proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._vhost_lock = threading.Lock()
        self._vhost_pool: list[str] = []
        self._vhosts_used: list[str] = []
        self._vhost_serial = 0

    # -- addresses ---------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise ServiceError("RabbitMQServer has no port yet: call start() first")
        return self._port

    @property
    def dist_port(self) -> int:
        if self._dist_port is None:
            raise ServiceError("RabbitMQServer has no distribution port yet: call start() first")
        return self._dist_port

    @property
    def epmd_port(self) -> int:
        if self._epmd_port is None:
            raise ServiceError("RabbitMQServer has no epmd port yet: call start() first")
        return self._epmd_port

    @property
    def node(self) -> str:
        """The Erlang node name (``mc-<port>@localhost``)."""
        return f"mc-{self.port}@localhost"

    @property
    def url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:PORT/`` (the default vhost ``/``)."""
        return f"amqp://guest:guest@{self.host}:{self.port}/"

    def url_for(self, vhost: str) -> str:
        """The URL of ``vhost`` (percent-encoded as Go's amqp.ParseURI and kombu expect)."""
        from urllib.parse import quote

        return f"amqp://guest:guest@{self.host}:{self.port}/{quote(vhost, safe='')}"

    @property
    def tls_port(self) -> int:
        """The ``amqps`` listener's port (a node started with ``tls=``)."""
        if self._tls_port is None:
            raise ServiceError("RabbitMQServer has no TLS port: start it with tls=make_tls_files(...)")
        return self._tls_port

    def tls_url_for(self, vhost: str = "/") -> str:
        """``amqps://guest:guest@127.0.0.1:TLS_PORT/<vhost>`` (vhost percent-encoded)."""
        from urllib.parse import quote

        return f"amqps://guest:guest@{self.host}:{self.tls_port}/{quote(vhost, safe='')}"

    @property
    def dir(self) -> Path:
        if self._dir is None:
            raise ServiceError("RabbitMQServer has no directory yet: call start() first")
        return self._dir

    @property
    def log_path(self) -> Path:
        return self.dir / "log" / f"{self.node}.log"

    @property
    def console_path(self) -> Path:
        return self.dir / "console.log"


    def connection(self, vhost: str = "/", **kwargs: Any) -> amqp.Connection:
        """A new, connected py-amqp connection (guest); the caller closes it."""
        import amqp

        kwargs.setdefault("connect_timeout", 2)
        conn = amqp.Connection(
            host=f"{self.host}:{self.port}",
            userid="guest",
            password="guest",
            virtual_host=vhost,
            **kwargs,
        )
        conn.connect()
        return conn

    # -- environment -------------------------------------------------------
    def _env(self) -> dict[str, str]:
        d = self.dir
        env = dict(os.environ)
        env.update(
            HOME=str(d),  # the Erlang cookie lives here, shared by server and CLI
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_USE_LONGNAME="false",
            RABBITMQ_NODE_IP_ADDRESS=self.host,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_LOGS=str(self.log_path),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq"),  # .conf appended
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_PID_FILE=str(d / "rabbitmq.pid"),
        )
        env.pop("RABBITMQ_ENABLED_PLUGINS", None)
        return env

    def _write_config(self) -> None:
        d = self.dir
        (d / "log").mkdir(exist_ok=True)
        (d / "mnesia").mkdir(exist_ok=True)
        (d / "enabled_plugins").write_text("[].\n")
        (d / "rabbitmq-env.conf").write_text("")
        (d / "advanced.config").write_text("[].\n")
        lines = [
            f"listeners.tcp.default = {self.host}:{self.port}",
            "loopback_users.guest = true",
            "disk_free_limit.absolute = 1MB",
            "log.console = false",
            "log.file.level = info",
            *self._tls_config_lines(),
            *self.config_lines,
        ]
        (d / "rabbitmq.conf").write_text("\n".join(lines) + "\n")

    def _tls_config_lines(self) -> list[str]:
        if self.tls is None:
            return []
        verify = "verify_peer" if self.tls_client_certs else "verify_none"
        return [
            f"listeners.ssl.default = {self.host}:{self.tls_port}",
            f"ssl_options.cacertfile = {self.tls.ca}",
            f"ssl_options.certfile = {self.tls.server_cert}",
            f"ssl_options.keyfile = {self.tls.server_key}",
            f"ssl_options.verify = {verify}",
            f"ssl_options.fail_if_no_peer_cert = {str(self.tls_client_certs).lower()}",
        ]

    # -- control -----------------------------------------------------------
    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        """``rabbitmqctl -n <node> <args>``; returns stdout (ServiceError when it fails)."""
        proc = subprocess.run(
            [self.ctl_script, "-n", self.node, "-q", *args],
            env=self._env(),
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise ServiceError(
                f"rabbitmqctl {' '.join(args)} exited with {proc.returncode}: "
                f"{proc.stderr.decode(errors='replace')}{proc.stdout.decode(errors='replace')}"
            )
        return proc.stdout.decode(errors="replace")

    def queues(self, vhost: str = "/", columns: Sequence[str] = ("name", "arguments")) -> list[dict[str, Any]]:
        """``rabbitmqctl list_queues`` as dicts (JSON formatter).  ``arguments`` is a list
        of ``[name, type, value]`` with RabbitMQ's field-table type names (``long`` = AMQP
        ``l``, ``signedint`` = ``I``, ``longstr`` = ``S``)."""
        import json

        out = self.ctl("list_queues", "-p", vhost, "--formatter", "json", *columns)
        rows: list[dict[str, Any]] = json.loads(out or "[]")
        return rows

    def new_vhost(self) -> str:
        """A fresh, empty virtual host with full permissions for guest.  Vhosts are made
        (and the ones handed out before are deleted) 25 at a time in one ``rabbitmqctl
        eval``, so per-test isolation costs ~40 ms a test instead of ~1 s."""
        with self._vhost_lock:
            if not self._vhost_pool:
                fresh = []
                for _ in range(25):
                    self._vhost_serial += 1
                    fresh.append(f"t{self._vhost_serial}")
                self._refill_vhosts(fresh, self._vhosts_used)
                self._vhosts_used = []
                self._vhost_pool = fresh
            vhost = self._vhost_pool.pop(0)
            self._vhosts_used.append(vhost)
            return vhost

    def ensure_vhost(self, name: str) -> str:
        """Create the virtual host ``name`` (full permissions for guest) unless it exists, and
        return it (one ``rabbitmqctl eval``).  Unlike :meth:`new_vhost`'s, it is never deleted by this class: for a
        suite that keeps one vhost for its whole run on a shared node (interop/tests)."""
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise ValueError(f"vhost name {name!r}: use letters, digits, '-', '_' and '.'")
        self.ctl("eval", (
            f"rabbit_vhost:add(<<\"{name}\">>, <<\"tests\">>), "
            f"rabbit_auth_backend_internal:set_permissions(<<\"guest\">>, <<\"{name}\">>, "
            f"<<\".*\">>, <<\".*\">>, <<\".*\">>, <<\"tests\">>), ok."))
        return name

    def _refill_vhosts(self, add: Sequence[str], delete: Sequence[str]) -> None:
        def erl_list(names: Sequence[str]) -> str:
            return "[" + ",".join(f'<<"{n}">>' for n in names) + "]"

        script = (
            f"[rabbit_vhost:delete(V, <<\"tests\">>) || V <- {erl_list(delete)}], "
            f"[begin rabbit_vhost:add(V, <<\"tests\">>), "
            f"rabbit_auth_backend_internal:set_permissions(<<\"guest\">>, V, <<\".*\">>, "
            f"<<\".*\">>, <<\".*\">>, <<\"tests\">>) end || V <- {erl_list(add)}], ok."
        )
        self.ctl("eval", script)

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> RabbitMQServer:
        if self.running:
            return self
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="mc-rabbitmq-"))
        if self._port is None:
            self._port = free_port(self.host)
        if self._dist_port is None:
            self._dist_port = free_port(self.host)
        if self._epmd_port is None:
            self._epmd_port = free_port(self.host)
        if self.tls is not None and self._tls_port is None:
            self._tls_port = free_port(self.host)
        self._write_config()
        self._start_epmd()
        self._launch()
        _live.add(self)
        return self

    def _start_epmd(self) -> None:
        """The node's own epmd, as a child of this process (the node would otherwise start
        a daemonized one that outlives a killed test run)."""
        if self._epmd_proc is not None and self._epmd_proc.poll() is None:
            return
        prefix = die_with_parent_prefix() if self.die_with_parent else []
        with open(self.dir / "epmd.log", "ab") as log:
            self._epmd_proc = subprocess.Popen(
                [*prefix, self.epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                cwd=self.dir, env=self._env(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((LOOPBACK, self.epmd_port), timeout=0.5).close()
                return
            except OSError:
                if self._epmd_proc.poll() is not None or time.monotonic() > deadline:
                    raise ServiceError(f"epmd did not start on port {self.epmd_port}: "
                                       f"{(self.dir / 'epmd.log').read_text(errors='replace')}") from None
                time.sleep(0.02)

    def _launch(self) -> None:
        with open(self.console_path, "ab") as log:
            log.write(f"--- starting {self.node} on port {self.port}\n".encode())
            log.flush()
            prefix = die_with_parent_prefix() if self.die_with_parent else []
            self._proc = subprocess.Popen(
                [*prefix, self.server_script],
                cwd=self.dir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready()
        except BaseException:
            self._terminate(timeout=5)
            raise

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServiceError(
                    f"rabbitmq-server exited with status {self._proc.returncode} while "
                    f"starting {self.node} on port {self.port}; log:\n{self._log_tail()}"
                )
            try:
                conn = self.connection(connect_timeout=1)
            except Exception as exc:  # refused, reset, or "not yet ready" during boot
                last_error = exc
            else:
                conn.close()
                return
            time.sleep(0.2)
        raise ServiceError(
            f"rabbitmq-server {self.node} did not accept AMQP connections on port {self.port} "
            f"within {self.startup_timeout}s (last error: {last_error!r}); log:\n{self._log_tail()}"
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Clean shutdown (``rabbitmqctl stop``); ports and data stay for start()."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            with contextlib.suppress(ServiceError, subprocess.TimeoutExpired, OSError):
                self.ctl("stop", timeout=timeout)
        self._terminate(timeout)

    def _stop_epmd(self) -> None:
        proc, self._epmd_proc = self._epmd_proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return
        if self._epmd_port is None or self._dir is None:
            return
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [self.epmd, "-port", str(self._epmd_port), "-kill"],
                env=self._env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=10,
                check=False,
            )

    def close(self) -> None:
        """Stop the node and its epmd, and delete the temp dir."""
        self.stop()
        self._stop_epmd()
        _live.discard(self)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _log_tail(self, lines: int = 30) -> str:
        parts = []
        for path in (self.console_path, self.log_path):
            try:
                text = path.read_text(errors="replace")
            except (OSError, ServiceError):
                continue
            parts.append(f"[{path.name}]\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts) or "<no log>"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RabbitMQServer {self._port and self.node} {self.host}:{self._port} {state}>"


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
import threading
from moto.dynamodb import models as dynamodb_models

_dynamodb_writes = threading.RLock()


def _serialized(name):
    original = getattr(dynamodb_models.DynamoDBBackend, name)

    def write(self, *args, **kwargs):
        with _dynamodb_writes:
            return original(self, *args, **kwargs)

    setattr(dynamodb_models.DynamoDBBackend, name, write)


for _name in ("put_item", "update_item", "delete_item", "transact_write_items",
              "batch_write_item"):
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
    def port(self) -> int:
        if self._port is None:
            raise ServiceError("MotoServer has no port yet: call start() first")
        return self._port

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
    def start(self) -> MotoServer:
        if self.running:
            return self
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="mc-moto-"))
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

    def _launch(self) -> None:
        env = {**os.environ, **AWS_TEST_ENV}
        # moto's own stdout must not be buffered away from the log on a crash.
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "ab") as log:
            log.write(f"--- starting on port {self.port}\n".encode())
            log.flush()
            prefix = die_with_parent_prefix() if self.die_with_parent else []
            self._proc = subprocess.Popen(
                [*prefix, self.python, "-c", _MOTO_BOOTSTRAP,
                 "-H", self.host, "-p", str(self.port)],
                cwd=self.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready()
        except BaseException:
            self._terminate(timeout=5)
            raise

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServiceError(
                    f"moto server exited with status {self._proc.returncode} while "
                    f"starting on port {self.port}; log:\n{self._log_tail()}"
                )
            try:
                self._api("GET", "/moto-api/data.json", timeout=1.0)
            except OSError as exc:  # refused while booting (urllib's URLError is an OSError)
                last_error = exc
            else:
                return
            time.sleep(0.05)
        raise ServiceError(
            f"moto server on port {self.port} did not answer within {self.startup_timeout}s "
            f"(last error: {last_error!r}); log:\n{self._log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (moto has no shutdown API); the port stays reserved for start()."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
        self._terminate(timeout)



class _Startable(Protocol):
    def start(self) -> Any: ...


_S = TypeVar("_S", bound=_Startable)
_SV = TypeVar("_SV", bound=_ServerProcess)


def start_or_report(factory: Callable[[], _S]) -> _S:
    """Build and start a server; skip (locally) or fail (CI) if unavailable."""
    try:
        server = factory()
    except ServiceUnavailable as exc:
        missing_service(str(exc))
    server.start()
    return server


# ---------------------------------------------------------------------------
# pytest plugin: the session fixtures and the marker hook.  The repository's
# root conftest.py registers this module (``pytest_plugins``), so tests/ and
# interop/tests/ share ONE redis-server, ONE RabbitMQ node and ONE moto server
# per session.  Do not import these fixtures into a conftest: a second
# definition would start a second server for the tests below that conftest.
# ---------------------------------------------------------------------------

#: DBs of the session redis-server: tests/ use 0..15 (``redis_url`` flushes those), suites
#: that keep their own DBs on the same server (interop/tests) use
#: ``SHARED_REDIS_DBS..SESSION_REDIS_DATABASES - 1``, which nothing here touches.
SESSION_REDIS_DATABASES = 128
SHARED_REDIS_DBS = 16

#: How many times each session fixture (``redis_server``, ``rabbitmq_server``,
#: ``moto_server``) started its server in this process: 1 each when every test tree of the
#: session shares them (checked by interop/tests/test_interop_services.py).
session_starts: dict[str, int] = {}
#: The servers those session fixtures yielded, by fixture name (while they run).
session_servers: dict[str, RedisServer | RabbitMQServer | MotoServer] = {}


@contextlib.contextmanager
def _session_service(name: str, server: _SV) -> Iterator[_SV]:
    session_starts[name] = session_starts.get(name, 0) + 1
    session_servers[name] = server
    try:
        yield server
    finally:
        session_servers.pop(name, None)
        server.close()


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


RABBITMQ_FIXTURES = frozenset({
    "rabbitmq_server", "rabbitmq_url", "rabbitmq_vhost_url", "rabbitmq_restart",
    "rabbitmq_server_factory",
})


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[RabbitMQServer]:
    """One RabbitMQ node for the whole session (~7 s to boot).  Tests that stop it use
    ``rabbitmq_restart``; outage tests that must not disturb others use
    ``rabbitmq_server_factory``."""
    server = start_or_report(RabbitMQServer)
    with _session_service("rabbitmq_server", server):
        yield server


@pytest.fixture(scope="session")
def rabbitmq_url(rabbitmq_server: RabbitMQServer) -> str:
    """``amqp://guest:guest@127.0.0.1:PORT/`` of the session node (vhost ``/``, shared by
    every test: use unique queue names, or ``rabbitmq_vhost_url``)."""
    return rabbitmq_server.url


@pytest.fixture
def rabbitmq_vhost_url(rabbitmq_server: RabbitMQServer) -> str:
    """The URL of a fresh, empty vhost on the session node (per-test isolation)."""
    if not rabbitmq_server.running:
        rabbitmq_server.start()
    return rabbitmq_server.url_for(rabbitmq_server.new_vhost())


@pytest.fixture
def rabbitmq_restart(rabbitmq_server: RabbitMQServer) -> Iterator[Callable[..., None]]:
    """``rabbitmq_restart(down_for=0.0, kill=False)`` stops the session node (cleanly, or
    SIGKILL with ``kill=True``), waits ``down_for`` seconds and starts it again on the same
    port with the same data.  The node is running again after the test in any case."""

    def restart(down_for: float = 0.0, kill: bool = False) -> None:
        if kill:
            rabbitmq_server.kill()
        else:
            rabbitmq_server.stop()
        if down_for > 0:
            time.sleep(down_for)
        rabbitmq_server.start()

    try:
        yield restart
    finally:
        if not rabbitmq_server.running:
            rabbitmq_server.start()


@pytest.fixture
def rabbitmq_server_factory() -> Iterator[Callable[..., RabbitMQServer]]:
    """Start private nodes (``factory(**RabbitMQServer_kwargs)``), closed at teardown."""
    servers: list[RabbitMQServer] = []

    def factory(**kwargs: Any) -> RabbitMQServer:
        server = start_or_report(lambda: RabbitMQServer(**kwargs))
        servers.append(server)
        return server

    try:
        yield factory
    finally:
        for server in servers:
            server.close()


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
    """Mark every test using a service fixture ``redis`` / ``rabbitmq`` / ``aws``."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if REDIS_FIXTURES.intersection(names):
            item.add_marker(pytest.mark.redis)
        if RABBITMQ_FIXTURES.intersection(names):
            item.add_marker(pytest.mark.rabbitmq)
        if MOTO_FIXTURES.intersection(names):
            item.add_marker(pytest.mark.aws)
