"""Tables (the default output of the operator commands) and JSON (``--json``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, empty: str = "") -> str:
    """Left-aligned columns, two spaces apart, under a header line; ``empty``: the text
    printed instead of a header alone when there are no rows."""
    if not rows and empty:
        return empty
    cells = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
              for row in cells]
    return "\n".join(lines)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value)
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def when(unix: float | None) -> str | None:
    """A Unix time as RFC 3339 UTC (seconds)."""
    if unix is None:
        return None
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str, ensure_ascii=False)
