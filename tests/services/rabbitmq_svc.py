"""RabbitMQ for tests: :class:`RabbitMQServer` (its own Erlang node) and the rabbitmq fixtures."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import amqp

from tests.services._base import (
    LOOPBACK,
    ServiceError,
    ServiceUnavailable,
    TLSFiles,
    _live,
    _ServerProcess,
    _session_service,
    die_with_parent_prefix,
    free_port,
    start_or_report,
)

#: An Erlang node takes ~7 s to boot on the 2-core CI machine; give it room.
RABBITMQ_STARTUP_TIMEOUT = float(os.environ.get("TEST_RABBITMQ_STARTUP_TIMEOUT", "90"))


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
        epmd_port: int | None = None,
        cookie: str | None = None,
    ) -> None:
        """``epmd_port``: register with the epmd already running on that port (a cluster's
        other nodes) instead of starting one; ``cookie``: the Erlang cookie (nodes of one
        cluster need the same one; default: Erlang makes one)."""
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
        self._epmd_port: int | None = epmd_port
        self._own_epmd = epmd_port is None
        self.cookie = cookie
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
        if self.cookie is not None:
            path = d / ".erlang.cookie"
            if not path.exists():
                path.write_text(self.cookie)
                path.chmod(0o400)
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
        if not self._own_epmd or (self._epmd_proc is not None and self._epmd_proc.poll() is None):
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

    def kill(self) -> None:
        """Crash the node (SIGKILL of its Erlang VM, which runs as a child of the
        ``rabbitmq-server`` script: killing the script alone would leave the VM serving)."""
        if self._proc is not None and self._proc.poll() is None:
            for pid in _descendants(self._proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        super().kill()

    def _stop_epmd(self) -> None:
        if not self._own_epmd:
            return
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


def _descendants(pid: int) -> list[int]:
    """The pids of ``pid``'s children, grandchildren, ... (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test using one of RABBITMQ_FIXTURES ``rabbitmq``."""
    for item in items:
        if RABBITMQ_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.rabbitmq)
