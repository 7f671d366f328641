"""Cron specs exactly as Machinery reads them: robfig/cron v3's ``ParseStandard`` and the
next-fire computation of its schedules.

.. code-block:: python

    from machinery_compat.periodic import parse_spec

    s = parse_spec("*/15 9-17 * * MON-FRI")
    s.next(time.time_ns())              # Unix ns of the next activation after now, or None
    parse_spec("@every 1h30m")          # Go durations: 1h30m, 90s, 1.5h, 300ms (-> 1s) ...
    parse_spec("CRON_TZ=Europe/Paris 0 9 * * *")

The grammar (nothing more is accepted, nothing less):

* five fields ``minute hour day-of-month month day-of-week`` separated by white space; no
  seconds field; each field a comma list of ``*``, ``?``, ``N``, ``N-M``, with an optional
  ``/step`` (``N/step`` means ``N-max/step``); months ``JAN``-``DEC`` and days ``SUN``-``SAT``
  by name, any case; day-of-week 0-6 (7 is refused), day-of-month 1-31, month 1-12;
* descriptors ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily``
  (``@midnight``), ``@hourly`` and ``@every <Go duration>`` (under a second counts as one
  second, fractions of a second are dropped);
* an optional ``CRON_TZ=<zone> `` or ``TZ=<zone> `` prefix; without one, the schedule runs in
  the local zone as Go sees it (``$TZ``, else ``/etc/localtime``).

robfig's quirks are kept, since a Go scheduler has them too: day-of-month and day-of-week are
OR-ed only when neither field contains ``*``/``?`` (``*/2`` does not count as a star, ``*/1``
does); ``*-5`` is read as ``*``; an empty list (``,``) never fires; ``@every`` schedules count
from when the scheduler started (aligned on whole seconds), not from the clock; a wall time
that a daylight-saving change skips or repeats resolves as Go's ``time.Date`` does it;
nothing is found more than five years ahead (``next`` returns None, as Go's zero time).
One deliberate difference: where a zone skipped a whole calendar day (Samoa, 2011-12-30), Go's
``Next`` loops forever looking for that day (its scheduler hangs); here the search moves on.

Pure: no I/O but the time zone database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ..exceptions import ConfigError
from . import _go
from ._go import GoError, Wall, Zone, go_date

__all__ = ["EverySchedule", "Schedule", "SpecError", "SpecSchedule", "parse_spec"]

_STAR = 1 << 63
_SECOND = 1_000_000_000


class SpecError(ConfigError):
    """A periodic-task spec robfig/cron's ``ParseStandard`` refuses; ``str()`` is Go's error
    text (or says why Go would panic)."""

    def __init__(self, spec: str, message: str) -> None:
        super().__init__(message)
        self.spec = spec
        self.message = message


@dataclass(frozen=True)
class _Bounds:
    low: int
    high: int
    names: dict[str, int] | None = None


_MINUTES = _Bounds(0, 59)
_HOURS = _Bounds(0, 23)
_DOM = _Bounds(1, 31)
_MONTHS = _Bounds(1, 12, {m: i + 1 for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))})
_DOW = _Bounds(0, 6, {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri",
                                                   "sat"))})


def _bits(low: int, high: int, step: int = 1) -> int:
    out = 0
    for i in range(low, high + 1, step):
        out |= 1 << i
    return out


def _all(b: _Bounds) -> int:
    return _bits(b.low, b.high) | _STAR


class Schedule:
    """A parsed spec: :meth:`next` gives the activation after a time."""

    spec: str

    def next(self, after_ns: int, local: Zone | None = None) -> int | None:
        """Unix nanoseconds of the first activation strictly after ``after_ns`` (always a
        whole second), or None when there is none within five years.  ``local``: Go's
        ``time.Local`` (default: this process's, see :func:`machinery_compat.periodic._go.local`)."""
        raise NotImplementedError

    def next_datetime(self, after: datetime, local: Zone | None = None) -> datetime | None:
        """:meth:`next` for an aware datetime; the result is in the schedule's zone."""
        ns = self.next(_go.datetime_to_unix_ns(after), local)
        if ns is None:
            return None
        return _go.unix_to_datetime(ns, self.zone(local))

    def zone(self, local: Zone | None = None) -> Zone:
        """The zone this schedule's wall clock is read in."""
        return local or _go.local()


@dataclass(frozen=True)
class EverySchedule(Schedule):
    """``@every <duration>``: ``delay_ns`` after the previous activation (Go's
    ``ConstantDelaySchedule``: whole seconds, at least one)."""

    spec: str
    delay_ns: int

    def next(self, after_ns: int, local: Zone | None = None) -> int | None:
        return after_ns - after_ns % _SECOND + self.delay_ns


@dataclass(frozen=True)
class SpecSchedule(Schedule):
    """Five cron fields as bit sets (Go's ``SpecSchedule``; bit 63 marks a ``*``/``?``);
    ``location`` None means Go's ``time.Local``."""

    spec: str
    minute: int
    hour: int
    dom: int
    month: int
    dow: int
    location: Zone | None = field(default=None)
    second: int = 1  # always 0: ParseStandard has no seconds field

    def zone(self, local: Zone | None = None) -> Zone:
        if self.location is not None:
            return self.location
        return local or _go.local()

    def _day_matches(self, w: Wall) -> bool:
        dom_ok = bool((1 << w.day) & self.dom)
        dow_ok = bool((1 << w.weekday) & self.dow)
        if self.dom & _STAR or self.dow & _STAR:
            return dom_ok and dow_ok
        return dom_ok or dow_ok

    def next(self, after_ns: int, local: Zone | None = None) -> int | None:
        z = self.zone(local)
        # the next whole second strictly after
        t = after_ns // _SECOND + 1
        added = False
        year_limit = Wall(t, z).year + 5
        while True:  # each pass is robfig's WRAP label
            w = Wall(t, z)
            if w.year > year_limit:
                return None
            wrapped = False
            while not (1 << w.month) & self.month:
                if not added:
                    added = True
                    t = go_date(w.year, w.month, 1, 0, 0, 0, z)
                    w = Wall(t, z)
                t = _forward(t, go_date(w.year, w.month + 1, w.day, w.hour, w.minute,
                                        w.second, z))
                w = Wall(t, z)
                if w.month == 1:
                    wrapped = True
                    break
            if wrapped:
                continue
            while not self._day_matches(w):
                if not added:
                    added = True
                    t = go_date(w.year, w.month, w.day, 0, 0, 0, z)
                    w = Wall(t, z)
                t = _forward(t, go_date(w.year, w.month, w.day + 1, w.hour, w.minute,
                                        w.second, z))
                w = Wall(t, z)
                if w.hour != 0:  # midnight skipped or repeated by a DST change
                    t += (24 - w.hour) * 3600 if w.hour > 12 else -w.hour * 3600
                    w = Wall(t, z)
                if w.day == 1:
                    wrapped = True
                    break
            if wrapped:
                continue
            while not (1 << w.hour) & self.hour:
                if not added:
                    added = True
                    t = go_date(w.year, w.month, w.day, w.hour, 0, 0, z)
                t += 3600
                w = Wall(t, z)
                if w.hour == 0:
                    wrapped = True
                    break
            if wrapped:
                continue
            while not (1 << w.minute) & self.minute:
                if not added:
                    added = True
                    t -= t % 60  # Truncate(time.Minute): on absolute time, not the wall clock
                t += 60
                w = Wall(t, z)
                if w.minute == 0:
                    wrapped = True
                    break
            if wrapped:
                continue
            while not (1 << w.second) & self.second:
                added = True
                t += 1
                w = Wall(t, z)
                if w.second == 0:
                    wrapped = True
                    break
            if wrapped:
                continue
            return t * _SECOND


def _forward(before: int, after: int) -> int:
    """``after``, unless a date step went nowhere: robfig loops forever there (a whole day
    skipped by its zone, such as 2011-12-30 in Samoa, maps back onto the day before); this
    moves on by one day instead."""
    return after if after > before else before + 86400


# -- parsing --------------------------------------------------------------------------------
def parse_spec(spec: str) -> Schedule:
    """robfig/cron v3 ``ParseStandard(spec)``; :class:`SpecError` with Go's message when it
    refuses the spec (or would panic on it)."""
    if not spec:
        raise SpecError(spec, "empty spec string")
    text = spec
    location: Zone | None = None
    if text.startswith(("TZ=", "CRON_TZ=")):
        space = text.find(" ")
        eq = text.find("=")
        if space < 0:
            raise SpecError(spec, f"{spec!r}: a time zone prefix must be followed by a space "
                                  "and the schedule (Go's cron panics on this spec)")
        name = text[eq + 1:space]
        try:
            zone = _go.load_location(name)
        except GoError as e:
            raise SpecError(spec, f"provided bad location {name}: {e}") from None
        location = None if zone.is_local else zone
        text = _go.trim_space(text[space:])
    if text.startswith("@"):
        return _descriptor(spec, text, location)
    parts = _go.fields(text)
    if len(parts) != 5:
        raise SpecError(spec, f"expected exactly 5 fields, found {len(parts)}: "
                              f"[{' '.join(parts)}]")
    try:
        minute = _field(parts[0], _MINUTES)
        hour = _field(parts[1], _HOURS)
        dom = _field(parts[2], _DOM)
        month = _field(parts[3], _MONTHS)
        dow = _field(parts[4], _DOW)
    except GoError as e:
        raise SpecError(spec, str(e)) from None
    return SpecSchedule(spec, minute, hour, dom, month, dow, location)


def _descriptor(spec: str, text: str, location: Zone | None) -> Schedule:
    fixed = {
        "@yearly": (1, 1 << 0, 1 << 1, 1 << 1, _all(_DOW)),
        "@annually": (1, 1 << 0, 1 << 1, 1 << 1, _all(_DOW)),
        "@monthly": (1, 1 << 0, 1 << 1, _all(_MONTHS), _all(_DOW)),
        "@weekly": (1, 1 << 0, _all(_DOM), _all(_MONTHS), 1 << 0),
        "@daily": (1, 1 << 0, _all(_DOM), _all(_MONTHS), _all(_DOW)),
        "@midnight": (1, 1 << 0, _all(_DOM), _all(_MONTHS), _all(_DOW)),
        "@hourly": (1, _all(_HOURS), _all(_DOM), _all(_MONTHS), _all(_DOW)),
    }
    if text in fixed:
        minute, hour, dom, month, dow = fixed[text]
        return SpecSchedule(spec, minute, hour, dom, month, dow, location)
    if text.startswith("@every "):
        try:
            d = _go.parse_duration(text[len("@every "):])
        except GoError as e:
            raise SpecError(spec, f"failed to parse duration {text}: {e}") from None
        d = max(d, _SECOND)
        return EverySchedule(spec, d - d % _SECOND)
    raise SpecError(spec, f"unrecognized descriptor: {text}")


def _field(text: str, b: _Bounds) -> int:
    bits = 0
    for expr in text.split(","):
        if expr:  # strings.FieldsFunc drops empty parts
            bits |= _range(expr, b)
    return bits


def _range(expr: str, b: _Bounds) -> int:
    range_and_step = expr.split("/")
    low_high = range_and_step[0].split("-")
    single = len(low_high) == 1
    extra = 0
    if low_high[0] in ("*", "?"):
        start, end, extra = b.low, b.high, _STAR
    else:
        start = _int_or_name(low_high[0], b.names)
        if len(low_high) == 1:
            end = start
        elif len(low_high) == 2:
            end = _int_or_name(low_high[1], b.names)
        else:
            raise GoError(f"too many hyphens: {expr}")
    if len(range_and_step) == 1:
        step = 1
    elif len(range_and_step) == 2:
        step = _uint(range_and_step[1])
        if single:
            end = b.high
        if step > 1:
            extra = 0
    else:
        raise GoError(f"too many slashes: {expr}")
    if start < b.low:
        raise GoError(f"beginning of range ({start}) below minimum ({b.low}): {expr}")
    if end > b.high:
        raise GoError(f"end of range ({end}) above maximum ({b.high}): {expr}")
    if start > end:
        raise GoError(f"beginning of range ({start}) beyond end of range ({end}): {expr}")
    if step == 0:
        raise GoError(f"step of range should be a positive number: {expr}")
    return _bits(start, end, step) | extra


def _int_or_name(expr: str, names: dict[str, int] | None) -> int:
    if names is not None and expr.lower() in names:
        return names[expr.lower()]
    return _uint(expr)


def _uint(expr: str) -> int:
    try:
        n = _go.atoi(expr)
    except GoError as e:
        raise GoError(f"failed to parse int from {expr}: {e}") from None
    if n < 0:
        raise GoError(f"negative number ({n}) not allowed: {expr}")
    return n
