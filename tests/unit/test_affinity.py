"""``cpu_affinity`` / ``--cpu-affinity``: parsing CPU lists and choosing each process's CPU
(the pinning itself: tests/integration/test_worker_processes.py)."""

from __future__ import annotations

import os

import pytest

from machinery_compat.exceptions import ConfigError
from machinery_compat.worker.affinity import allowed_cpus, for_process, parse_cpus

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")

CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def test_allowed_cpus_are_this_processs() -> None:
    assert allowed_cpus() == CPUS


@pytest.mark.parametrize("spec", ["all", " ALL ", ",".join(map(str, CPUS)), CPUS, tuple(CPUS)])
def test_every_allowed_cpu(spec: object) -> None:
    assert parse_cpus(spec) == CPUS  # type: ignore[arg-type]


def test_ranges_single_numbers_and_duplicates() -> None:
    first, last = CPUS[0], CPUS[-1]
    assert parse_cpus(str(last)) == [last]
    assert parse_cpus(last) == [last]
    assert parse_cpus(f"{last},{first},{last}") == ([last, first] if last != first else [last])
    if list(range(first, last + 1)) == CPUS:
        assert parse_cpus(f"{first}-{last}") == CPUS


@pytest.mark.parametrize("spec, message", [
    ("x", "'x' is not a CPU number or range"),
    ("1-", "is not a CPU number or range"),
    ("3-1", "bad range '3-1'"),
    ("-1", "is not a CPU number or range"),
    ("", "is not a CPU number or range"),
    ([], "no CPU given"),
    ([True], "CPU numbers are integers"),
    (["1"], "CPU numbers are integers"),
    (1.5, "give CPU numbers"),
])
def test_bad_specs_say_what_is_wrong(spec: object, message: str) -> None:
    with pytest.raises(ConfigError, match="cpu_affinity") as e:
        parse_cpus(spec)  # type: ignore[arg-type]
    assert message in str(e.value)


def test_a_cpu_this_process_may_not_use_is_refused() -> None:
    missing = max(CPUS) + 1000
    with pytest.raises(ConfigError) as e:
        parse_cpus(f"{CPUS[0]},{missing}")
    assert f"CPU(s) {missing} not available to this process" in str(e.value)
    assert f"it may run on {','.join(map(str, CPUS))}" in str(e.value)


def test_each_process_gets_one_cpu_round_robin() -> None:
    assert [for_process([3, 5], i) for i in range(5)] == [[3], [5], [3], [5], [3]]
    assert for_process([2], 7) == [2]


def test_worker_refuses_a_bad_spec_when_built() -> None:
    from machinery_compat import Machinery
    from machinery_compat.config import Config

    app = Machinery(config=Config(broker="memory://", result_backend="memory://"))
    with pytest.raises(ConfigError, match="not available"):
        app.worker(concurrency=1, cpu_affinity=max(CPUS) + 1000)
    assert app.worker(concurrency=1, cpu_affinity="all").cpu_affinity == CPUS
    assert app.worker(concurrency=1).cpu_affinity is None


def test_worker_processes_give_each_child_its_cpu() -> None:
    from machinery_compat import Machinery
    from machinery_compat.config import Config
    from machinery_compat.worker.processes import WorkerProcesses

    app = Machinery(config=Config(broker="memory://", result_backend="memory://"))
    sup = app.worker(concurrency=4, processes=3, cpu_affinity="all")
    assert isinstance(sup, WorkerProcesses) and sup.cpus == CPUS
    for i in range(3):
        assert sup.options_for(i)["cpu_affinity"] == [CPUS[i % len(CPUS)]]
        assert sup.worker(1, i).cpu_affinity == [CPUS[i % len(CPUS)]]
    assert app.worker(concurrency=4, processes=2).options_for(1) == {}
    with pytest.raises(ConfigError):
        app.worker(concurrency=4, processes=2, cpu_affinity="x")
