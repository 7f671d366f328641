"""Seeing every write to the MongoDB result backend (FerretDB has no change streams, and
MongoDB's would not show the ``$set`` a client sent): :class:`MongoRecorder` is a recording TCP
relay in front of the session's FerretDB; :attr:`MongoRecorder.url` is the relay's
``mongodb://`` URL the stacks' Go and Python sides use.  The relay copies bytes both ways
untouched and parses the client's side of the wire protocol (``OP_MSG``: the command document
and its document sequences), keeping every ``update``/``insert``/``delete``/``findAndModify``
with the connection's client port.  :class:`MongoTap` is the per-scenario view the interop
``Observer`` uses (``state_writes``, ``states``, like ``RedisMonitor``/``AMQPTap``): a task
state write is shown as the Go TaskState JSON of the task's document right after the write
(the document before it, the ``$set`` applied), the JSON Go's ``GetState`` + ``json.Marshal``
would give.  So MongoDB's merge (earlier fields survive a ``$set``) reads as Redis' does.

Nothing here imports machinery_compat: the harness is an independent observer (it decodes
BSON with pymongo's ``bson``).
"""

from __future__ import annotations

import base64
import contextlib
import re
import socket
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

OP_MSG = 2013
_WRITES = {"update", "insert", "delete", "findandmodify"}
_STATE = re.compile(rb'"State":"([A-Z]+)"')
_UNSIGNED = {"uint", "uint8", "uint16", "uint32", "uint64"}


@dataclass(frozen=True, slots=True)
class MongoCommand:
    """One write command a client sent (``seq``: order over every connection)."""

    seq: int
    client_port: int
    name: str  # update | insert | delete | findAndModify
    database: str
    collection: str
    body: dict[str, Any]  # with its document sequences (``updates``, ``documents``) merged in


def parse_op_msg(payload: bytes) -> dict[str, Any] | None:
    """The command of one OP_MSG (after the 16-byte header): body + document sequences."""
    import bson
    from bson.codec_options import CodecOptions, DatetimeConversion

    opts: CodecOptions[dict[str, Any]] = CodecOptions(
        datetime_conversion=DatetimeConversion.DATETIME_MS)
    (flags,) = struct.unpack_from("<I", payload, 0)
    end = len(payload) - (4 if flags & 1 else 0)
    pos, body, seqs = 4, None, {}
    while pos < end:
        kind = payload[pos]
        pos += 1
        (size,) = struct.unpack_from("<i", payload, pos)
        if kind == 0:
            body = bson.decode(payload[pos:pos + size], codec_options=opts)
            pos += size
        elif kind == 1:
            stop = pos + size
            name_end = payload.index(b"\x00", pos + 4)
            ident = payload[pos + 4:name_end].decode()
            docs, p = [], name_end + 1
            while p < stop:
                (n,) = struct.unpack_from("<i", payload, p)
                docs.append(bson.decode(payload[p:p + n], codec_options=opts))
                p += n
            seqs[ident] = docs
            pos = stop
        else:
            return None
    if body is None:
        return None
    body.update(seqs)
    return body


class MongoRecorder:
    """A recording relay in front of a MongoDB-protocol server at ``address`` (host:port)."""

    def __init__(self, address: str, host: str = "127.0.0.1") -> None:
        self.address = address
        self.host = host
        self._lock = threading.Lock()
        self._seq = 0
        self._commands: list[MongoCommand] = []
        self._listener: socket.socket | None = None
        self._closed = threading.Event()

    @property
    def url(self) -> str:
        assert self._listener is not None
        return f"mongodb://{self.host}:{self._listener.getsockname()[1]}/"

    @property
    def seq(self) -> int:
        with self._lock:
            return self._seq

    def start(self) -> MongoRecorder:
        self._listener = socket.create_server((self.host, 0))
        threading.Thread(target=self._accept, daemon=True, name="mongodb-relay").start()
        return self

    def close(self) -> None:
        self._closed.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()

    def commands(self, since: int = 0) -> list[MongoCommand]:
        with self._lock:
            return [c for c in self._commands if c.seq > since]

    # -- relaying -----------------------------------------------------------------------
    def _accept(self) -> None:
        assert self._listener is not None
        host, port = self.address.rsplit(":", 1)
        while not self._closed.is_set():
            try:
                client, peer = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection((host, int(port)), timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(server, client, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(client, server, peer[1]),
                             daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, client_port: int | None) -> None:
        buf = b""
        try:
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                if client_port is not None:  # parse whole messages before passing them on
                    buf += chunk
                    while len(buf) >= 16:
                        (length,) = struct.unpack_from("<i", buf, 0)
                        if len(buf) < length:
                            break
                        msg, buf = buf[:length], buf[length:]
                        self._note(msg, client_port)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def _note(self, msg: bytes, client_port: int) -> None:
        (op,) = struct.unpack_from("<i", msg, 12)
        if op != OP_MSG:
            return
        try:
            body = parse_op_msg(msg[16:])
        except Exception:  # not ours to judge: the server answers malformed messages
            return
        if not body:
            return
        name = next(iter(body))
        if name.lower() not in _WRITES:
            return
        with self._lock:
            self._seq += 1
            self._commands.append(MongoCommand(self._seq, client_port, name,
                                               str(body.get("$db", "")), str(body[name]), body))


# --------------------------------------------------------------------------------------
# documents -> Go JSON
# --------------------------------------------------------------------------------------


def apply_write(docs: dict[str, dict[str, Any]], cmd: MongoCommand) -> list[str]:
    """Apply one command to ``docs`` (``_id`` -> document); the ``_id``s it wrote."""
    touched = []
    if cmd.name == "insert":
        for d in cmd.body.get("documents", ()):
            docs.setdefault(str(d["_id"]), dict(d))
            touched.append(str(d["_id"]))
    elif cmd.name == "update":
        for u in cmd.body.get("updates", ()):
            q, change = u.get("q", {}), u.get("u", {})
            key = q.get("_id")
            if not isinstance(key, str):
                continue
            old = docs.get(key)
            if old is None:
                if not u.get("upsert"):
                    continue
                old = {"_id": key}
            elif any(old.get(k) != v for k, v in q.items() if k != "_id"):
                continue  # the filter did not match (e.g. chord_triggered: false)
            if any(k.startswith("$") for k in change):
                new = dict(old)
                new.update(change.get("$set", {}))
                for k in change.get("$unset", {}):
                    new.pop(k, None)
            else:
                new = {"_id": key, **change}
            docs[key] = new
            touched.append(key)
    elif cmd.name == "delete":
        for d in cmd.body.get("deletes", ()):
            key = d.get("q", {}).get("_id")
            if isinstance(key, str):
                docs.pop(key, None)
    return touched


def go_string(s: str) -> str:
    """``s`` as Go's encoding/json writes it (HTML-escaped)."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in "\n\r\t\b\f":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}[ch])
        elif o < 0x20 or ch in "<>&\u2028\u2029":
            out.append(f"\\u{o:04x}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append("\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _f32(x: float) -> float:
    try:
        return float(struct.unpack("<f", struct.pack("<f", x))[0])
    except OverflowError:
        return float("inf")


def _shortest(x: float, bits: int) -> tuple[int, str, int]:
    """(sign, digits, exponent of the first digit) of the shortest decimal that reads back as
    ``x`` (non-zero) at ``bits`` precision."""
    if bits == 64:
        text = repr(x)
    else:
        text = next(t for p in range(1, 10) if _f32(float(t := f"{x:.{p - 1}e}")) == x)
    sign, digits, exp = Decimal(text).normalize().as_tuple()
    assert isinstance(exp, int)
    return sign, "".join(map(str, digits)), len(digits) + exp - 1


def go_float(x: float, bits: int = 64) -> str:
    """``x`` as Go's encoding/json writes a float64 (``bits`` 64) or float32."""
    if x == 0:
        return "-0" if str(x).startswith("-") else "0"
    ax = abs(x)
    sign, ds, e = _shortest(x, bits)
    s = "-" if sign else ""
    if ax < 1e-6 or ax >= 1e21:
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{s}{mant}e{'-' if e < 0 else '+'}{abs(e):02d}".replace("e-0", "e-")
    if e >= 0:
        whole = ds[:e + 1].ljust(e + 1, "0")
        frac = ds[e + 1:]
        return s + whole + ("." + frac if frac else "")
    return s + "0." + "0" * (-e - 1) + ds


def _go_value(v: Any, type_name: str = "") -> str:
    from bson.binary import Binary
    from bson.datetime_ms import DatetimeMS

    el = type_name[2:] if type_name.startswith("[]") else type_name
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        if v < 0 and el in _UNSIGNED:
            v += 1 << 64
        return str(v)
    if isinstance(v, float):
        return go_float(v, 32 if el == "float32" else 64)
    if isinstance(v, str):
        return go_string(v)
    if isinstance(v, (bytes, Binary)):
        return go_string(base64.b64encode(bytes(v)).decode())
    if isinstance(v, DatetimeMS):
        return go_string(go_time(v))
    if isinstance(v, list):
        return "[" + ",".join(_go_value(x, el) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ",".join(go_string(str(k)) + ":" + _go_value(x) for k, x in v.items()) + "}"
    return go_string(str(v))


def go_time(ms: Any) -> str:
    """A BSON date as Go's RFC 3339 with trailing zeros of the fraction dropped."""
    import datetime

    n = int(ms) if ms is not None else None
    if n is None:
        return "0001-01-01T00:00:00Z"
    t = datetime.datetime.fromtimestamp(n // 1000, datetime.UTC)
    frac = f"{n % 1000:03d}".rstrip("0")
    return t.strftime("%Y-%m-%dT%H:%M:%S") + ("." + frac if frac else "") + "Z"


def task_state_json(doc: Mapping[str, Any]) -> bytes:
    """A ``tasks`` document as the Go TaskState JSON Go's reader would make of it."""
    results = doc.get("results")
    res = "null" if results is None else "[" + ",".join(
        '{"Type":' + go_string(str(r.get("type", ""))) + ',"Value":'
        + _go_value(r.get("value"), str(r.get("type", ""))) + "}" for r in results) + "]"
    return ('{"TaskUUID":' + go_string(str(doc["_id"]))
            + ',"TaskName":' + go_string(str(doc.get("task_name") or ""))
            + ',"State":' + go_string(str(doc.get("state") or ""))
            + ',"Results":' + res
            + ',"Error":' + go_string(str(doc.get("error") or ""))
            + ',"CreatedAt":"' + go_time(doc.get("created_at")) + '"'
            + ',"TTL":' + str(int(doc.get("ttl") or 0)) + "}").encode()


class MongoTap:
    """One scenario's view of a :class:`MongoRecorder` (the writes after :meth:`start`)."""

    def __init__(self, recorder: MongoRecorder, collection: str = "tasks") -> None:
        self.recorder = recorder
        self.collection = collection
        self._base = 0
        self._stopped_at: int | None = None

    def start(self) -> MongoTap:
        self._base = self.recorder.seq
        return self

    def stop(self) -> None:
        if self._stopped_at is None:
            self._stopped_at = self.recorder.seq

    def snapshot(self) -> list[MongoCommand]:
        cmds = self.recorder.commands(self._base)
        if self._stopped_at is not None:
            cmds = [c for c in cmds if c.seq <= self._stopped_at]
        return cmds

    def documents_after_writes(self, uuid: str) -> list[tuple[MongoCommand, dict[str, Any]]]:
        """Each write of ``uuid``'s document with the document right after it (the document
        is rebuilt from this scenario's writes: a PENDING is every task's first)."""
        docs: dict[str, dict[str, Any]] = {}
        out = []
        for c in self.snapshot():
            if c.collection != self.collection:
                continue
            if uuid in apply_write(docs, c):
                out.append((c, dict(docs[uuid])))
        return out

    def state_writes(self, uuid: str) -> list[bytes]:
        return [task_state_json(d) for c, d in self.documents_after_writes(uuid)
                if c.name != "delete"]

    def states(self, uuid: str) -> list[str]:
        out = []
        for body in self.state_writes(uuid):
            m = _STATE.search(body)
            if m:
                out.append(m.group(1).decode())
        return out

    def set_fields(self, uuid: str) -> list[dict[str, Any]]:
        """The ``$set`` documents written to ``uuid``, in order."""
        return [u["u"]["$set"] for c in self.snapshot()
                if c.collection == self.collection and c.name == "update"
                for u in c.body.get("updates", ())
                if u.get("q", {}).get("_id") == uuid and "$set" in u.get("u", {})]


def state_json_of(docs: Sequence[Mapping[str, Any]]) -> list[bytes]:
    return [task_state_json(d) for d in docs]


# --------------------------------------------------------------------------------------
# what Go Machinery cannot do on MongoDB (the matrix modules' MongoDB expectations)
# --------------------------------------------------------------------------------------

I64_MAX = (1 << 63) - 1

#: Why echo values with an unsigned integer above int64's range are not sent to a Go worker on
#: MongoDB in the matrix (test_interop_mongodb.py pins what Go does with them instead).
GO_CANNOT_STORE = (
    "a Go worker cannot store an unsigned integer above int64's range on MongoDB: its "
    "SetStateSuccess fails (`cannot marshal type primitive.M to a BSON Document: "
    "18446744073709551615 overflows int64`), the task stays STARTED, and the error ends the "
    "consume loop: Machinery restarts it, and on a Redis broker the old loop's BLPOP goroutine "
    "is left running and swallows the next messages (test_interop_mongodb.py)")


def go_cannot_store(value: Any) -> bool:
    """Whether a Go worker's result ``value`` has an integer above int64's range."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value > I64_MAX
    if isinstance(value, (list, tuple)):
        return any(go_cannot_store(v) for v in value)
    return False


_GO_BINARY_PANIC = "panic: reflect: call of reflect.Value.Len on struct Value"


def _go_writes_int64(el: str, x: Any) -> bool:
    """Whether Go's BSON driver stores a Go ``el`` value ``x`` as the BSON int64 its reader
    wants: int8/int16/int32 (and uint8/uint16) become int32, an ``int`` int32 when it fits."""
    if el in ("int8", "int16", "int32"):
        return False
    if el == "int":
        return not -(1 << 31) <= x < 1 << 31
    return True


def go_read_error(go_type: str, value: Any) -> str | None:
    """The error Go's ``AsyncResult`` (mcproducer) reports reading a Go worker's ``go_type``
    result ``value`` from MongoDB (state SUCCESS, no values); None: it reads the value.
    Machinery's reflection takes only a BSON int64 for a signed integer Type, which Go's own
    writer does not always store (:func:`_go_writes_int64`), and no BSON integer for an
    unsigned one (BSON has none): the error names the first element it refused
    (``-128 is not int8``, ``0 is not uint64``).  A ``[]uint8`` result is stored as a BSON
    binary, on which Machinery's reflection panics (mcproducer reports the panic)."""
    if go_type == "[]uint8":
        return _GO_BINARY_PANIC
    el, items = (go_type[2:], value) if go_type.startswith("[]") else (go_type, [value])
    for x in items or ():
        if isinstance(x, bool) or not isinstance(x, int):
            continue
        if el in _UNSIGNED or not _go_writes_int64(el, x):
            return f"{x} is not {el}"
    return None


#: Why the -0 float edge values are left out on the MongoDB columns (the test server's
#: limitation, not Go's: MongoDB keeps the sign; Go writes and reads -0 as a BSON double).
FERRETDB_NEGATIVE_ZERO = (
    "the test server, FerretDB 1.24 on SQLite, stores -0.0 as 0 (MongoDB keeps the sign), so "
    "values with a -0 are left out on the MongoDB columns; the other float edge values run")


def negative_zero(value: Any) -> bool:
    """Whether ``value`` is, or has, a -0.0 (FerretDB loses its sign)."""
    if isinstance(value, float):
        return value == 0 and str(value).startswith("-")
    if isinstance(value, (list, tuple)):
        return any(negative_zero(v) for v in value)
    return False


def go_read_error_of_python(go_type: str, value: Any) -> str | None:
    """The error Go's ``AsyncResult`` reports reading a *Python* worker's ``go_type`` result
    ``value`` from MongoDB; None: it reads the value.  Python stores every integer as a BSON
    int64 (an unsigned one above int64's range as its two's complement, which Python reads
    back), which Go reads for signed Types only: for an unsigned Type it names the first
    element as stored (``-1 is not uint64`` for 18446744073709551615)."""
    el, items = (go_type[2:], value) if go_type.startswith("[]") else (go_type, [value])
    if el not in _UNSIGNED or go_type == "[]uint8":
        return None
    for x in items or ():
        return f"{x - (1 << 64) if x > I64_MAX else x} is not {el}"
    return None
