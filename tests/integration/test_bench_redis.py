"""``python -m bench.redis_bench`` end to end with tiny sizes (a smoke test, not a timing):
every implementation — machinery_compat (threads, processes, ``send_many``, events on,
pinned to a CPU),
Celery, dramatiq, taskiq, Go Machinery with redigo and go-redis — produces and drains, at the
main concurrency and at the swept one, and the table, JSON and chart say so."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from bench import redis_bench
from bench._common import TIMES, go_machinery_version, version

pytestmark = pytest.mark.timeout(300)


def _row(text: str, start: str) -> list[str]:
    (line,) = [x for x in text.splitlines() if x.startswith(f"| {start}")]
    return [c.strip() for c in line.strip("|").split("|")]


def test_every_implementation_produces_and_drains_at_each_concurrency(tmp_path: Path) -> None:
    out = tmp_path / "latest.md"
    assert redis_bench.main(["--n", "300", "--repeat", "1", "--sweep", "1", "--sweep-n", "100",
                             "--processes", "2", "--output", str(out)]) == 0
    text = out.read_text()
    main, _, sweep = text.partition("## Worker drain by concurrency")
    number = re.compile(r"^[\d,]+$")
    go = f"Go Machinery {go_machinery_version()}"
    for name in ("Celery 5", "dramatiq 2", "taskiq 0", f"{go} (redigo)", f"{go} (go-redis)"):
        cells = _row(main, name)
        assert number.match(cells[1]) and number.match(cells[3]), cells  # producer, drain
        c1, c8 = _row(sweep, name)[1:]
        assert re.match(r"^[\d,]+; [\d,]+ µs$", c1) and re.match(r"^[\d,]+; [\d,]+ µs$", c8), (
            name, c1, c8)
    mc = f"machinery_compat {version('machinery-compat')}"
    pinned = f"{mc}, --cpu-affinity {max(os.sched_getaffinity(0))} |"
    for name in (f"{mc} |", f"{mc}, --processes 2 |", f"{mc}, task events on |", pinned):
        cells = _row(main, name)
        assert number.match(cells[1]) and number.match(cells[3]), cells
    assert number.match(_row(main, f"{mc}, `send_many` |")[1])
    assert "| machinery_compat / dramatiq, worker drain |" in main
    assert "| machinery_compat (1 process) / Go Machinery (go-redis), worker drain (#13) |" in main
    assert re.search(r"\| machinery_compat \(1 process, --cpu-affinity \d+\) / Go Machinery "
                     r"\(redigo\), worker drain \| [\d.]+" + TIMES, main), main
    assert "| Implementation | C = 1 | C = 8 |" in sweep
    data = json.loads(out.with_suffix(".json").read_text())
    swept = {r["key"]: r["cells"] for r in data["drain_by_concurrency"]}
    assert set(swept) == {"mc", "mcp", "celery", "dramatiq", "taskiq", "go", "gor"}
    assert all(swept[k]["1"]["rate"] and swept[k]["8"]["rate"] for k in swept if k != "mcp")
    assert "1" not in swept["mcp"] and swept["mcp"]["8"]["rate"]
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
