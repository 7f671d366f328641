"""What every test service shares: the subprocess base class, free ports, TLS files, the
CI rule for missing services and the session-fixture bookkeeping (see tests/services/__init__.py)."""

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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, Self, TypeVar

import pytest

if TYPE_CHECKING:
    pass

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


_live: weakref.WeakSet[_ServerProcess] = weakref.WeakSet()


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
    #: the server's name in errors, and the prefix of its temp dir (``mc-<name>-``)
    name = "service"
    #: True when the caller chose the port (no other port is tried when it is taken)
    _fixed_port = False
    die_with_parent = True
    startup_timeout = 30.0

    def start(self) -> Self:
        """Start it in a fresh temp dir on a free port (another one if that port was taken
        meanwhile), or on the port it had; no-op while running."""
        if self.running:
            return self
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix=f"mc-{self.name}-"))
        attempts = 1 if (self._fixed_port or self._port is not None) else 3
        for attempt in range(attempts):
            if self._port is None:
                self._port = free_port(self.host)
            try:
                self._launch()
                _live.add(self)
                return self
            except ServiceError:
                # lost a race for a freshly picked port: pick another one
                if attempt + 1 < attempts and "address already in use" in self._log_tail().lower():
                    self._port = None
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _launch(self) -> None:
        """Start the process on ``self._port`` and return once it serves (ServiceError if it
        does not, the process stopped)."""
        raise NotImplementedError

    def _spawn(self, command: Sequence[str], ready: Callable[[], bool], what: str, *,
               cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        """Start ``command`` with its output in the log, then wait until ``ready()`` (an
        OSError from it counts as not yet) for ``startup_timeout`` seconds; ``what`` is the
        check, for the error.  The process is stopped if it does not get ready."""
        with open(self.log_path, "ab") as log:
            log.write(f"--- starting on port {self._port}\n".encode())
            log.flush()
            prefix = die_with_parent_prefix() if self.die_with_parent else []
            self._proc = subprocess.Popen([*prefix, *command], cwd=cwd, env=env,
                                          stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT)
        try:
            self._wait_until(ready, what)
        except BaseException:
            self._terminate(timeout=5)
            raise

    def _wait_until(self, ready: Callable[[], bool], what: str) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self.startup_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServiceError(f"{self.name} exited with status {proc.returncode} while "
                                   f"starting on port {self._port}; log:\n{self._log_tail()}")
            try:
                if ready():
                    return
            except OSError as exc:
                last = exc
            time.sleep(0.05)
        raise ServiceError(f"{self.name} on port {self._port} did not {what} within "
                           f"{self.startup_timeout}s (last error: {last!r}); "
                           f"log:\n{self._log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then wait (SIGKILL after the grace); the port stays reserved for start()."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
        self._terminate(timeout)

    @property
    def port(self) -> int:
        if self._port is None:
            raise ServiceError(f"{type(self).__name__} has no port yet: call start() first")
        return self._port

    @property
    def log_path(self) -> Path:
        """``<its temp dir>/<name>.log``."""
        if self._dir is None:
            raise ServiceError(f"{type(self).__name__} has no directory yet: call start() first")
        return self._dir / f"{self.name}.log"

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



#: How many times each session fixture (``redis_server``, ``rabbitmq_server``,
#: ``moto_server``) started its server in this process: 1 each when every test tree of the
#: session shares them (checked by interop/tests/test_interop_services.py).
session_starts: dict[str, int] = {}
#: The servers those session fixtures yielded, by fixture name (while they run).
session_servers: dict[str, _ServerProcess] = {}


@contextlib.contextmanager
def _session_service(name: str, server: _SV) -> Iterator[_SV]:
    session_starts[name] = session_starts.get(name, 0) + 1
    session_servers[name] = server
    try:
        yield server
    finally:
        session_servers.pop(name, None)
        server.close()
