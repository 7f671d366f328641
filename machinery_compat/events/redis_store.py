"""Events on Redis: the capped stream ``machinery_compat.events``.

Each stream entry holds one flush of a writer (the background flusher of :mod:`.emitter`):
one field, ``j``, holding the batch as one JSON array (:func:`.model.encode_batch`: event
objects and compact task events).  Entries written before 2026-12-05 have the field ``e``
instead, the events' JSON objects joined by newlines (or one event's): still read.  One
``XADD`` per batch, capped with ``MAXLEN ~ max_len // n`` for a batch of ``n`` events, so that the stream keeps about
``max_len`` events while batches are of about one size (Redis trims whole macro nodes: a
little more; right after a burst, until smaller batches have replaced its big ones, up to a
few times more).  Go Machinery never reads or writes a key of that name.

Readers: ``XRANGE`` (history, from a time: entry ids start with the Unix milliseconds of
the write) and ``XREAD BLOCK`` (follow).  Every event read carries its entry's id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Final

from ..exceptions import DecodeError
from .model import Event, decode_batch

logger = logging.getLogger(__name__)

#: the stream's key
STREAM: Final = "machinery_compat.events"
#: the entry field holding the batch's JSON array
FIELD: Final = "j"
#: the field of entries written before 2026-12-05: JSON objects, one per line
LINES_FIELD: Final = "e"

#: entries read per XRANGE call
_PAGE = 1000


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _field(fields: Any, name: str) -> Any:
    if not isinstance(fields, dict):
        return None
    raw = fields.get(name.encode())
    return fields.get(name) if raw is None else raw


def decode_entry(entry_id: Any, fields: Any) -> list[Event]:
    """The events of one stream entry (what is no event is logged and skipped)."""
    eid = _text(entry_id)
    raw = _field(fields, FIELD)
    if raw is not None:
        events, bad = decode_batch(raw, eid)
        for why in bad:
            logger.warning("event stream entry %s holds an item that is no event (%s): skipped",
                           eid, why)
        return events
    raw = _field(fields, LINES_FIELD)
    if raw is None:
        logger.warning("event stream entry %s has no %r field: skipped", eid, FIELD)
        return []
    out = []
    for line in (raw.split(b"\n") if isinstance(raw, bytes) else str(raw).split("\n")):
        if not line:
            continue
        try:
            out.append(Event.from_json(line, id=eid))
        except DecodeError as e:
            logger.warning("event stream entry %s holds no event (%s): skipped", eid, e)
    return out


class RedisEventStore:
    """Writes and reads the stream on one Redis client (the broker's or the backend's)."""

    kind = "redis"

    def __init__(self, client: Any, max_len: int, key: str = STREAM) -> None:
        self.client = client
        self.max_len = max_len
        self.key = key

    def write(self, batch: bytes, count: int) -> None:
        """Append a batch (:func:`.model.encode_batch` of ``count`` events) as one entry, in
        one round trip."""
        if count > 0:
            self.client.xadd(self.key, {FIELD: batch},
                             maxlen=max(self.max_len // count, 1), approximate=True)

    def history(self, since: float | None = None, limit: int | None = None) -> list[Event]:
        """The events kept, in the order written (each process's in the order it emitted
        them; two processes' batches interleave): from ``since`` (Unix seconds, compared
        with the write time) on, else all; with ``limit``, only the newest ``limit``."""
        if limit is not None:
            # every entry holds one event at least: the newest ``limit`` entries are enough
            entries = self.client.xrevrange(self.key, "+", self._start(since), count=limit)
            entries.reverse()
            events = [e for i, f in entries for e in decode_entry(i, f)]
            return events[-limit:] if limit > 0 else []
        return list(self._range(self._start(since)))

    def _range(self, start: str, end: str = "+") -> Iterator[Event]:
        while True:
            entries = self.client.xrange(self.key, start, end, count=_PAGE)
            for entry_id, fields in entries:
                yield from decode_entry(entry_id, fields)
            if len(entries) < _PAGE:
                return
            start = "(" + _text(entries[-1][0])

    @staticmethod
    def _start(since: float | None) -> str:
        return "-" if since is None else f"{max(int(since * 1000), 0)}-0"

    def follow(self, since: float | None, poll: float = 1.0) -> Iterator[Event | None]:
        """The events from ``since`` (None: from now) on, as they come; yields ``None`` every
        ``poll`` seconds without one (the caller decides when to stop)."""
        newest = self.client.xrevrange(self.key, "+", "-", count=1)
        last = _text(newest[0][0]) if newest else "0-0"
        if since is not None and newest:  # the history up to that entry, then the new ones
            yield from self._range(self._start(since), last)
        block = max(int(poll * 1000), 1)
        while True:
            reply = self.client.xread({self.key: last}, count=_PAGE, block=block)
            if not reply:
                yield None
                continue
            for _key, entries in reply:
                for entry_id, fields in entries:
                    last = _text(entry_id)
                    yield from decode_entry(entry_id, fields)

    def close(self) -> None:
        """The client is the broker's or backend's: nothing of its own to close."""
