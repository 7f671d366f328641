"""examples/demo.py runs (Go and Python workers and producers on one local Redis)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.interop
def test_demo_runs_green(go_bins: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py")], cwd=ROOT,
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "demo OK" in proc.stdout
    assert "ran on Go" in proc.stdout and "ran on Python" in proc.stdout
    assert "WRONG" not in proc.stdout
