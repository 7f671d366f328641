"""Seeing every write to the memcached nodes of a ``memcache://`` backend (memcached has no
``MONITOR`` that shows values): :class:`MemcacheRecorder` runs ``bin/mcrelay`` (Go:
interop/cmd/mcrelay), a recording TCP relay in front of each real memcached node, and
:attr:`MemcacheRecorder.url` lists the relays in the nodes' order, so a key a client sends to
relay *i* lands on node *i*, as without them.  The relays copy bytes both ways untouched and
append every storage command a client sends (``set``/``add``/``replace``/``cas``/``append``/
``prepend``: node, client port, command, key, flags, exptime, data) to a file before
forwarding it.  (A relay in this process was too slow: under the GIL of a test process
running a Python worker it missed gomemcache's 100 ms timeout.)  :class:`MemcacheTap` is the
per-scenario view the interop ``Observer`` uses (like ``RedisMonitor``/``AMQPTap``:
``state_writes``, ``states``).

Nothing here imports machinery_compat: the harness is an independent observer.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.services import die_with_parent_prefix

RELAY = Path(__file__).resolve().parents[1] / "bin" / "mcrelay"
_STATE = re.compile(rb'"State":"([A-Z]+)"')


@dataclass(frozen=True, slots=True)
class MemcacheWrite:
    """One storage command a client sent (``seq``: order over every relay; ``client_port``:
    the local port of the client's connection, which tells whose it was)."""

    seq: int
    node: int
    client_port: int
    cmd: str
    key: str
    flags: int
    exptime: int
    data: bytes


class MemcacheRecorder:
    """``bin/mcrelay`` in front of memcached ``nodes`` (``host:port`` each)."""

    def __init__(self, nodes: Sequence[str]) -> None:
        self.nodes = list(nodes)
        self._lock = threading.Lock()
        self._writes: dict[str, list[MemcacheWrite]] = {}
        self._seq = 0
        self._offset = 0
        self._addrs: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="mc-relay-"))
        self._file = self._dir / "writes.jsonl"

    @property
    def url(self) -> str:
        return "memcache://" + ",".join(self._addrs)

    @property
    def seq(self) -> int:
        with self._lock:
            self._read()
            return self._seq

    def start(self) -> MemcacheRecorder:
        with open(self._dir / "stderr.log", "wb") as err:
            self._proc = subprocess.Popen(
                [*die_with_parent_prefix(), str(RELAY), "-nodes", ",".join(self.nodes),
                 "-out", str(self._file)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"mcrelay exited: {(self._dir / 'stderr.log').read_text()}")
        self._addrs = list(json.loads(line)["addrs"])
        return self

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def _read(self) -> None:
        """Index the lines mcrelay appended since the last call (under the lock)."""
        with contextlib.suppress(FileNotFoundError), open(self._file, "rb") as f:
            f.seek(self._offset)
            data = f.read()
            whole = data[:data.rfind(b"\n") + 1]
            self._offset += len(whole)
        for raw in whole.splitlines():
            r = json.loads(raw)
            w = MemcacheWrite(r["seq"], r["node"], r["client_port"], r["cmd"], r["key"],
                              r["flags"], r["exptime"], base64.b64decode(r["data"] or ""))
            self._writes.setdefault(w.key, []).append(w)
            self._seq = max(self._seq, w.seq)

    def writes(self, key: str, since: int = 0) -> list[MemcacheWrite]:
        with self._lock:
            self._read()
            return [w for w in self._writes.get(key, ()) if w.seq > since]

    def all_writes(self, since: int = 0) -> list[MemcacheWrite]:
        """Every write after ``since``, in order."""
        with self._lock:
            self._read()
            return sorted((w for ws in self._writes.values() for w in ws if w.seq > since),
                          key=lambda w: w.seq)

    def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, asking every node itself (not through a relay);
        AssertionError when more than one node holds it (a client picked another node)."""
        found = []
        for node in self.nodes:
            host, port = node.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(f"get {key}\r\n".encode())
                reply = b""
                while not (reply == b"END\r\n" or (reply.startswith(b"VALUE ") and _whole(reply))):
                    chunk = s.recv(65536)
                    if not chunk:
                        raise OSError(f"memcached {node} closed the connection")
                    reply += chunk
            if reply.startswith(b"VALUE "):
                head, _, rest = reply.partition(b"\r\n")
                found.append((node, rest[:int(head.split()[3])]))
        assert len(found) <= 1, f"{key} is on several nodes: {found}"
        return found[0][1] if found else None


def _whole(reply: bytes) -> bool:
    """A ``get`` reply ``VALUE k f n\r\n<n bytes>\r\nEND\r\n`` has all arrived."""
    head, _, rest = reply.partition(b"\r\n")
    return len(rest) >= int(head.split()[3]) + 7


class MemcacheTap:
    """The writes a scenario made (those recorded after :meth:`start`)."""

    def __init__(self, recorder: MemcacheRecorder) -> None:
        self.recorder = recorder
        self.since = 0

    def start(self) -> MemcacheTap:
        self.since = self.recorder.seq
        return self

    def stop(self) -> None:
        """Nothing to drain: mcrelay records a write before the node gets it."""

    def writes(self, key: str) -> list[MemcacheWrite]:
        return self.recorder.writes(key, self.since)

    def all_writes(self) -> list[MemcacheWrite]:
        return self.recorder.all_writes(self.since)

    def state_writes(self, uuid: str) -> list[bytes]:
        """Every TaskState JSON stored under ``uuid``, in order."""
        return [w.data for w in self.writes(uuid)]

    def states(self, uuid: str) -> list[str]:
        out = []
        for body in self.state_writes(uuid):
            m = _STATE.search(body)
            out.append(m.group(1).decode() if m else "?")
        return out
