"""AMQP 0-9-1 plumbing shared by the AMQP broker and the AMQP result backend.

Connections are :class:`kombu.Connection` objects (URL parsing, fail-over between several
URLs, ``ensure_connection`` with back-off, heartbeats, TLS); every protocol operation runs
on the underlying py-amqp channel, so that names, flags, argument types and message
properties are exactly the ones Go Machinery uses (kombu's ``Producer`` would add its own
properties and body encoding).

* :class:`Long` marks a field-table integer that must go out as AMQP ``l`` (signed 64-bit),
  as Go sends ``int64`` (the delay queues' ``x-message-ttl``/``x-expires``).  py-amqp writes
  every other integer as ``I`` (signed 32-bit), as Go does for ``int`` and ``int32``.
* :func:`go_table` converts a YAML ``queue_declare_args``/``queue_binding_args`` mapping to
  the values Go's ``amqp.Table`` would send (YAML integers are Go ``int``: ``I``).
* :class:`Link` is one connection + one confirm-mode channel, with the declarations it has
  made; :class:`LinkPool` hands links to threads (py-amqp channels are not thread-safe) and
  retries an operation on a fresh link within a time budget.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from ._gil_io import recv_nowait, send_all
from .exceptions import BrokerConnectionError, BrokerError, ConfigError, PublishError

if TYPE_CHECKING:
    import kombu

    from .config import AMQPConfig, Config

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Heartbeat (seconds) of consumer connections; Go's amqp091 dials with 10 s.
CONSUMER_HEARTBEAT = 10
#: How long a producer keeps retrying a publish (reconnecting between tries) before it raises
#: :class:`~machinery_compat.exceptions.PublishError`.
PUBLISH_RETRY_BUDGET = 20.0
#: How long one publish waits for RabbitMQ's confirm.
CONFIRM_TIMEOUT = 10.0
#: TCP connect timeout of one attempt.
CONNECT_TIMEOUT = 5.0
#: Idle producer/backend connections kept per pool.
POOL_SIZE = 16


class Long(int):
    """An integer sent in an AMQP field table as ``l`` (signed 64-bit), like Go's ``int64``."""

    __slots__ = ()


def _install_long_fields() -> None:
    """Teach py-amqp's table writer :class:`Long` (it writes every small int as ``I``).

    The hook only changes how :class:`Long` instances are written; every other value goes
    to py-amqp's own writer unchanged.
    """
    from amqp import serialization

    original = serialization._write_item
    if getattr(original, "_machinery_compat", False):
        return

    def write_item(v: Any, write: Callable[[bytes], Any], bits: Any) -> None:
        if type(v) is Long:
            write(struct.pack(">cq", b"l", int(v)))
        else:
            original(v, write, bits)

    write_item._machinery_compat = True  # type: ignore[attr-defined]
    serialization._write_item = write_item


_install_lock = threading.Lock()
_installed = False


def require_kombu(what: str) -> None:
    """ConfigError with the install hint when kombu / py-amqp are missing."""
    try:
        import amqp  # noqa: F401
        import kombu  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"the AMQP {what} needs kombu and py-amqp: "
                          f"pip install 'machinery-compat[amqp]' ({e})") from e


def ensure_field_types() -> None:
    global _installed
    with _install_lock:
        if not _installed:
            _install_long_fields()
            _installed = True


def _go_int(v: int) -> int:
    """Go's ``int`` in a table: ``I`` with the low 32 bits (two's complement)."""
    return ((v + 2**31) % 2**32) - 2**31


def go_table(args: Mapping[str, Any] | None) -> dict[str, Any]:
    """``args`` (from YAML or code) as Go's ``amqp.Table`` would send them.

    Integers become 32-bit ``I`` (Go ``int``; a :class:`Long` stays ``l``), strings ``S``,
    floats ``d``, booleans ``t``, nested maps ``F``, lists ``A``.
    """
    out: dict[str, Any] = {}
    for k, v in (args or {}).items():
        out[str(k)] = _go_value(v)
    return out


def _go_value(v: Any) -> Any:
    if isinstance(v, bool) or v is None or isinstance(v, Long):
        return v
    if isinstance(v, int):
        return _go_int(v)
    if isinstance(v, Mapping):
        return go_table(v)
    if isinstance(v, (list, tuple)):
        return [_go_value(x) for x in v]
    return v


def body_bytes(body: Any) -> bytes:
    """A received message body as bytes (py-amqp hands out bytes, or str for some content)."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    return str(body).encode("utf-8", "surrogateescape")


def split_urls(url: str, separator: str) -> list[str]:
    """``broker`` split on ``multiple_broker_separator`` (Go: ``strings.Split``), blanks dropped."""
    parts = url.split(separator) if separator else [url]
    urls = [p.strip() for p in parts if p.strip()]
    if not urls:
        raise ConfigError(f"no AMQP URL in {url!r}")
    for u in urls:
        scheme = urlsplit(u).scheme.lower()
        if scheme not in ("amqp", "amqps"):
            raise ConfigError(f"not an AMQP URL: {u!r} (amqp:// or amqps://)")
    return urls


def amqp_config(config: Config) -> AMQPConfig:
    """``config.amqp``, or Machinery's defaults when the YAML file had no ``amqp:`` section
    (Go would dereference a nil pointer there)."""
    from .config import AMQPConfig

    return config.amqp if config.amqp is not None else AMQPConfig()


# -- connections --------------------------------------------------------------------------

#: How many bytes one ``recv`` of a plain AMQP connection asks for (it gets what is there).
READ_CHUNK = 64 * 1024
_FRAME_HEADER = struct.Struct(">BHI")  # type, channel, payload size
_FRAME_END = 0xCE
#: ``recv`` flag for one non-blocking read on a blocking socket (0: not available here)
_DONTWAIT: int = getattr(socket, "MSG_DONTWAIT", 0)
#: errors of a read that found nothing (py-amqp's ``_UNAVAIL``): the connection lives on
_UNAVAIL = frozenset({errno.EAGAIN, errno.EINTR, errno.ENOENT, errno.EWOULDBLOCK})


def _kombu_transports() -> tuple[type[Any], type[Any]]:
    """kombu pyamqp transports (plain, TLS).  The TLS side wraps sockets with an
    :class:`ssl.SSLContext` (Go's ``TLSConfig``; py-amqp itself only takes option dicts); the
    plain side reads in chunks (``_BufferedTCPTransport``)."""
    from amqp.exceptions import UnexpectedFrame
    from amqp.transport import SSLTransport as AmqpSSLTransport
    from amqp.transport import TCPTransport as AmqpTCPTransport
    from kombu.transport import pyamqp

    class _BufferedTCPTransport(AmqpTCPTransport):  # type: ignore[misc]
        """py-amqp's TCP transport, reading whatever the socket holds (up to
        :data:`READ_CHUNK`) in one ``recv``, and waiting for a frame without changing the
        socket's blocking mode.

        py-amqp's own transport receives exactly the bytes it parses next: three ``recv``
        calls a frame (header, payload, frame-end octet), each preceded by a ``poll`` while a
        timeout is set, and every ``blocking_read`` with a timeout switches the socket to
        non-blocking and back (two ``ioctl`` calls): about 25 system calls for one delivered
        message, each one releasing and re-taking the GIL, which a worker's busy threads make
        expensive; every publish also tries a read with timeout 0 (for ``connection.blocked``)
        at the price of three.  Here a frame already received is parsed without a system call,
        and :meth:`read_frame_within` (what ``_Connection.blocking_read`` uses when given a
        timeout) receives with ``MSG_DONTWAIT`` and waits in ``poll`` when nothing is there.

        The unread bytes stay in ``_read_buffer`` (a ``bytearray``, whose front is dropped in
        place), where py-amqp and the consumer look for them.
        """

        _poller: Any = None

        def _setup_transport(self) -> None:
            super()._setup_transport()
            self._read_buffer = bytearray()
            self._poller = None
            self._scratch = bytearray(READ_CHUNK)  # what one non-blocking recv fills
            sock = self.sock
            # writes keep the GIL when the kernel takes them at once (machinery_compat._gil_io)
            self._write = lambda data: send_all(sock, data)

        def _fill_now(self) -> int | None:
            """Append what the socket holds now (up to :data:`READ_CHUNK`) to the buffer,
            without waiting or letting go of the GIL: how many bytes, None when nothing was
            there; OSError when the server closed the connection."""
            n = recv_nowait(self.sock, self._scratch)
            if n is None:
                return None
            if not n:
                self.connected = False
                raise OSError("Server unexpectedly closed connection")
            buf = self._buffer()
            buf += memoryview(self._scratch)[:n]
            return n

        def _buffer(self) -> bytearray:
            buf = self._read_buffer
            if type(buf) is not bytearray:  # py-amqp put bytes back after a timeout
                buf = self._read_buffer = bytearray(buf)
            return buf

        def _buffered_frame(self) -> tuple[int, int, bytes] | None:
            """The next frame, taken from the buffer if it holds all of it."""
            buf = self._read_buffer
            if len(buf) < 7:
                return None
            frame_type, channel, size = _FRAME_HEADER.unpack_from(buf)
            end = 7 + size
            if len(buf) <= end:
                return None
            buf = self._buffer()
            if buf[end] != _FRAME_END:
                raise UnexpectedFrame(f"Received frame_end {buf[end]:#04x} while expecting 0xce")
            payload = bytes(buf[7:end])
            del buf[:end + 1]
            return frame_type, channel, payload

        def read_frame(self, unpack: Any = struct.unpack) -> tuple[int, int, bytes]:
            frame = self._buffered_frame()
            if frame is None:
                frame = super().read_frame(unpack)
            return frame

        def can_wait_itself(self) -> bool:
            """:meth:`read_frame_within` works here (a blocking socket, ``MSG_DONTWAIT``)."""
            return bool(_DONTWAIT) and self.sock is not None and self.sock.gettimeout() is None

        def read_frame_within(self, timeout: float) -> tuple[int, int, bytes]:
            """The next frame, within ``timeout`` seconds (else ``socket.timeout``, the bytes
            of a partial frame kept): parsed from the buffer, else from what one non-blocking
            ``recv`` brings, else after ``poll`` says the socket is readable."""
            deadline = 0.0
            while True:
                frame = self._buffered_frame()
                if frame is not None:
                    return frame
                try:
                    got = self._fill_now()
                except OSError as exc:
                    if exc.errno not in _UNAVAIL:
                        self.connected = False
                    raise
                if got is not None:
                    continue
                now = time.monotonic()
                if not deadline:
                    deadline = now + timeout
                if now >= deadline or not self._readable(deadline - now):
                    raise TimeoutError("timed out")

        def read_available(self) -> bool:
            """Append what the socket holds now to the buffer, in one non-blocking ``recv``;
            False when nothing was there or only less than a full chunk came (the socket is
            then most likely drained: a caller waits for it to be readable again)."""
            try:
                got = self._fill_now()
            except OSError as exc:
                if exc.errno not in _UNAVAIL:
                    self.connected = False
                raise
            return got is not None and got >= READ_CHUNK

        def _readable(self, seconds: float) -> bool:
            poller = self._poller
            if poller is None:
                if not hasattr(select, "poll"):
                    return bool(select.select([self.sock], [], [], seconds)[0])
                poller = self._poller = select.poll()
                poller.register(self.sock, select.POLLIN)
            return bool(poller.poll(max(1, math.ceil(seconds * 1000))))

        def _read(self, n: int, initial: bool = False,
                  _errnos: tuple[int, ...] = (errno.EAGAIN, errno.EINTR)) -> bytes:
            """Exactly ``n`` bytes: from the buffer, receiving more (as much as has arrived,
            at least what is missing) while it holds fewer."""
            buf = self._buffer()
            recv = self._quick_recv
            while len(buf) < n:
                try:
                    chunk = recv(max(n - len(buf), READ_CHUNK))
                except OSError as exc:
                    if exc.errno in _errnos:
                        if initial and self.raise_on_initial_eintr:
                            raise TimeoutError() from exc
                        continue
                    raise
                if not chunk:
                    raise OSError("Server unexpectedly closed connection")
                buf += chunk
            result = bytes(buf[:n])
            del buf[:n]
            return result

    class _ContextSSLTransport(AmqpSSLTransport):  # type: ignore[misc]
        def _wrap_socket(self, sock: socket.socket, context: Any = None, **opts: Any) -> Any:
            ctx: ssl.SSLContext = opts["mc_context"]
            host = self.host.rsplit(":", 1)[0].strip("[]") if ":" in self.host else self.host
            return ctx.wrap_socket(sock, server_hostname=host if ctx.check_hostname else None,
                                   do_handshake_on_connect=False)

    class _Connection(pyamqp.Connection):  # type: ignore[misc]
        def Transport(self, host: str, connect_timeout: Any, ssl: Any = False,
                      read_timeout: Any = None, write_timeout: Any = None,
                      socket_settings: Any = None, **kwargs: Any) -> Any:
            if isinstance(ssl, dict) and "mc_context" in ssl:
                return _ContextSSLTransport(host, connect_timeout=connect_timeout, ssl=ssl,
                                            read_timeout=read_timeout,
                                            write_timeout=write_timeout,
                                            socket_settings=socket_settings, **kwargs)
            if not ssl:
                return _BufferedTCPTransport(host, connect_timeout=connect_timeout,
                                             read_timeout=read_timeout,
                                             write_timeout=write_timeout,
                                             socket_settings=socket_settings, **kwargs)
            return super().Transport(host, connect_timeout, ssl, read_timeout,
                                     write_timeout, socket_settings, **kwargs)

        def blocking_read(self, timeout: Any = None) -> Any:
            transport = self.transport
            if (timeout is not None and isinstance(transport, _BufferedTCPTransport)
                    and transport.can_wait_itself()):
                return self.on_inbound_frame(transport.read_frame_within(timeout))
            return super().blocking_read(timeout)

    class _Transport(pyamqp.Transport):  # type: ignore[misc]
        Connection = _Connection

    class _TLSTransport(pyamqp.SSLTransport):  # type: ignore[misc]
        Connection = _Connection

    return _Transport, _TLSTransport


_transports: tuple[type[Any], type[Any]] | None = None


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect: the URLs in fail-over order and the TLS context."""

    urls: tuple[str, ...]
    tls_context: ssl.SSLContext | None = None

    @classmethod
    def from_url(cls, url: str, separator: str = "", tls: ssl.SSLContext | None = None) -> Endpoint:
        urls = tuple(split_urls(url, separator))
        if urlsplit(urls[0]).scheme.lower() == "amqps" and tls is None:
            tls = ssl.create_default_context()  # Go: DialTLS with a nil config
        return cls(urls, tls if urlsplit(urls[0]).scheme.lower() == "amqps" else None)

    def connection(self, *, heartbeat: float = 0) -> kombu.Connection:
        """A new (not yet connected) kombu connection over these URLs."""
        import kombu

        global _transports
        ensure_field_types()
        if _transports is None:
            _transports = _kombu_transports()
        plain, tls = _transports
        kwargs: dict[str, Any] = {}
        if self.tls_context is not None:
            kwargs["ssl"] = {"mc_context": self.tls_context}
        return kombu.Connection(
            list(self.urls),
            transport=tls if self.tls_context is not None else plain,
            heartbeat=heartbeat,
            connect_timeout=CONNECT_TIMEOUT,
            failover_strategy="round-robin",
            **kwargs,
        )

    def describe(self) -> str:
        from .config.masking import mask_url

        return ", ".join(mask_url(u) for u in self.urls)


def describe(conn: kombu.Connection) -> str:
    """``amqp[s]://user@host:port/vhost`` of the URL a connection uses now (no password)."""
    scheme = "amqps" if conn.ssl else "amqp"
    return f"{scheme}://{conn.userid}@{conn.hostname}:{conn.port}/{conn.virtual_host}"


def connection_errors() -> tuple[type[BaseException], ...]:
    """Errors after which a connection is unusable (reconnect and try again)."""
    import amqp

    return (amqp.exceptions.RecoverableConnectionError, amqp.exceptions.ConnectionError,
            OSError, socket.timeout, EOFError)


def fatal_cause(exc: BaseException) -> BaseException | None:
    """The error in ``exc``'s cause chain that no retry can fix: an untrusted certificate,
    refused credentials, a vhost the user may not open."""
    import amqp

    fatal = (ssl.SSLCertVerificationError, amqp.exceptions.AccessRefused,
             amqp.exceptions.NotAllowed)
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, fatal):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def channel_errors() -> tuple[type[BaseException], ...]:
    """Errors that closed a channel (the connection may live on)."""
    import amqp

    return (amqp.exceptions.ChannelError,)


def connect(conn: kombu.Connection, *, attempts: int | None = None, what: str = "") -> Any:
    """``conn.ensure_connection`` with back-off (0.2 s, +0.5 s a round, at most 2 s), at most
    ``attempts`` rounds over the URLs; returns the py-amqp connection.  Raises
    :class:`BrokerConnectionError`."""
    n_urls = len(conn.alt) if conn.alt else 1

    def errback(exc: BaseException, interval: float) -> None:
        logger.warning("AMQP %s: cannot connect to %s (%s); next try in %.1fs", what or "link",
                       describe(conn), exc, interval)

    try:
        conn.ensure_connection(
            errback=errback,
            max_retries=None if attempts is None else attempts * n_urls - 1,
            interval_start=0.2, interval_step=0.5, interval_max=2.0,
        )
    except Exception as e:
        raise BrokerConnectionError(f"AMQP: cannot connect to {describe(conn)}: {e}") from e
    return conn.connection


def is_channel_error(exc: BaseException) -> bool:
    import amqp

    return isinstance(exc, amqp.exceptions.ChannelError)


def close_quietly(conn: kombu.Connection | None) -> None:
    if conn is None:
        return
    try:
        conn.close()
    except Exception:  # already broken: release what can be released
        try:
            conn.collect()
        except Exception:
            logger.debug("closing a broken AMQP connection", exc_info=True)


# -- declarations -------------------------------------------------------------------------

def declare_exchange(channel: Any, name: str, kind: str) -> None:
    """Go's ``ExchangeDeclare(name, type, durable=true, autoDelete=false, internal=false,
    noWait=false, args=nil)`` (skipped for the default exchange ``""``, as Go does)."""
    if name:  # py-amqp always sends internal=false
        channel.exchange_declare(name, kind, passive=False, durable=True, auto_delete=False,
                                 nowait=False, arguments=None)


def declare_queue(channel: Any, name: str, *, durable: bool, auto_delete: bool,
                  arguments: Mapping[str, Any] | None) -> tuple[str, int, int]:
    """``QueueDeclare(name, durable, autoDelete, exclusive=false, noWait=false, args)``;
    returns (name, message count, consumer count)."""
    ok = channel.queue_declare(name, passive=False, durable=durable, exclusive=False,
                               auto_delete=auto_delete, nowait=False,
                               arguments=dict(arguments) if arguments else None)
    return ok.queue, ok.message_count, ok.consumer_count


def bind_queue(channel: Any, queue: str, exchange: str, key: str,
               arguments: Mapping[str, Any] | None) -> None:
    """``QueueBind(queue, key, exchange, noWait=false, args)`` (skipped for the default
    exchange, which refuses bindings; Go would fail there)."""
    if exchange:
        channel.queue_bind(queue, exchange, key, nowait=False,
                           arguments=dict(arguments) if arguments else None)


def basic_nack(channel: Any, delivery_tag: int, *, multiple: bool, requeue: bool) -> None:
    """``basic.nack`` (py-amqp has no method for it; Go's ``Delivery.Nack`` sends this)."""
    from amqp import spec

    channel.send_method(spec.Basic.Nack, "Lbb", (delivery_tag, multiple, requeue))


def browse(channel: Any, queue: str, limit: int | None = None) -> list[Any]:
    """The messages ready in ``queue`` (at most ``limit``), head first, left where they
    were: each taken with ``basic.get`` without ack, then all given back in order by one
    ``basic.nack(multiple, requeue)``, also when a get fails midway."""
    msgs: list[Any] = []
    last = 0
    try:
        while limit is None or len(msgs) < limit:
            msg = channel.basic_get(queue, no_ack=False)
            if msg is None:
                break
            last = msg.delivery_tag
            msgs.append(msg)
    finally:
        if last:
            basic_nack(channel, last, multiple=True, requeue=True)
    return msgs


# -- links --------------------------------------------------------------------------------

class Link:
    """One connection with one channel in confirm mode, used by one thread at a time."""

    def __init__(self, endpoint: Endpoint, what: str) -> None:
        self.endpoint = endpoint
        self.what = what
        self.conn = endpoint.connection()
        self.channel: Any = None
        #: declarations made on this connection (cache keys chosen by the caller)
        self.declared: set[Any] = set()
        self._returned: list[tuple[int, str]] = []
        self._seq = 0  # publisher-confirm sequence number (RabbitMQ's delivery tag)
        self.pid = os.getpid()
        self.used = time.monotonic()

    def open(self, attempts: int | None = 1) -> Link:
        connect(self.conn, attempts=attempts, what=self.what)
        self.channel = self.conn.connection.channel()
        self.channel.confirm_select()
        self.channel.events["basic_return"].add(self._on_return)
        return self

    def _on_return(self, exc: BaseException, exchange: str, routing_key: str, message: Any) -> None:
        self._returned.append((getattr(exc, "code", 0), f"{exc}"))

    def publish(self, body: bytes, exchange: str, routing_key: str, properties: Mapping[str, Any],
                *, mandatory: bool = True, timeout: float = CONFIRM_TIMEOUT) -> None:
        """Publish and wait for the broker's confirm; a nack or a return raises PublishError."""
        import amqp

        self._returned.clear()
        ch = self.channel
        self._seq += 1
        nacked: list[bool] = []
        frames = self._frames(body, exchange, routing_key, properties, mandatory)
        if frames is not None:
            if not ch.is_open or ch.connection is None:
                raise amqp.exceptions.RecoverableConnectionError("publish: channel closed")
            amqp_conn = self.conn.connection
            amqp_conn.transport.write(frames)
            amqp_conn.bytes_sent += 1
            if self._await_confirm(timeout):
                nacked.append(True)
        else:
            msg = amqp.Message(body, **properties)
            ch.basic_publish(msg, exchange=exchange, routing_key=routing_key, mandatory=mandatory)

            def on_confirm(method: Any, *args: Any) -> None:
                if method == amqp.spec.Basic.Nack:
                    nacked.append(True)

            try:
                ch.wait([amqp.spec.Basic.Ack, amqp.spec.Basic.Nack], callback=on_confirm,
                        timeout=timeout)
            except TimeoutError as e:
                raise amqp.exceptions.RecoverableConnectionError(
                    f"no publisher confirm within {timeout:g}s") from e
        self.used = time.monotonic()
        if nacked:
            raise PublishError(f"Failed delivery of delivery tag: {self._seq} (RabbitMQ nacked "
                               f"the message for exchange {exchange!r}, key {routing_key!r})")
        if self._returned:
            _code, text = self._returned[0]
            raise UnroutableError(
                f"RabbitMQ returned the message: exchange {exchange!r} has no queue bound for "
                f"routing key {routing_key!r} ({text})")

    def _frames(self, body: bytes, exchange: str, routing_key: str,
                properties: Mapping[str, Any], mandatory: bool) -> bytes | None:
        """``basic.publish`` + content header + body frames as one buffer, the bytes py-amqp's
        ``basic_publish`` writes (its own property serializer, cached per distinct set of
        simple properties), or None where py-amqp's path is used instead: a connection
        whose transport cannot wait for frames itself (TLS), a name over 255 bytes, a
        non-bytes body.

        py-amqp's path builds a Message, goes through its method and frame writers and,
        before every publish, reads the socket with timeout 0 (for ``connection.blocked``,
        which the confirm wait handles as any other frame here): ~60 us of CPU a publish."""
        transport = self.conn.connection.transport
        if (type(body) is not bytes or not hasattr(transport, "read_frame_within")
                or not transport.can_wait_itself()):
            return None
        ex = exchange.encode("utf-8")
        rk = routing_key.encode("utf-8")
        if len(ex) > 255 or len(rk) > 255:
            return None
        props = self._properties(properties)
        ch_id = self.channel.channel_id
        method = b"".join([_BASIC_PUBLISH, bytes((len(ex),)), ex, bytes((len(rk),)), rk,
                           b"\x01" if mandatory else b"\x00"])
        header = b"".join([_CONTENT_HEADER.pack(60, 0, len(body)), props])
        parts = [_FRAME_HEADER.pack(1, ch_id, len(method)), method, _END,
                 _FRAME_HEADER.pack(2, ch_id, len(header)), header, _END]
        chunk = self.conn.connection.frame_max - 8
        for i in range(0, len(body), chunk):
            piece = body[i:i + chunk]
            parts += [_FRAME_HEADER.pack(3, ch_id, len(piece)), piece, _END]
        return b"".join(parts)

    def _properties(self, properties: Mapping[str, Any]) -> bytes:
        """The content header's property flags and list, as py-amqp serializes them."""
        key = None
        if all(type(v) in (str, int) for v in properties.values()):
            key = tuple(sorted(properties.items()))
            cached = _PROPERTY_CACHE.get(key)
            if cached is not None:
                return cached
        import amqp

        out: bytes = amqp.Message(b"", **properties)._serialize_properties()
        if key is not None and len(_PROPERTY_CACHE) < 256:
            _PROPERTY_CACHE[key] = out
        return out

    def _await_confirm(self, timeout: float) -> bool:
        """Read frames until RabbitMQ's ``basic.ack`` or ``basic.nack`` on this link's channel
        (True: nacked); every other frame (a ``basic.return`` and its content, a
        ``channel.close``, ``connection.blocked``) goes through py-amqp as usual."""
        import amqp

        amqp_conn = self.conn.connection
        transport = amqp_conn.transport
        ch_id = self.channel.channel_id
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError("timed out")
                frame = transport.read_frame_within(left)
            except TimeoutError as e:
                raise amqp.exceptions.RecoverableConnectionError(
                    f"no publisher confirm within {timeout:g}s") from e
            frame_type, channel, payload = frame
            if frame_type == 1 and channel == ch_id:
                head = payload[:4]
                if head == _BASIC_ACK:
                    amqp_conn.bytes_recv += 1
                    return False
                if head == _BASIC_NACK:
                    amqp_conn.bytes_recv += 1
                    return True
            amqp_conn.on_inbound_frame(frame)

    def close(self) -> None:
        close_quietly(self.conn)


#: ``basic.publish`` (class 60, method 40) with its reserved short; ``basic.ack`` and
#: ``basic.nack``; a content header's start; a frame's end octet
_BASIC_PUBLISH = struct.pack(">HHH", 60, 40, 0)
_BASIC_ACK = struct.pack(">HH", 60, 80)
_BASIC_NACK = struct.pack(">HH", 60, 120)
_CONTENT_HEADER = struct.Struct(">HHQ")
_END = bytes((_FRAME_END,))
#: serialized content-header properties by their (sorted) items, for str/int-only properties
_PROPERTY_CACHE: dict[tuple[tuple[str, Any], ...], bytes] = {}


class UnroutableError(PublishError):
    """A mandatory publish came back: no queue is bound for the routing key."""


class LinkPool:
    """Links for many threads: each operation borrows one; broken links are dropped and
    the operation is retried on a new link until ``budget`` seconds have passed."""

    def __init__(self, endpoint: Endpoint, what: str, size: int = POOL_SIZE) -> None:
        self.endpoint = endpoint
        self.what = what
        self.size = size
        self._idle: list[Link] = []
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        self._retryable: tuple[type[BaseException], ...] = (BrokerConnectionError,
                                                             *connection_errors())

    def _check_fork(self) -> None:
        """In a forked child, forget the parent's links without closing them (their sockets
        are the parent's) and the lock another parent thread may have held."""
        if self._pid != os.getpid():
            self._lock = threading.Lock()
            self._idle = []
            self._pid = os.getpid()

    def _take(self) -> Link:
        self._check_fork()
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return Link(self.endpoint, self.what).open()

    def _give(self, link: Link) -> None:
        if link.pid != os.getpid():
            return  # taken before a fork: the parent's socket
        with self._lock:
            if not self._closed and len(self._idle) < self.size:
                self._idle.append(link)
                return
        link.close()

    def run(self, op: Callable[[Link], T], *, budget: float = PUBLISH_RETRY_BUDGET,
            describe: str = "") -> T:
        """``op(link)`` on a healthy link, retried on connection errors (and once on a channel
        error, which closes the channel) within ``budget`` seconds."""
        deadline = time.monotonic() + budget
        delay = 0.1
        attempt = 0
        while True:
            attempt += 1
            link: Link | None = None
            try:
                link = self._take()
                result = op(link)
            except self._retryable as e:
                if link is not None:
                    link.close()
                fatal = fatal_cause(e)
                if fatal is not None:
                    raise BrokerConnectionError(
                        f"AMQP {describe or self.what}: {fatal} (not retried)") from e
                if time.monotonic() + delay > deadline:
                    raise BrokerConnectionError(
                        f"AMQP {describe or self.what}: gave up after {attempt} attempt(s) in "
                        f"{budget:g}s: {e}") from e
                logger.warning("AMQP %s failed (%s); retrying in %.1fs", describe or self.what,
                               e, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            except BaseException as e:
                if link is not None:
                    if is_channel_error(e) or not isinstance(e, BrokerError):
                        link.close()  # the channel (or the protocol state) is gone
                    else:
                        self._give(link)
                raise
            self._give(link)
            return result

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for link in idle:
            link.close()

