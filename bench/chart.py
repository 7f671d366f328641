"""The figures of a side-by-side benchmark as JSON and as a PNG chart, next to its table.

:func:`write_results` is called by ``bench.redis_bench``, ``bench.amqp_bench`` and
``bench.sqs_bench`` after the Markdown table: ``<table>.json`` (every row's producer and
drain rate, spread and CPU per task; the Redis benchmark adds every worker's drain at each
concurrency) and ``<table>.png`` (a bar chart of the rates per implementation, producer and
worker drain side by side, the min-max of repeated runs as error bars, and beside it, when
there are several concurrencies, the drains per implementation and concurrency; matplotlib with the Agg backend, no display needed).  Without matplotlib the
chart is left out with one line on stderr; the JSON is always written.

``python -m bench.chart RESULTS.json [OUT.png]`` draws the chart of a JSON written earlier.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench._common import Cell, Row


def _cell(cell: Cell) -> dict[str, Any]:
    cpu = [None if c is None or not cell.n else round(c / cell.n * 1e6, 1) for c in cell.cpu]
    return {"rate": cell.rate, "min": cell.spread[0] if cell.spread else cell.rate,
            "max": cell.spread[1] if cell.spread else cell.rate, "n": cell.n,
            "cpu_us_per_task": cpu, "note": cell.note}


def results_json(rows: dict[str, Row], title: str,
                 by_concurrency: dict[int, dict[str, Row]] | None = None) -> dict[str, Any]:
    """``rows`` as JSON; with ``by_concurrency`` (concurrency -> rows) also every row's drain
    at each concurrency (``"drain_by_concurrency"``: key -> {C: cell})."""
    data: dict[str, Any] = {
        "title": title,
        "rows": [{"key": key, "name": row.name, "producer": _cell(row.producer),
                  "drain": _cell(row.drain)} for key, row in rows.items()]}
    if by_concurrency:
        drains: dict[str, dict[str, Any]] = {}
        names: dict[str, str] = {}
        for c, crows in by_concurrency.items():
            for key, row in crows.items():
                drains.setdefault(key, {})[str(c)] = _cell(row.drain)
                names.setdefault(key, row.name)
        order = [k for k in rows if k in drains] + [k for k in drains if k not in rows]
        data["drain_by_concurrency"] = [{"key": k, "name": names[k], "cells": drains[k]}
                                        for k in order]
    return data


def draw(data: dict[str, Any], out: Path) -> bool:
    """The bar chart of ``data`` (:func:`results_json`) to ``out``; False without
    matplotlib."""
    try:
        import matplotlib
    except ImportError:
        print("(no chart: pip install matplotlib)", file=sys.stderr)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    names = [r["name"].replace("`", "") for r in rows]
    swept = data.get("drain_by_concurrency") or []
    if swept:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(15, 0.55 * len(rows) + 1.6), dpi=110,
                                      gridspec_kw={"width_ratios": [3, 2]})
        _draw_by_concurrency(ax2, swept)
    else:
        fig, ax = plt.subplots(figsize=(9, 0.55 * len(rows) + 1.6), dpi=110)
    height = 0.38
    for i, (part, color) in enumerate((("producer", "#4c78a8"), ("drain", "#f58518"))):
        ys = [j + (i - 0.5) * height for j in range(len(rows))]
        rates = [r[part]["rate"] or 0.0 for r in rows]
        lo = [max(rate - (r[part]["min"] or rate), 0.0) for rate, r in zip(rates, rows, strict=True)]
        hi = [max((r[part]["max"] or rate) - rate, 0.0) for rate, r in zip(rates, rows, strict=True)]
        ax.barh(ys, rates, height, xerr=[lo, hi], color=color, capsize=2,
                label="producer" if part == "producer" else "worker drain")
        for y, rate, up in zip(ys, rates, hi, strict=True):
            if rate:
                ax.text(rate + up, y, f"  {rate:,.0f}", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("tasks/s (bars: median; whiskers: min-max of the runs)")
    ax.set_title(data["title"], fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.margins(x=0.15)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return True


def _draw_by_concurrency(ax: Any, swept: list[dict[str, Any]]) -> None:
    """Worker drain rates, one group of bars per implementation, one bar per concurrency."""
    cs = sorted({int(c) for r in swept for c in r["cells"]})
    height = 0.8 / len(cs)
    colors = ("#54a24b", "#f58518", "#b279a2", "#4c78a8")
    for i, c in enumerate(cs):
        ys = [j + (i - (len(cs) - 1) / 2) * height for j in range(len(swept))]
        rates = [(r["cells"].get(str(c)) or {}).get("rate") or 0.0 for r in swept]
        ax.barh(ys, rates, height, color=colors[i % len(colors)], label=f"C = {c}")
        for y, rate in zip(ys, rates, strict=True):
            if rate:
                ax.text(rate, y, f" {rate:,.0f}", va="center", fontsize=6)
    ax.set_yticks(range(len(swept)), [r["name"].replace("`", "") for r in swept], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("worker drain, tasks/s (median)")
    ax.set_title("worker drain by concurrency C", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    ax.margins(x=0.15)


def write_results(rows: dict[str, Row], title: str, table: Path,
                  by_concurrency: dict[int, dict[str, Row]] | None = None) -> None:
    """``table`` with ``.json`` and ``.png`` for its suffix: the figures and their chart."""
    data = results_json(rows, title, by_concurrency)
    table.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    if draw(data, table.with_suffix(".png")):
        print(f"(chart: {table.with_suffix('.png')})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print("usage: python -m bench.chart RESULTS.json [OUT.png]", file=sys.stderr)
        return 2
    src = Path(args[0])
    out = Path(args[1]) if len(args) == 2 else src.with_suffix(".png")
    return 0 if draw(json.loads(src.read_text()), out) else 1


if __name__ == "__main__":
    sys.exit(main())
