"""Pinning a worker process to CPUs (``--cpu-affinity``, ``app.worker(cpu_affinity=...)``).

One Python process runs Python on one CPU at a time (the GIL); its pool threads take turns.
Left to the scheduler, those threads, and the wake-ups after their loopback sends, move
between CPUs; pinned to one CPU, a GIL-bound worker measured 15-20 % less CPU per task and a
faster drain on a 2-vCPU machine, leaving the other CPUs to the broker, the result store and
other processes (bench/README.md has the figures).  Off by default: a pinned process uses
only its CPUs, also for tasks that release the GIL and could use more.

* one process (``processes=1``): every thread of the process is pinned to the CPUs given;
* ``processes=N``: process ``i`` is pinned to one CPU, the ``i``-th of those given
  (round-robin when there are fewer CPUs than processes): ``--processes 2 --cpu-affinity
  all`` puts the two processes on two CPUs.

Linux only (``os.sched_setaffinity``).  CPUs are given as Linux lists them: ``1``,
``0-3``, ``0,2,4-5``, or ``all`` (every CPU this process may run on now).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence

from ..exceptions import ConfigError

logger = logging.getLogger("machinery_compat.worker.affinity")


def available() -> bool:
    """Whether this platform can pin processes to CPUs."""
    return hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on now, in order."""
    if not available():
        raise ConfigError("CPU affinity needs os.sched_setaffinity (Linux)")
    return sorted(os.sched_getaffinity(0))


def parse_cpus(spec: str | int | Sequence[int]) -> list[int]:
    """``"1"``, ``"0-3"``, ``"0,2,4-5"``, ``"all"``, an int or a list of ints: the CPU
    numbers, in the order given, each once; every one must be a CPU this process may run
    on, else :class:`ConfigError` naming them."""
    allowed = allowed_cpus()
    if isinstance(spec, str):
        cpus = _parse_list(spec, allowed)
    elif isinstance(spec, int) and not isinstance(spec, bool):
        cpus = [spec]
    elif isinstance(spec, list | tuple | range):
        cpus = list(spec)
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in cpus):
            raise ConfigError(f"cpu_affinity {spec!r}: CPU numbers are integers")
    else:
        raise ConfigError(f"cpu_affinity {spec!r}: give CPU numbers (1, 0-3, 0,2) or 'all'")
    seen: list[int] = []
    for c in cpus:
        if c not in seen:
            seen.append(c)
    unknown = [c for c in seen if c not in allowed]
    if not seen:
        raise ConfigError(f"cpu_affinity {spec!r}: no CPU given")
    if unknown:
        raise ConfigError(f"cpu_affinity {spec!r}: CPU(s) {_shown(unknown)} not available to "
                          f"this process (it may run on {_shown(allowed)})")
    return seen


def _parse_list(spec: str, allowed: list[int]) -> list[int]:
    text = spec.strip().lower()
    if text == "all":
        return list(allowed)
    cpus: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            first = int(lo)
            last = int(hi) if dash else first
        except ValueError:
            raise ConfigError(f"cpu_affinity {spec!r}: {part.strip()!r} is not a CPU number or "
                              "range (1, 0-3, 0,2,4-5, all)") from None
        if first < 0 or last < first:
            raise ConfigError(f"cpu_affinity {spec!r}: bad range {part.strip()!r}")
        cpus.extend(range(first, last + 1))
    return cpus


def _shown(cpus: list[int]) -> str:
    return ",".join(map(str, cpus))


def for_process(cpus: list[int], index: int) -> list[int]:
    """The one CPU worker process ``index`` of several is pinned to (round-robin)."""
    return [cpus[index % len(cpus)]]


def pin_process(cpus: list[int]) -> None:
    """Pin every thread of this process, and the threads it starts later, to ``cpus``."""
    wanted = set(cpus)
    os.sched_setaffinity(0, wanted)  # this thread, and so every thread it starts
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: threads started earlier keep their CPUs
        tids = []
    for tid in tids:
        with contextlib.suppress(OSError):  # the thread exited meanwhile
            os.sched_setaffinity(tid, wanted)
    logger.info("pid %d pinned to CPU(s) %s", os.getpid(), _shown(cpus))


__all__ = ["allowed_cpus", "available", "for_process", "parse_cpus", "pin_process"]
