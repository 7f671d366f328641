"""Events on Redis: the capped stream ``machinery_compat.events``.

Each event is one stream entry with one field, ``e``, holding the event's JSON.  Writers
(the background flusher of :mod:`.emitter`) add a whole batch in one round trip: a Lua
script, given the batch's JSON texts joined by newlines, doing ``XADD machinery_compat.events
MAXLEN ~ <max_len> * e <json>`` per event, so the stream keeps about ``max_len`` events (Redis trims whole macro nodes: a little more).
Go Machinery never reads or writes a key of that name.

Readers: ``XRANGE`` (history, from a time: entry ids start with the Unix milliseconds of
the write) and ``XREAD BLOCK`` (follow).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any, Final

from ..exceptions import DecodeError
from .model import Event

logger = logging.getLogger(__name__)

#: the stream's key
STREAM: Final = "machinery_compat.events"
#: the entry field holding an event's JSON
FIELD: Final = "e"

#: ARGV[1] the cap, ARGV[2] the events' JSON texts joined by newlines (JSON text has none:
#: one argument to pack instead of one per event)
_XADD_ALL: Final = """
local n = tonumber(ARGV[1])
local count = 0
for text in string.gmatch(ARGV[2], "[^\\n]+") do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', n, '*', 'e', text)
  count = count + 1
end
return count
"""

#: entries read per XRANGE call
_PAGE = 1000


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def decode_entry(entry_id: Any, fields: Any) -> Event | None:
    """The event of one stream entry (None, logged, for an entry that is no event)."""
    eid = _text(entry_id)
    raw = None
    if isinstance(fields, dict):
        raw = fields.get(FIELD.encode()) if FIELD.encode() in fields else fields.get(FIELD)
    if raw is None:
        logger.warning("event stream entry %s has no %r field: skipped", eid, FIELD)
        return None
    try:
        return Event.from_json(raw, id=eid)
    except DecodeError as e:
        logger.warning("event stream entry %s is no event (%s): skipped", eid, e)
        return None


class RedisEventStore:
    """Writes and reads the stream on one Redis client (the broker's or the backend's)."""

    kind = "redis"

    def __init__(self, client: Any, max_len: int, key: str = STREAM) -> None:
        self.client = client
        self.max_len = max_len
        self.key = key
        self._script = client.register_script(_XADD_ALL)

    def write(self, events: Sequence[str]) -> None:
        """Append the events (JSON texts) in one round trip."""
        if events:
            self._script(keys=[self.key], args=[self.max_len, "\n".join(events)])

    def history(self, since: float | None = None, limit: int | None = None) -> list[Event]:
        """The events kept, in the order written (each process's in the order it emitted
        them; two processes' batches interleave): from ``since`` (Unix seconds, compared
        with the write time) on, else all; with ``limit``, only the newest ``limit``."""
        if limit is not None:
            entries = self.client.xrevrange(self.key, "+", self._start(since), count=limit)
            entries.reverse()
            return [e for e in (decode_entry(i, f) for i, f in entries) if e is not None]
        return list(self._range(self._start(since)))

    def _range(self, start: str, end: str = "+") -> Iterator[Event]:
        while True:
            entries = self.client.xrange(self.key, start, end, count=_PAGE)
            for entry_id, fields in entries:
                event = decode_entry(entry_id, fields)
                if event is not None:
                    yield event
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
                    event = decode_entry(entry_id, fields)
                    if event is not None:
                        yield event

    def length(self) -> int:
        return int(self.client.xlen(self.key))

    def close(self) -> None:
        """The client is the broker's or backend's: nothing of its own to close."""
