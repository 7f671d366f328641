"""Go ``time.Time`` as Machinery writes and reads it (RFC 3339 with nanoseconds).

Python's :class:`datetime.datetime` has microseconds only; Go keeps nanoseconds
and writes them (``2024-05-01T12:34:56.123456789Z``).  :class:`GoTime` keeps the
exact Unix nanoseconds and the UTC offset so that a time read from a Go message
is written back byte for byte.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone
from typing import Final

from ..exceptions import DecodeError

_EPOCH: Final = datetime(1970, 1, 1)
_NS: Final = 1_000_000_000
#: Unix seconds of Go's zero time, 0001-01-01T00:00:00Z.
_ZERO_SECONDS: Final = -62135596800

# Go accepts only "T" and "Z" in upper case, and ASCII digits.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:(Z)|([+-])(\d{2}):(\d{2}))\Z",
    re.ASCII,
)


#: (local seconds, their "YYYY-MM-DDTHH:MM:SS") of the last time formatted: one tuple,
#: replaced whole, so threads never see a half-updated pair
_last_second: tuple[int, str] = (-(2**63), "")


def _remember_second(local: int, text: str) -> None:
    global _last_second
    _last_second = (local, text)


class GoTime:
    """An instant with nanosecond precision and a fixed UTC offset (seconds east)."""

    __slots__ = ("_text", "offset", "unix_ns")

    def __init__(self, unix_ns: int, offset: int = 0) -> None:
        self.unix_ns = unix_ns
        self.offset = offset
        self._text: str | None = None

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def now(cls) -> GoTime:
        """The current time in UTC, with the clock's full nanosecond resolution."""
        return cls(time.time_ns())

    @classmethod
    def zero(cls) -> GoTime:
        """Go's zero ``time.Time`` (``0001-01-01T00:00:00Z``)."""
        return _ZERO

    @classmethod
    def from_datetime(cls, dt: datetime) -> GoTime:
        """From a datetime; a naive datetime is taken as UTC."""
        off = dt.utcoffset()
        offset = int(off.total_seconds()) if off is not None else 0
        naive = dt.replace(tzinfo=None) - timedelta(seconds=offset)
        delta = naive - _EPOCH
        ns = (delta.days * 86400 + delta.seconds) * _NS + delta.microseconds * 1000
        return cls(ns, offset)

    @classmethod
    def parse(cls, text: str) -> GoTime:
        """Parse RFC 3339 as Go's ``time.Time.UnmarshalJSON`` does (offset required)."""
        m = _RFC3339.match(text)
        if m is None:
            raise DecodeError(f"parsing time {text!r}: not an RFC 3339 time with an offset", text)
        year, month, day, hour, minute, sec = (int(m.group(i)) for i in range(1, 7))
        frac = m.group(7) or ""
        try:
            base = datetime(year, month, day, hour, minute, sec)
        except ValueError as e:
            raise DecodeError(f"parsing time {text!r}: {e}", text) from e
        offset = 0
        if m.group(9):
            offset = int(m.group(10)) * 3600 + int(m.group(11)) * 60
            if m.group(9) == "-":
                offset = -offset
        nanos = int((frac + "000000000")[:9]) if frac else 0
        delta = base - _EPOCH
        seconds = delta.days * 86400 + delta.seconds - offset
        return cls(seconds * _NS + nanos, offset)

    # -- conversions --------------------------------------------------------------------
    def is_zero(self) -> bool:
        """Go's ``Time.IsZero``: the zero time ``0001-01-01T00:00:00Z``."""
        return self.unix_ns == _ZERO_SECONDS * _NS

    def to_datetime(self) -> datetime:
        """Aware datetime (microsecond precision: nanoseconds are truncated)."""
        sec, ns = divmod(self.unix_ns, _NS)
        tz = timezone(timedelta(seconds=self.offset))
        return (_EPOCH + timedelta(seconds=sec + self.offset, microseconds=ns // 1000)).replace(
            tzinfo=tz
        )

    def timestamp(self) -> float:
        """Unix time in seconds (float)."""
        return self.unix_ns / _NS

    def isoformat(self) -> str:
        """RFC 3339 exactly as Go's ``time.Time.MarshalJSON`` writes it (no quotes)."""
        text = self._text
        if text is None:
            sec, ns = divmod(self.unix_ns, _NS)
            local = sec + self.offset
            last = _last_second
            if last[0] == local:  # most times written are of the current second
                text = last[1]
            else:
                dt = _EPOCH + timedelta(seconds=local)
                text = (
                    f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T"
                    f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
                )
                _remember_second(local, text)
            if ns:
                text += "." + f"{ns:09d}".rstrip("0")
            if self.offset == 0:
                text += "Z"
            else:
                sign = "+" if self.offset > 0 else "-"
                h, m = divmod(abs(self.offset) // 60, 60)
                text += f"{sign}{h:02d}:{m:02d}"
            self._text = text
        return text

    def add_seconds(self, seconds: float) -> GoTime:
        """This time plus ``seconds`` (offset kept)."""
        return GoTime(self.unix_ns + round(seconds * _NS), self.offset)

    # -- dunder -------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GoTime):
            return NotImplemented
        return self.unix_ns == other.unix_ns and self.offset == other.offset

    def __hash__(self) -> int:
        return hash((self.unix_ns, self.offset))

    def __lt__(self, other: GoTime) -> bool:
        return self.unix_ns < other.unix_ns

    def __repr__(self) -> str:
        return f"GoTime({self.isoformat()!r})"

    def __str__(self) -> str:
        return self.isoformat()


_ZERO: Final = GoTime(_ZERO_SECONDS * _NS)
ZERO_TIME_TEXT: Final = "0001-01-01T00:00:00Z"
