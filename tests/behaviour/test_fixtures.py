"""The behaviour fixtures themselves: each kind's app, worker and probe work end to end."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from machinery_compat import Machinery, Signature

from .conftest import KINDS, Probe, StartWorker, wait_for


@pytest.mark.mixed
def test_app_worker_and_probe(app: Machinery, app_kind: str, probe: Probe, start_worker: StartWorker) -> None:
    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    assert app_kind in KINDS
    res = app.send_task("add", args=[1, 2])
    assert [s.uuid for s in probe.pending()] == [res.id]
    assert Signature.from_json(probe.messages()[0]).uuid == res.id
    assert b'"State":"PENDING"' in (probe.state_bytes(res.id) or b"")
    probe.push("machinery_tasks", b"not json")
    due = (time.time_ns() // 10**9 + 3600) * 10**9  # whole seconds: exact as a Redis score
    probe.push_delayed(Signature(uuid="task_later", name="add").to_json(), due)
    assert [(Signature.from_json(b).uuid, d) for b, d in probe.delayed()] == [("task_later", due)]
    assert [s.uuid for s in probe.delayed_tasks()] == ["task_later"]
    start_worker()
    assert res.get(timeout=5) == 3
    assert b'"State":"SUCCESS"' in (probe.state_bytes(res.id) or b"")
    assert wait_for(lambda: probe.dead() == [b"not json"], what="dead letter")
    assert probe.messages() == []


def test_make_app_shares_broker_and_backend(app: Machinery, make_app: Callable[..., Machinery]) -> None:
    other = make_app()
    res = app.send_task("add", args=[1])
    assert [s.uuid for s in other.broker.pending_tasks()] == [res.id]
    assert other.AsyncResult(res.id).state == "PENDING"
