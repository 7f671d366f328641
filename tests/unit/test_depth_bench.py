"""``python -m bench.depth_bench`` with tiny sizes writes every row with a figure in it (a few
seconds on a private redis-server: not a timing)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import depth_bench
from bench._common import DASH, TIMES, Cell
from tests.services import missing_service

ROOT = Path(__file__).resolve().parents[2]
NUMBER = r"[\d,]+"


def test_the_checkpoints_start_at_the_window_and_end_at_the_depth() -> None:
    assert depth_bench.checkpoints(3000, 500, 50_000) == [
        500, 600, 900, 1000, 1200, 1500, 1800, 2100, 2400, 2700, 3000]
    assert depth_bench.checkpoints(1_000_000, 10_000, 50_000) == [
        10_000, 20_000, 30_000, 50_000, *range(100_000, 1_000_001, 100_000)]


def test_the_deep_rate_is_the_median_of_the_first_windows() -> None:
    first = Cell(rate=1000.0, seconds=1.0, n=1000, cpu=(0.1, 0.05))
    samples = [depth_bench.Sample(1000, 1.0, 1), depth_bench.Sample(2000, 1.5, 1),
               depth_bench.Sample(3000, 2.75, 1), depth_bench.Sample(5000, 4.0, 1)]
    cell = depth_bench.head_windows(first, samples, 1000)
    assert cell.rate == 1000.0 and cell.spread == (800.0, 2000.0) and cell.cpu == (0.1, 0.05)
    assert depth_bench.head_windows(first, samples[:1], 1000) is first


@pytest.mark.redis
def test_the_depth_bench_writes_the_drains_the_targets_and_the_rss_curve(
        tmp_path: Path) -> None:
    binary = shutil.which(os.environ.get("REDIS_SERVER_BIN") or "redis-server")
    if binary is None:
        missing_service("redis-server not found on PATH (make bootstrap)")
    out = tmp_path / "depth.md"
    run = subprocess.run(
        [sys.executable, "-m", "bench.depth_bench", "--depth", "2000", "--window", "400",
         "--warmup", "800", "--concurrency", "4", "--redis-server", binary,
         "--output", str(out), "--drain-timeout", "60"],
        cwd=ROOT, capture_output=True, text=True, timeout=90, check=False)
    assert run.returncode == 0, run.stderr
    text = out.read_text()
    assert text == run.stdout.removesuffix("\n")  # print() adds one
    for label in ("worker drain, first 400 tasks, 400 queued",
                  "worker drain, first 400 tasks, 2,000 queued",
                  "worker drain, all 2,000 tasks, 2,000 queued",
                  "enqueue 2,000 tasks: `send_many`, chunks of 1,000"):
        assert re.search(rf"^\| {re.escape(label)} \| {NUMBER}( \({NUMBER}{DASH}{NUMBER}\))? "
                         rf"\| {NUMBER} \+ {NUMBER} \(", text, re.M), label
    assert re.search(r"^\| drain rate over the first 400 tasks, 2,000 queued / 400 queued "
                     rf"\(#13\) \| \d+\.\d\d{TIMES} \| ≥ 0\.9{TIMES} \| (yes|\*\*no\*\*) \|$", text, re.M)
    assert re.search(r"^\| worker RSS growth over 2,000 tasks, from task 800 to the end \(#13\) "
                     r"\| [+-]\d+\.\d% \([\d.]+ → [\d.]+ MiB\) \| ≤ 10% \| (yes|\*\*no\*\*) \|$",
                     text, re.M)
    curve = re.findall(rf"^\| ({NUMBER}) \| [\d.]+ \| {NUMBER} \| [\d.]+ \|$", text, re.M)
    assert curve == [f"{m:,}" for m in depth_bench.checkpoints(2000, 400, 800)]
    assert "Notes:" not in text
