"""bench/chart.py: the JSON of a benchmark's rows and its PNG chart (matplotlib, Agg)."""

from __future__ import annotations

import json
from pathlib import Path

from bench._common import Cell, Row
from bench.chart import main, write_results


def test_the_rows_become_json_and_a_png_chart(tmp_path: Path) -> None:
    rows = {
        "mc": Row("machinery_compat", Cell(rate=14_000.0, n=100, cpu=(0.004, 0.002),
                                            spread=(13_000.0, 15_000.0)),
                  Cell(rate=7_300.0, n=100, cpu=(0.013, None))),
        "mcmany": Row("machinery_compat, `send_many`", Cell(rate=67_000.0, n=100), Cell()),
        "go": Row("Go Machinery", Cell(note="not built"), Cell()),
    }
    table = tmp_path / "latest.md"
    write_results(rows, "Redis: tasks/s", table)
    data = json.loads(table.with_suffix(".json").read_text())
    assert [r["key"] for r in data["rows"]] == ["mc", "mcmany", "go"]
    mc = data["rows"][0]
    assert mc["producer"] == {"rate": 14_000.0, "min": 13_000.0, "max": 15_000.0, "n": 100,
                              "cpu_us_per_task": [40.0, 20.0], "note": ""}
    assert mc["drain"]["cpu_us_per_task"] == [130.0, None] and mc["drain"]["min"] == 7_300.0
    assert data["rows"][2]["producer"]["rate"] is None
    png = table.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    again = tmp_path / "again.png"
    assert main([str(table.with_suffix(".json")), str(again)]) == 0
    assert again.read_bytes()[:8] == png[:8]
