"""The dashboard's charts as inline SVG (pure: no I/O, no script, no CDN).

* :func:`series`: from the events kept, tasks that ended per time bucket (succeeded and
  failed) and the runtimes of those that ran, in :data:`RUNTIME_EDGES` buckets;
* :func:`throughput_svg`: stacked bars, succeeded (green) under failed (red), one per bucket;
* :func:`histogram_svg`: one bar per runtime bucket.

The numbers come from events, so they cover Python workers only (Go workers emit none).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any, Final

from ..events.model import FAILED, SUCCEEDED, Event

#: runtime bucket upper edges, seconds (the last bucket is everything above)
RUNTIME_EDGES: Final = (0.001, 0.01, 0.1, 1.0, 10.0)
RUNTIME_LABELS: Final = ("<1ms", "1-10ms", "10-100ms", "0.1-1s", "1-10s", ">10s")

WIDTH: Final = 480
HEIGHT: Final = 140
_PAD: Final = 24


def series(events: Iterable[Event], now: float, buckets: int, width: float) -> dict[str, Any]:
    """``start``, ``width``, ``succeeded``/``failed`` counts per bucket (oldest first, the
    last one ending at ``now``) and ``runtimes`` (counts per :data:`RUNTIME_LABELS`)."""
    start = now - buckets * width
    ok = [0] * buckets
    bad = [0] * buckets
    hist = [0] * (len(RUNTIME_EDGES) + 1)
    for e in events:
        if e.type not in (SUCCEEDED, FAILED):
            continue
        if e.runtime is not None:
            hist[_runtime_bucket(e.runtime)] += 1
        if not start <= e.timestamp <= now:
            continue
        i = min(int((e.timestamp - start) // width), buckets - 1)
        (ok if e.type == SUCCEEDED else bad)[i] += 1
    return {"start": start, "width": width, "succeeded": ok, "failed": bad,
            "runtimes": hist, "runtime_labels": list(RUNTIME_LABELS)}


def _runtime_bucket(runtime: float) -> int:
    for i, edge in enumerate(RUNTIME_EDGES):
        if runtime < edge:
            return i
    return len(RUNTIME_EDGES)


def _scale(values: Sequence[int]) -> int:
    """A round top for the y axis (1, 2, 5, 10, 20, 50 …)."""
    top: int = max(values, default=0)
    if top <= 1:
        return 1
    exp = 10 ** int(math.log10(top))
    for m in (1, 2, 5, 10):
        if top <= m * exp:
            return int(m * exp)
    return int(10 * exp)  # pragma: no cover - the loop always returns


def _frame(title: str, top: int, body: list[str]) -> str:
    return "".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{_PAD}" y1="{HEIGHT - _PAD}" x2="{WIDTH}" y2="{HEIGHT - _PAD}" '
        'stroke="#888"/>',
        f'<text x="2" y="12" font-size="10">{top}</text>',
        f'<text x="2" y="{HEIGHT - _PAD}" font-size="10">0</text>',
        *body, "</svg>"])


def throughput_svg(s: dict[str, Any]) -> str:
    ok: list[int] = s["succeeded"]
    bad: list[int] = s["failed"]
    n = len(ok)
    top = _scale([a + b for a, b in zip(ok, bad, strict=True)])
    plot_h = HEIGHT - _PAD - 14
    bar_w = (WIDTH - _PAD) / max(n, 1)
    body: list[str] = []
    for i, (a, b) in enumerate(zip(ok, bad, strict=True)):
        x = _PAD + i * bar_w + 1
        h_ok = plot_h * a / top
        h_bad = plot_h * b / top
        base = HEIGHT - _PAD
        if a:
            body.append(f'<rect class="ok" x="{x:.1f}" y="{base - h_ok:.1f}" '
                        f'width="{bar_w - 2:.1f}" height="{h_ok:.1f}" fill="#2e9d4a">'
                        f"<title>{a} succeeded</title></rect>")
        if b:
            body.append(f'<rect class="failed" x="{x:.1f}" y="{base - h_ok - h_bad:.1f}" '
                        f'width="{bar_w - 2:.1f}" height="{h_bad:.1f}" fill="#c8312b">'
                        f"<title>{b} failed</title></rect>")
    minutes = n * float(s["width"]) / 60
    body.append(f'<text x="{_PAD}" y="{HEIGHT - 8}" font-size="10">-{minutes:g} min</text>')
    body.append(f'<text x="{WIDTH - 24}" y="{HEIGHT - 8}" font-size="10">now</text>')
    return _frame(f"tasks ended per {float(s['width']):g} s: succeeded {sum(ok)}, "
                  f"failed {sum(bad)}", top, body)


def histogram_svg(s: dict[str, Any]) -> str:
    counts: list[int] = s["runtimes"]
    labels: list[str] = s["runtime_labels"]
    top = _scale(counts)
    plot_h = HEIGHT - _PAD - 14
    bar_w = (WIDTH - _PAD) / len(counts)
    body: list[str] = []
    for i, (c, label) in enumerate(zip(counts, labels, strict=True)):
        x = _PAD + i * bar_w + 2
        h = plot_h * c / top
        if c:
            body.append(f'<rect class="runtime" x="{x:.1f}" y="{HEIGHT - _PAD - h:.1f}" '
                        f'width="{bar_w - 4:.1f}" height="{h:.1f}" fill="#3a6fb0">'
                        f"<title>{c} ran {escape(label)}</title></rect>")
        body.append(f'<text x="{x:.1f}" y="{HEIGHT - 8}" font-size="10">{escape(label)}</text>')
    return _frame(f"runtimes: {sum(counts)} tasks", top, body)
