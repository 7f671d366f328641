"""The pieces of Go's standard library robfig/cron's parser and schedules lean on, re-done in
Python with Go's exact results (written from their documented behaviour and checked against Go
by ``tests/data/cron_next.json``):

* ``strings.Fields`` / ``strings.TrimSpace`` (Go's ``unicode.IsSpace``, not Python's);
* ``strconv.Atoi`` and the text of its errors;
* ``time.ParseDuration`` (``1h30m``, ``1.5h``, ``300ms``, ``µs``…) and its errors;
* ``time.LoadLocation`` and ``time.Local`` (``TZ`` environment variable, ``/etc/localtime``);
* ``time.Date`` / ``AddDate`` in a location: a wall-clock time that does not exist (a
  daylight-saving gap) or exists twice resolves to the instant Go picks, which is not what
  Python's ``fold`` gives.

Pure: no sockets; only the time zone database is read.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_INT64_MAX = (1 << 63) - 1

#: Go's unicode.IsSpace
_GO_SPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                      + "".join(chr(c) for c in range(0x2000, 0x200B)))


class GoError(ValueError):
    """An error with the text the Go function returns."""


# -- strings --------------------------------------------------------------------------------
def fields(s: str) -> list[str]:
    """Go's ``strings.Fields``: ``s`` split around runs of Go white space."""
    out: list[str] = []
    cur: list[str] = []
    for c in s:
        if c in _GO_SPACE:
            if cur:
                out.append("".join(cur))
                cur = []
        else:
            cur.append(c)
    if cur:
        out.append("".join(cur))
    return out


def trim_space(s: str) -> str:
    """Go's ``strings.TrimSpace``."""
    i, j = 0, len(s)
    while i < j and s[i] in _GO_SPACE:
        i += 1
    while j > i and s[j - 1] in _GO_SPACE:
        j -= 1
    return s[i:j]


def strconv_quote(s: str) -> str:
    """Go's ``strconv.Quote`` (``%q``) for the strings an error message shows."""
    out = ['"']
    simple = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
              "\v": "\\v", '"': '\\"', "\\": "\\\\"}
    for c in s:
        if c in simple:
            out.append(simple[c])
        elif c == " " or (c.isprintable() and c not in _GO_SPACE):
            out.append(c)
        elif ord(c) < 0x80:
            out.append(f"\\x{ord(c):02x}")
        elif ord(c) < 0x10000:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    out.append('"')
    return "".join(out)


def time_quote(s: str) -> str:
    """The ``time`` package's own quoting (in ParseDuration errors): bytes outside printable
    ASCII as ``\\xNN``."""
    out = ['"']
    for c in s:
        if ord(c) < 0x20 or ord(c) >= 0x80:
            out.extend(f"\\x{b:02x}" for b in c.encode("utf-8", "surrogatepass"))
        else:
            out.append("\\" + c if c in '"\\' else c)
    out.append('"')
    return "".join(out)


# -- strconv.Atoi ---------------------------------------------------------------------------
def atoi(s: str) -> int:
    """Go's ``strconv.Atoi`` on a 64-bit machine: an optional sign and ASCII digits only,
    within int64; :class:`GoError` with Go's text otherwise."""

    def error(why: str) -> GoError:
        return GoError(f"strconv.Atoi: parsing {strconv_quote(s)}: {why}")

    body = s
    neg = False
    if body[:1] in ("+", "-"):
        neg = body[0] == "-"
        body = body[1:]
    if not body:
        raise error("invalid syntax")
    if len(s) < 19:  # Go's fast path: any non-digit is a syntax error
        if not all("0" <= c <= "9" for c in body):
            raise error("invalid syntax")
        n = int(body)
        return -n if neg else n
    # ParseUint: the first non-digit is a syntax error, the first overflow a range error
    n = 0
    for c in body:
        if not "0" <= c <= "9":
            raise error("invalid syntax")
        n = n * 10 + (ord(c) - 48)
        if n > (1 << 64) - 1:
            raise error("value out of range")
    if (not neg and n > _INT64_MAX) or (neg and n > _INT64_MAX + 1):
        raise error("value out of range")
    return -n if neg else n


# -- time.ParseDuration ---------------------------------------------------------------------
_UNITS = {b"ns": 1, b"us": 1_000, "µs".encode(): 1_000, "μs".encode(): 1_000,
          b"ms": 1_000_000, b"s": 1_000_000_000, b"m": 60_000_000_000,
          b"h": 3_600_000_000_000}


def parse_duration(text: str) -> int:
    """Go's ``time.ParseDuration``: nanoseconds, or :class:`GoError` with Go's text.

    ``[-+]?([0-9]*(\\.[0-9]*)?[a-z]+)+`` with units ns, us (µs, μs), ms, s, m, h; ``"0"``
    alone needs no unit; fractions are scaled through float64 as Go does."""
    s = text.encode("utf-8", "surrogatepass")

    def invalid(what: str = "invalid duration") -> GoError:
        return GoError(f"time: {what} {time_quote(text)}")

    neg = False
    if s[:1] in (b"-", b"+"):
        neg = s[:1] == b"-"
        s = s[1:]
    if s == b"0":
        return 0
    if not s:
        raise invalid()
    total = 0
    while s:
        if not (s[0] == 0x2E or 0x30 <= s[0] <= 0x39):
            raise invalid()
        i = 0
        v = 0
        while i < len(s) and 0x30 <= s[i] <= 0x39:
            if v > (1 << 63) // 10:
                raise invalid()
            v = v * 10 + s[i] - 0x30
            if v > 1 << 63:
                raise invalid()
            i += 1
        pre = i > 0
        s = s[i:]
        f, scale, post = 0, 1.0, False
        if s[:1] == b".":
            s = s[1:]
            i = 0
            overflow = False
            while i < len(s) and 0x30 <= s[i] <= 0x39:
                if not overflow:
                    if f > ((1 << 63) - 1) // 10:
                        overflow = True
                    else:
                        y = f * 10 + s[i] - 0x30
                        if y > 1 << 63:
                            overflow = True
                        else:
                            f = y
                            scale *= 10
                i += 1
            post = i > 0
            s = s[i:]
        if not pre and not post:
            raise invalid()
        i = 0
        while i < len(s) and not (s[i] == 0x2E or 0x30 <= s[i] <= 0x39):
            i += 1
        if i == 0:
            raise invalid("missing unit in duration")
        unit_bytes, s = s[:i], s[i:]
        unit = _UNITS.get(unit_bytes)
        if unit is None:
            u = unit_bytes.decode("utf-8", "surrogateescape")
            raise invalid(f"unknown unit {time_quote(u)} in duration")
        if v > (1 << 63) // unit:
            raise invalid()
        v *= unit
        if f > 0:
            v += int(float(f) * (float(unit) / scale))
            if v > 1 << 63:
                raise invalid()
        total = (total + v) & ((1 << 64) - 1)  # uint64, as Go's
        if total > 1 << 63:
            raise invalid()
    if neg:
        return -total
    if total > _INT64_MAX:
        raise invalid()
    return total


# -- locations ------------------------------------------------------------------------------
class Zone:
    """A Go ``*time.Location``: the UTC offset in force at any instant."""

    def __init__(self, name: str, zoneinfo: ZoneInfo | None = None, *,
                 is_local: bool = False) -> None:
        self.name = name
        self._zi = zoneinfo
        #: whether this is Go's ``time.Local`` (a spec without ``CRON_TZ=``)
        self.is_local = is_local

    def offset(self, unix: int) -> int:
        """Seconds east of UTC at the Unix time ``unix`` (seconds)."""
        if self._zi is None:
            return 0
        off = (_EPOCH + timedelta(seconds=unix)).astimezone(self._zi).utcoffset()
        return int(off.total_seconds()) if off is not None else 0

    def tzinfo(self) -> tzinfo:
        """A :mod:`datetime` tzinfo for display."""
        return self._zi if self._zi is not None else UTC

    def __repr__(self) -> str:
        return f"<Zone {self.name}{' (Local)' if self.is_local else ''}>"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Zone) and self.name == other.name
                and self.is_local == other.is_local)

    def __hash__(self) -> int:
        return hash((self.name, self.is_local))


UTC_ZONE = Zone("UTC")


def load_location(name: str) -> Zone:
    """Go's ``time.LoadLocation``: ``""`` and ``UTC`` are UTC, ``Local`` is :func:`local`,
    anything else an IANA name from the system's time zone database."""
    if name in ("", "UTC"):
        return UTC_ZONE
    if name == "Local":
        return local()
    if ".." in name or name[0] in "/\\":
        raise GoError("time: invalid location name")
    try:
        return Zone(name, ZoneInfo(name))
    except Exception:
        raise GoError(f"unknown time zone {name}") from None


_local: Zone | None = None
_local_lock = threading.Lock()


def _load_local() -> Zone:
    tz = os.environ.get("TZ")
    try:
        if tz is None:
            with open("/etc/localtime", "rb") as f:
                return Zone("Local", ZoneInfo.from_file(f, key="localtime"), is_local=True)
        tz = tz.removeprefix(":")
        if tz.startswith("/"):
            with open(tz, "rb") as f:
                return Zone("Local", ZoneInfo.from_file(f, key=tz), is_local=True)
        if tz and tz != "UTC":
            return Zone("Local", ZoneInfo(tz), is_local=True)
    except Exception:
        pass
    return Zone("Local", None, is_local=True)  # Go falls back to UTC


def local() -> Zone:
    """Go's ``time.Local`` as a Go program started now would have it: ``$TZ`` (``""`` = UTC,
    ``:name`` = name, an absolute path = that file, a bad name = UTC), else ``/etc/localtime``
    (missing: UTC).  Read once per process."""
    global _local
    with _local_lock:
        if _local is None:
            _local = _load_local()
        return _local


def set_local(zone: Zone | str | None) -> None:
    """Replace this process's idea of ``time.Local`` (``None``: read it again); a name is
    loaded from the time zone database."""
    global _local
    with _local_lock:
        if zone is None:
            _local = None
        elif isinstance(zone, str):
            z = load_location(zone) if zone != "Local" else _load_local()
            _local = Zone("Local", z._zi, is_local=True)
        else:
            _local = Zone("Local", zone._zi, is_local=True)


# -- wall clock arithmetic ------------------------------------------------------------------
class Wall:
    """The wall-clock fields of an instant in a zone (Go's ``t.Date()``, ``t.Clock()``,
    ``t.Weekday()``)."""

    __slots__ = ("day", "hour", "minute", "month", "second", "weekday", "year")

    def __init__(self, unix: int, zone: Zone) -> None:
        local_secs = unix + zone.offset(unix)
        days, secs = divmod(local_secs, 86400)
        d = date.fromordinal(days + _EPOCH_ORDINAL)
        self.year, self.month, self.day = d.year, d.month, d.day
        self.hour, rest = divmod(secs, 3600)
        self.minute, self.second = divmod(rest, 60)
        self.weekday = (days + 4) % 7  # 1970-01-01 was a Thursday; Sunday = 0


def go_date(year: int, month: int, day: int, hour: int, minute: int, second: int,
            zone: Zone) -> int:
    """Go's ``time.Date`` (whole seconds): the Unix time of that wall clock in ``zone``.

    Out-of-range fields are normalised (October 32 = November 1); a wall time in a gap or an
    overlap gets the offset Go's two-step lookup finds: the offset in force at the wall time
    read as UTC, then the offset in force at the instant that gives."""
    m0 = month - 1
    year += m0 // 12
    m0 %= 12
    days = date(year, m0 + 1, 1).toordinal() - _EPOCH_ORDINAL + day - 1
    wall = days * 86400 + hour * 3600 + minute * 60 + second
    return wall - zone.offset(wall - zone.offset(wall))


def datetime_to_unix_ns(dt: datetime) -> int:
    """Unix nanoseconds of an aware datetime (a naive one is local time, as Python reads it)."""
    if dt.tzinfo is None:
        dt = dt.astimezone()
    return (dt - _EPOCH) // timedelta(microseconds=1) * 1000


def unix_to_datetime(unix_ns: int, zone: Zone) -> datetime:
    """An aware datetime (microseconds) for a Unix time in nanoseconds."""
    return (_EPOCH + timedelta(microseconds=unix_ns // 1000)).astimezone(zone.tzinfo())
