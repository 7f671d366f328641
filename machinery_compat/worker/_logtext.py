"""Log-sized text of the worker's values (message bodies, error texts, arguments) and its
resident memory."""

from __future__ import annotations

import logging
import os
from typing import Any

#: the most of a message body a log line shows, and of any other value
_EXCERPT = 300
_LOG_VALUE = 500


def resident_kib() -> int | None:
    """This process's resident memory in KiB (``/proc/self/statm``; else the peak from
    ``getrusage``), or None when neither can be read."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak  # macOS counts bytes
    except (ImportError, OSError, ValueError):
        return None


def clip(text: str, limit: int = _LOG_VALUE) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


class _Clipped:
    """A log argument shown cut short, whether formatted with %s or %r."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return clip(str(self.value))

    def __repr__(self) -> str:
        return clip(repr(self.value))


class _ClipArgs(logging.Filter):
    """Keeps this logger's lines short: names, ids, results and error texts come from messages
    and tasks and can be megabytes long; numbers are left alone (``%d``, ``%g``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = tuple(
                a if isinstance(a, (int, float)) or (isinstance(a, str) and len(a) <= _LOG_VALUE)
                else _Clipped(a) for a in args)
        return True


def excerpt(body: bytes) -> str:
    """A log-sized view of a message body: its first bytes and its length."""
    if len(body) <= _EXCERPT:
        return repr(body)
    return f"{body[:_EXCERPT]!r}… ({len(body)} bytes)"
