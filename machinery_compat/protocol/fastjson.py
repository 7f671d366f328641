"""A fast decoder for the common shape of a Signature message, exact or silent.

:func:`signature_obj` parses a message with orjson (when it is installed) and returns the
decoded JSON **only when it is provably what** :func:`.gojson.loads` **returns for the same
bytes**, else ``None`` (the caller then runs the exact decoder, which also makes every
error).  The exact decoder keeps every JSON number as its literal text (:class:`Number`),
replaces invalid UTF-8 and lone surrogates by U+FFFD, and fails on what Python's ``json``
refuses; orjson parses numbers into ``int``/``float`` and refuses invalid UTF-8 and lone
surrogates.  So the fast result is used only when

* orjson accepted the bytes (so they are valid UTF-8 with no lone surrogate escaped or not,
  and strict JSON, which Python's strict decoder accepts too, with the same values; duplicate
  keys: the last value wins, in the first key's place, in both);
* they hold fewer than :data:`MAX_BRACKETS` ``[``/``{`` (nesting well inside both parsers'
  depth limits);
* no number became a ``float`` (a float's literal text is lost: ``1.50``, ``1e2``, and
  integers past 64 bits), and no ``0`` that is kept as a :class:`Number` could have been
  written ``-0`` (the literal text of an ``int`` is ``str(n)`` otherwise: JSON has no leading
  zeros or ``+``).

Turning the ints into :class:`Number` is left to :meth:`Signature.from_json
<machinery_compat.protocol.models.Signature.from_json>`'s fast builder, which does it only
where the exact decoder keeps the literal (argument values, headers) and reads the fixed
integer fields directly.  ``MACHINERY_COMPAT_FAST_JSON=0`` turns the fast path off.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Final

from .gojson import Number

#: messages with more ``[`` and ``{`` bytes than this take the exact decoder
MAX_BRACKETS: Final = 128

_loads: Callable[[bytes], Any] | None
try:  # pragma: no branch - either way is tested (the fallback by patching this to None)
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - orjson is a dependency; the fallback is exact
    _loads = None

if os.environ.get("MACHINERY_COMPAT_FAST_JSON", "1").strip().lower() in ("0", "false", "no",
                                                                          "off"):
    _loads = None


class Unsure(Exception):
    """The fast result may differ from the exact decoder's: use the exact one."""


def available() -> bool:
    """Whether the fast path is on (orjson importable, not turned off)."""
    return _loads is not None


def signature_obj(raw: object) -> Any:
    """The parsed JSON of ``raw`` (``bytes``), plain ints and all, or ``None`` when the exact
    decoder must decide (not bytes, not parsed, too many brackets, a float anywhere is found
    later by :func:`numbers`)."""
    loads = _loads
    if loads is None or type(raw) is not bytes:
        return None
    if raw.count(b"{") + raw.count(b"[") > MAX_BRACKETS:
        return None
    try:
        return loads(raw)
    except Exception:  # orjson.JSONDecodeError, RecursionError …: the exact decoder decides
        return None


def numbers(value: Any, neg_zero: bool) -> Any:
    """``value`` (from :func:`signature_obj`) as the exact decoder returns it: each ``int`` a
    :class:`Number` of its text.  :class:`Unsure` for a ``float`` (its text is lost), and for
    a ``0`` when ``neg_zero`` (the bytes hold ``-0`` somewhere: that ``0`` may be ``-0``)."""
    t = type(value)
    if t is str or value is None or t is bool:
        return value
    if t is int:
        if neg_zero and value == 0:
            raise Unsure
        return Number(str(value))
    if t is list:
        return [numbers(v, neg_zero) for v in value]
    if t is dict:
        return {k: numbers(v, neg_zero) for k, v in value.items()}
    raise Unsure  # float


__all__ = ["MAX_BRACKETS", "Unsure", "available", "numbers", "signature_obj"]
