"""``python -m bench.amqp_bench`` end to end with tiny sizes (a smoke test, not a timing):
every row — machinery_compat (one process, ``--processes 2``, each also pinned with
``--cpu-affinity``), Celery (also under ``taskset``), Go Machinery — produces and drains on
the benchmark's own RabbitMQ node, and the table and ratios say so."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from bench import amqp_bench
from bench._common import TIMES, go_machinery_version, version

pytestmark = [pytest.mark.timeout(400), pytest.mark.rabbitmq]


def _cells(text: str, name: str) -> list[str]:
    (line,) = [x for x in text.splitlines() if x.startswith(f"| {name} |")]
    return [c.strip() for c in line.strip("|").split("|")]


def test_every_row_produces_and_drains(tmp_path: Path) -> None:
    out = tmp_path / "latest-amqp.md"
    cpu = max(os.sched_getaffinity(0))
    assert amqp_bench.main(["--n", "200", "--repeat", "1", "--processes", "2",
                            "--pin", str(cpu), "--output", str(out)]) == 0
    text = out.read_text()
    mc = f"machinery_compat {version('machinery-compat')}"
    celery = f"Celery {version('celery')} (threads pool, py-amqp)"
    number = re.compile(r"^[\d,]+$")
    for name in (mc, f"{mc}, --processes 2", f"{mc}, --cpu-affinity {cpu}",
                 f"{mc}, --processes 2 --cpu-affinity all", celery,
                 f"{celery}, taskset -c {cpu}", f"Go Machinery {go_machinery_version()} "
                 "(amqp091-go, redigo)"):
        cells = _cells(text, name)
        assert number.match(cells[1]) and number.match(cells[3]), (name, cells)
    for ratio in (f"machinery_compat (1 process, --cpu-affinity {cpu}) / Go Machinery, worker "
                  "drain", f"machinery_compat --cpu-affinity {cpu} / Celery taskset -c {cpu}, "
                  "worker drain (both pinned)"):
        assert re.search(re.escape(f"| {ratio} | ") + r"[\d.]+" + TIMES, text), (ratio, text)
    assert f"Pinned rows (`--pin {cpu}`)" in text
