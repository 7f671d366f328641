"""An app module the CLI tests load with ``-A tests.integration.apps.cli_app:app``."""

from __future__ import annotations

import os
import time

from machinery_compat import Machinery

app = Machinery(broker=os.environ.get("MC_TEST_BROKER", "redis://127.0.0.1:6379/0"))


@app.task(name="add")
def add(*nums: int) -> int:
    return sum(nums)


@app.task(name="slow")
def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
