"""The periodic-task lock, with Machinery's key names and value semantics, so that Python and
Go schedulers take turns on one key and exactly one of them sends each period.

Key: ``machinery_lock_<program><name><spec>`` (Go: ``"machinery_lock_" +
filepath.Base(os.Args[0]) + name + spec``, plain concatenation).  ``program`` is the
executable's base name on the Go side; Python schedulers use ``machinery-compat`` unless told
the Go binary's name (only schedulers using one key de-duplicate).

Value: the next fire time after "now" in Unix nanoseconds, minus one, as a decimal string
(Go: ``schedule.Next(time.Now()).UnixNano() - 1``).  A scheduler takes the lock when

* the key is absent: ``SET key value PX <until the value> NX``, or
* the key holds a non-zero integer that is already in the past (``now_ns > value``): it
  replaces it (Go: ``GETSET`` then ``EXPIRE``), and the key expires at the new value;

otherwise this period is someone else's and the firing is skipped.  A value that is not an
integer makes Go's lock fail (``strconv.Atoi``); the same here.

Python schedulers do the whole decision in one Lua script (atomic), comparing the decimal
values exactly (no float rounding), and differ from Go only in ways Go cannot observe:

* the key always gets an expiry.  Go's ``GETSET`` drops the key's TTL, and a Go scheduler that
  loses the ``GETSET`` race never sets it again, so Go leaves lock keys behind forever (one of
  Machinery users' complaints).  Whenever a Python scheduler meets a lock key without an
  expiry it gives it one, at the instant its value names (the period's end), so keys are
  cleaned up by Redis itself; unregistering a periodic task does the same for its key;
* a second key ``machinery_compat:periodic:holder:<lock key>`` (same expiry) says which Python
  scheduler holds the lock (host, pid, lock value), for ``machinery-compat periodic list``;
  Go neither reads nor writes it.  A lock value with no matching holder key was taken by a
  Go scheduler (or an older Python one).

The in-process :class:`LocalLock` (Go's eager lock: a map, same value rule) de-duplicates
only within one process: every process then fires.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

#: Go's ``utils.LockKeyPrefix``
LOCK_KEY_PREFIX = "machinery_lock_"
#: the program name Python schedulers put in lock keys unless told a Go binary's name
DEFAULT_PROGRAM = "machinery-compat"
#: prefix of the key naming the Python scheduler that holds a lock
HOLDER_KEY_PREFIX = "machinery_compat:periodic:holder:"
#: Go's ``LockWithRetries``: retries + 1 attempts (Machinery v1's factory and the docs use 3)
ATTEMPTS = 4

_INT64_MAX = (1 << 63) - 1


def go_base(path: str) -> str:
    """Go's ``filepath.Base`` (on Unix): the last element, trailing slashes dropped; ``.``
    for an empty path, ``/`` for only slashes."""
    if path == "":
        return "."
    stripped = path.rstrip("/")
    if stripped == "":
        return "/"
    return stripped.rsplit("/", 1)[-1]


def lock_key(program: str, name: str, spec: str) -> str:
    """Machinery's lock key for periodic task ``name`` with ``spec``, as the executable
    ``program`` (a path is reduced to its base name, as Go does with ``os.Args[0]``)."""
    return LOCK_KEY_PREFIX + go_base(program) + name + spec


def parse_lock_value(raw: bytes | str | None) -> int | None:
    """A lock value as Go's ``strconv.Atoi`` reads it, or None when Go could not."""
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    body = text[1:] if text[:1] in ("+", "-") else text
    if not body or not body.isascii() or not body.isdigit():
        return None
    n = int(text)
    return n if -_INT64_MAX - 1 <= n <= _INT64_MAX else None


@dataclass(frozen=True)
class LockState:
    """What a lock key holds now (for ``periodic list``).

    ``value``: the Unix ns the lock lasts until (the holder's next fire time minus one), None
    when the key is absent or unreadable; ``raw``: the key's text; ``ttl_ms``: Redis' PTTL
    (-1: no expiry, None: no key); ``holder``: the Python scheduler holding it (``host``,
    ``pid``, ``program``, ``scheduler``), None when free or held by someone else (Go)."""

    key: str
    raw: str | None = None
    value: int | None = None
    ttl_ms: int | None = None
    holder: dict[str, Any] | None = None

    @property
    def held(self) -> bool:
        """Whether the key exists and still holds a lock for a period not yet over."""
        return self.value is not None and self.value != 0 and time.time_ns() <= self.value

    def describe(self) -> str:
        """``free``, ``python host:pid``, ``other (Go?)``, … for a table cell."""
        if self.raw is None:
            return "free"
        if self.value is None:
            return f"unreadable value {self.raw!r}"
        if not self.held:
            return "free (expired value)"
        if self.holder is not None:
            return f"python {self.holder.get('host', '?')}:{self.holder.get('pid', '?')}"
        return "another scheduler (Go?)"


class PeriodicLock(ABC):
    """A lock for periodic-task firings (Machinery's ``locks/iface.Lock``)."""

    @abstractmethod
    def acquire(self, key: str, value: int) -> bool:
        """Take ``key`` for the period ending at ``value`` + 1 ns; False: someone else has it."""

    def state(self, key: str) -> LockState:
        """What ``key`` holds now."""
        return LockState(key)

    def ensure_expiry(self, key: str) -> None:
        """Make sure ``key`` does not outlive its period (called on unregistering)."""
        return None

    def close(self) -> None:
        """Release connections."""
        return None


class LocalLock(PeriodicLock):
    """Go's eager lock: an in-process map, the same value rule (one attempt: Go's four, five
    seconds apart, would only delay the skip)."""

    def __init__(self) -> None:
        self._values: dict[str, int] = {}
        self._mutex = threading.Lock()

    def acquire(self, key: str, value: int) -> bool:
        with self._mutex:
            old = self._values.get(key)
            if old is None or time.time_ns() > old:
                self._values[key] = value
                return True
            return False

    def state(self, key: str) -> LockState:
        with self._mutex:
            v = self._values.get(key)
        if v is None:
            return LockState(key)
        return LockState(key, str(v), v, None, {"host": socket.gethostname(),
                                                  "pid": os.getpid(), "local": True})


# KEYS[1] lock key, KEYS[2] holder key; ARGV[1] value, ARGV[2] now (ns), ARGV[3] PX (ms),
# ARGV[4] holder JSON.  Returns {1, old} taken, {0, old} held by another, {-1, old} a value Go
# cannot read (strconv.Atoi fails).  Decimal values are compared as strings: Lua numbers are
# doubles, too coarse for nanoseconds.
_ACQUIRE = """
local function parse(s)
  if not s then return nil end
  local sign, digits = string.match(s, '^([+-]?)(%d+)$')
  if not digits then return nil end
  digits = string.match(digits, '^0*(.+)$')
  local neg = sign == '-' and digits ~= '0'
  if #digits > 19 then return nil end
  if #digits == 19 then
    if neg and digits > '9223372036854775808' then return nil end
    if (not neg) and digits > '9223372036854775807' then return nil end
  end
  return {neg, digits}
end
local function greater(a, b)
  if a[1] ~= b[1] then return b[1] end
  local c
  if #a[2] ~= #b[2] then
    if #a[2] > #b[2] then c = 1 else c = -1 end
  elseif a[2] == b[2] then c = 0
  elseif a[2] > b[2] then c = 1 else c = -1 end
  if a[1] then c = -c end
  return c > 0
end
local function take()
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
end
if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3], 'NX') then
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
  return {1, false}
end
local old = redis.call('GET', KEYS[1])
local cur = parse(old)
if cur and cur[2] ~= '0' and greater(parse(ARGV[2]), cur) then
  take()
  return {1, old}
end
if redis.call('PTTL', KEYS[1]) == -1 then
  if cur and (not cur[1]) and #cur[2] > 6 then
    redis.call('PEXPIREAT', KEYS[1], tonumber(string.sub(cur[2], 1, #cur[2] - 6)) + 1)
  else
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  end
end
if cur then return {0, old} end
return {-1, old}
"""

# KEYS[1] lock key; ARGV[1] fallback PX (ms).  An expiry for a key that has none: when its
# value says the period ends, else after the fallback.
_ENSURE_EXPIRY = """
if redis.call('PTTL', KEYS[1]) ~= -1 then return 0 end
local v = redis.call('GET', KEYS[1])
local digits = string.match(v, '^%+?0*(%d%d%d%d%d%d%d+)$')
if digits then
  redis.call('PEXPIREAT', KEYS[1], tonumber(string.sub(digits, 1, #digits - 6)) + 1)
else
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1
"""


class RedisLock(PeriodicLock):
    """Machinery's Redis lock (``locks/redis``), atomic, on a redis-py client."""

    def __init__(self, client: Any, *, scheduler_id: str | None = None,
                 program: str = DEFAULT_PROGRAM) -> None:
        self.client = client
        self.scheduler_id = scheduler_id or f"{socket.gethostname()}-{os.getpid()}"
        self.program = program
        self._acquire = client.register_script(_ACQUIRE)
        self._ensure = client.register_script(_ENSURE_EXPIRY)

    def _holder_key(self, key: str) -> str:
        """Who holds ``key`` (Python only).  On a Redis Cluster it carries ``key``'s hash tag,
        so the acquire script's two keys share a slot."""
        if not hasattr(self.client, "nodes_manager"):
            return HOLDER_KEY_PREFIX + key
        from .._redis_cluster import slot_tag

        tag = slot_tag(key)
        if tag is None:
            from ..exceptions import ConfigError

            raise ConfigError(f"periodic lock {key!r}: no key can share its Redis Cluster slot")
        return f"{HOLDER_KEY_PREFIX}{{{tag}}}:{key}"

    def _holder(self, value: int) -> str:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "program": self.program, "scheduler": self.scheduler_id,
                           "value": str(value)}, separators=(",", ":"))

    def acquire(self, key: str, value: int) -> bool:
        last: Exception | None = None
        for _ in range(ATTEMPTS):
            now = time.time_ns()
            expiration = value + 1 - now
            if expiration <= 0:  # Go: SET with PX <= 0, an error
                logger.warning("periodic lock %s: value %d is already past", key, value)
                return False
            px = max(expiration // 1_000_000, 1)
            try:
                code, old = self._acquire(keys=[key, self._holder_key(key)],
                                          args=[value, now, px, self._holder(value)])
            except Exception as e:  # connection trouble: try again, as Go does
                last = e
                continue
            if code == 1:
                return True
            if code == -1:
                logger.warning("periodic lock %s holds %r, which Go cannot read as a number "
                               "either: nobody fires until it expires", key, old)
            return False
        logger.warning("periodic lock %s: Redis unavailable (%s): this firing is skipped",
                       key, last)
        return False

    def state(self, key: str) -> LockState:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(key)
        pipe.pttl(key)
        pipe.get(self._holder_key(key))
        raw, ttl, holder_raw = pipe.execute()
        if raw is None:
            return LockState(key)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        holder: dict[str, Any] | None = None
        if holder_raw is not None:
            try:
                h = json.loads(holder_raw)
            except ValueError:
                h = None
            if isinstance(h, dict) and h.get("value") == text:
                holder = h
        return LockState(key, text, parse_lock_value(text), int(ttl), holder)

    def ensure_expiry(self, key: str) -> None:
        try:
            self._ensure(keys=[key], args=[60_000])
        except Exception as e:
            logger.warning("periodic lock %s: could not check its expiry: %s", key, e)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # best effort
            self.client.close()


__all__ = ["ATTEMPTS", "DEFAULT_PROGRAM", "HOLDER_KEY_PREFIX", "LOCK_KEY_PREFIX", "LocalLock",
           "LockState", "PeriodicLock", "RedisLock", "go_base", "lock_key", "parse_lock_value"]
