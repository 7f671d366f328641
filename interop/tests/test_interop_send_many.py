"""``app.send_many`` to a real Go Machinery worker: two cells, Redis (v2 with go-redis; a
chunk in one write) and AMQP + Redis backend (v1; confirmed publishes from threads).  The Go
worker runs every task Python sent in bulk and Python reads each result Go wrote."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from interop.tests.harness import StackSpec
from interop.tests.single_stack import SINGLE_STACK_SPECS, single_stack

pytestmark = [pytest.mark.interop, pytest.mark.redis]

_serial = itertools.count(1)


@pytest.mark.parametrize("spec", SINGLE_STACK_SPECS, ids=lambda s: s.id)
def test_go_worker_runs_what_send_many_sent(spec: StackSpec, go_bins: Any, interop_redis: Any,
                                            new_db: Callable[[], str],
                                            request: pytest.FixtureRequest) -> None:
    queue = f"q_send_many_{spec.id.replace('+', '_')}_{next(_serial)}"
    stack, py = single_stack(spec, queue, interop_redis, new_db, request)
    add = py.app.signature("add")
    go = stack.go_worker().start()
    try:
        items: list[Any] = [("add", [i, 1]) for i in range(150)]
        items += [add.clone([1000, i]) for i in range(50)]
        results = py.app.send_many(items, chunk=64)
        want = [i + 1 for i in range(150)] + [1000 + i for i in range(50)]
        assert [r.get(timeout=60) for r in results] == want
        ran = [e["uuid"] for e in go.tasks()]
        assert sorted(ran) == sorted(r.id for r in results)  # each once, all on Go
    finally:
        go.stop()
        py.close()
