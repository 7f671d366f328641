"""Masking secrets (passwords in URLs, the Sentinel password) for logs and reprs."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

MASK: Final = "***"


_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_SECRET_QUERY_RE: Final = re.compile(r"(?i)([?&][^=&#]*(?:pass|pwd|secret|token)[^=&#]*=)[^&#]*")


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs and reprs.

    Knows the Machinery forms: ``amqp://user:***@host``, ``redis://***@host`` (a lone Redis
    userinfo is a password), ``redis://user:***@host``, ``redis+socket://***@/path``,
    ``mongodb://user:***@h1,h2/db``, multi-host Redis URLs, several URLs joined by a
    separator, and password-like query parameters (``?password=***``). When unsure it masks
    more rather than less. Strings without ``scheme://`` are returned unchanged.
    """
    starts = [m.start() for m in _SCHEME_RE.finditer(url)]
    if not starts:
        return url
    pieces = [url[: starts[0]]]
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(url)
        pieces.append(_mask_one(url[start:end]))
    return "".join(pieces)


def _mask_one(url: str) -> str:
    scheme, _, rest = url.partition("://")
    redis_like = scheme in ("redis", "rediss", "redis+socket")
    if scheme == "redis+socket":
        at = rest.find("@")
    elif redis_like and "," in rest.split("/", 1)[0]:
        first = rest.split(",", 1)[0]
        at = first.rfind("@")
    else:
        end = len(rest)
        for delim in "/?#":
            pos = rest.find(delim)
            if pos >= 0:
                end = min(end, pos)
        at = rest.rfind("@", 0, end)
        if at < 0 and "@" in rest[end:] and redis_like:
            at = rest.rfind("@")  # a password with "/" or "?" in it: mask generously
    if at > 0:
        userinfo = rest[:at]
        user, colon, password = userinfo.partition(":")
        if colon:
            masked = f"{user}:{MASK if password else ''}"
        elif redis_like:
            masked = MASK
        else:
            masked = userinfo  # a user name only
        rest = masked + rest[at:]
    return f"{scheme}://{_SECRET_QUERY_RE.sub(lambda m: m.group(1) + MASK, rest)}"


def _mask_secret(value: str) -> str:
    return MASK


def _masked_repr(obj: Any, masks: Mapping[str, Callable[[str], str]]) -> str:
    """A dataclass repr where ``masks`` maps field names to a masking function."""
    items = []
    for f in dataclasses.fields(obj):
        if not f.repr:
            continue
        value = getattr(obj, f.name)
        if f.name in masks and isinstance(value, str) and value:
            value = masks[f.name](value)
        items.append(f"{f.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(items)})"

