"""Seeing every write to the memcached nodes of a ``memcache://`` backend (memcached has no
``MONITOR`` that shows values): :class:`MemcacheRecorder` puts a recording TCP relay in front
of each real memcached node, and :attr:`MemcacheRecorder.url` lists the relays in the nodes'
order, so a key a client sends to relay *i* lands on node *i*, as without them.  Each relay
copies bytes both ways untouched and parses the client's side of the text protocol, keeping
every storage command (``set``/``add``/``replace``/``cas``/``append``/``prepend``): the node,
command, key, flags, exptime and data.  :class:`MemcacheTap` is the per-scenario view the
interop ``Observer`` uses (like ``RedisMonitor``/``AMQPTap``: ``state_writes``, ``states``).

Nothing here imports machinery_compat: the harness is an independent observer.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass

_STORAGE = {b"set", b"add", b"replace", b"append", b"prepend", b"cas"}
_STATE = re.compile(rb'"State":"([A-Z]+)"')


@dataclass(frozen=True, slots=True)
class MemcacheWrite:
    """One storage command a client sent (``seq``: order over every relay)."""

    seq: int
    node: int
    cmd: str
    key: str
    flags: int
    exptime: int
    data: bytes


class MemcacheRecorder:
    """Recording relays in front of memcached ``nodes`` (``host:port`` each)."""

    def __init__(self, nodes: Sequence[str], host: str = "127.0.0.1") -> None:
        self.nodes = list(nodes)
        self.host = host
        self._lock = threading.Lock()
        self._seq = 0
        self._writes: dict[str, list[MemcacheWrite]] = {}
        self._listeners: list[socket.socket] = []
        self._closed = threading.Event()

    @property
    def url(self) -> str:
        return "memcache://" + ",".join(f"{self.host}:{s.getsockname()[1]}"
                                        for s in self._listeners)

    @property
    def seq(self) -> int:
        with self._lock:
            return self._seq

    def start(self) -> MemcacheRecorder:
        for i, node in enumerate(self.nodes):
            ls = socket.create_server((self.host, 0))
            self._listeners.append(ls)
            threading.Thread(target=self._accept, args=(ls, i, node), daemon=True,
                             name=f"memcache-relay-{i}").start()
        return self

    def close(self) -> None:
        self._closed.set()
        for ls in self._listeners:
            with contextlib.suppress(OSError):
                ls.close()

    def writes(self, key: str, since: int = 0) -> list[MemcacheWrite]:
        with self._lock:
            return [w for w in self._writes.get(key, ()) if w.seq > since]

    # -- relaying -----------------------------------------------------------------------
    def _accept(self, ls: socket.socket, node: int, address: str) -> None:
        host, port = address.rsplit(":", 1)
        while not self._closed.is_set():
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                server = socket.create_connection((host, int(port)), timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, server, node), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, node: int | None) -> None:
        """Copy ``src`` to ``dst``; parse it when it is a client's side (``node`` set)."""
        buf = b""
        try:
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                if node is not None:  # recorded before the node gets it (and can answer)
                    buf = self._parse(buf + chunk, node)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def _parse(self, buf: bytes, node: int) -> bytes:
        """Record the complete storage commands at the head of ``buf``; return the rest."""
        while True:
            end = buf.find(b"\r\n")
            if end < 0:
                return buf
            parts = buf[:end].split()
            if parts and parts[0] in _STORAGE and len(parts) >= 5 and parts[4].isdigit():
                size = int(parts[4])
                if len(buf) < end + 2 + size + 2:
                    return buf  # the data block has not all arrived yet
                data = buf[end + 2:end + 2 + size]
                with self._lock:
                    self._seq += 1
                    w = MemcacheWrite(self._seq, node, parts[0].decode(),
                                      parts[1].decode("utf-8", "replace"),
                                      _int(parts[2]), _int(parts[3]), data)
                    self._writes.setdefault(w.key, []).append(w)
                buf = buf[end + 2 + size + 2:]
            else:
                buf = buf[end + 2:]


def _int(b: bytes) -> int:
    try:
        return int(b)
    except ValueError:
        return -1


class MemcacheTap:
    """The writes a scenario made (those recorded after :meth:`start`)."""

    def __init__(self, recorder: MemcacheRecorder) -> None:
        self.recorder = recorder
        self.since = 0

    def start(self) -> MemcacheTap:
        self.since = self.recorder.seq
        return self

    def stop(self) -> None:
        """Nothing to drain: a write is recorded before the node sees all of it."""

    def writes(self, key: str) -> list[MemcacheWrite]:
        return self.recorder.writes(key, self.since)

    def state_writes(self, uuid: str) -> list[bytes]:
        """Every TaskState JSON stored under ``uuid``, in order."""
        return [w.data for w in self.writes(uuid)]

    def states(self, uuid: str) -> list[str]:
        out = []
        for body in self.state_writes(uuid):
            m = _STATE.search(body)
            out.append(m.group(1).decode() if m else "?")
        return out
