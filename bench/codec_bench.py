"""The message codec alone: encode and decode one task message, µs per call.

``python -m bench.codec_bench [--number 20000] [--repeat 5]``

The message is what ``app.send_task("add", args=[1, 2])`` publishes (a UUID, the routing
key, two ``int64`` arguments, no headers): ``Signature.to_json()`` (the Go-exact encoder),
``Signature.from_json()`` (the fast decoder, orjson; and, on a row of its own, the exact
decoder that any unusual message takes), and ``python_args()`` (the arguments as the task
function gets them).  Each figure is the median of ``--repeat`` timings of ``--number``
calls, with the lowest and highest.  Issue #13 asks for encode + decode ≤ 15 µs.  Written
to ``bench/results/latest-codec.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench._common import DASH, RESULTS_DIR, machine, publish

#: #13: encode + decode of a two-argument Signature, µs at most
TARGET_US = 15.0
ENCODE = "encode (`Signature.to_json`)"
DECODE = "decode (`Signature.from_json`, fast)"


def _time(fn: Callable[[], object], number: int, repeat: int) -> tuple[float, float, float]:
    """(median, lowest, highest) µs per call of ``fn``."""
    runs = [t / number * 1e6 for t in timeit.repeat(fn, number=number, repeat=repeat)]
    return statistics.median(runs), min(runs), max(runs)


def measure(number: int, repeat: int) -> dict[str, tuple[float, float, float]]:
    from machinery_compat import Machinery
    from machinery_compat.protocol import fastjson, models
    from machinery_compat.protocol.ids import uuid4_text

    app = Machinery(broker="memory://codec-bench", result_backend="memory://codec-bench")
    try:
        sig = app.build_signature("add", args=[1, 2])
    finally:
        app.close()
    sig.uuid, sig.routing_key = f"task_{uuid4_text()}", "machinery_tasks"
    body = sig.to_json()
    decoded = models.Signature.from_json(body)
    if decoded.python_args() != [1, 2] or decoded.uuid != sig.uuid:
        raise SystemExit(f"the codec does not round-trip: {body!r}")
    out = {
        ENCODE: _time(sig.to_json, number, repeat),
        DECODE: _time(lambda: models.Signature.from_json(body), number, repeat),
        "arguments (`python_args`)": _time(decoded.python_args, number, repeat),
    }
    saved = fastjson._loads  # None: the exact decoder (as MACHINERY_COMPAT_FAST_JSON=0)
    fastjson._loads = None
    try:
        if models.Signature.from_json(body) != decoded:
            raise SystemExit("the exact decoder reads the message differently")
        out["decode, exact decoder"] = _time(lambda: models.Signature.from_json(body),
                                             number, repeat)
    finally:
        fastjson._loads = saved
    return out


def render(rows: dict[str, tuple[float, float, float]], repeat: int, number: int) -> str:
    lines = [
        "# Codec: one task message, encode and decode",
        "",
        f"Machine: {machine()}. Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: each figure the "
        f"median of {repeat} timings of {number:,} calls, with the lowest and highest. The "
        "message: `add(1, 2)` as `send_task` publishes it (UUID, routing key, two int64 "
        "arguments).",
        "",
        f"| Step | µs per call | min{DASH}max |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {med:.2f} | {lo:.2f}{DASH}{hi:.2f} |"
              for name, (med, lo, hi) in rows.items()]
    total = rows[ENCODE][0] + rows[DECODE][0]
    met = "yes" if total <= TARGET_US else "**no**"
    lines += ["", "| Target | Value | Limit | Met |", "|---|---:|---:|:---:|",
              f"| encode + decode, 2-argument Signature (#13) | {total:.2f} µs | "
              f"≤ {TARGET_US:g} µs | {met} |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.codec_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--number", type=int, default=20_000, help="calls per timing (20000)")
    p.add_argument("--repeat", type=int, default=5, help="timings per figure (5)")
    p.add_argument("--output", type=Path, default=RESULTS_DIR / "latest-codec.md")
    a = p.parse_args(argv)
    if a.number < 1 or a.repeat < 1:
        p.error("--number and --repeat must be ≥ 1")
    publish(render(measure(a.number, a.repeat), a.repeat, a.number), a.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
