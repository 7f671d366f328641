"""Bad input loses nothing and costs little: every message a worker takes ends in exactly one
place (run, handed back, dead-lettered, dropped), unknown tasks do not slow the others down, and
no message makes the worker spin, crash or log megabytes."""

from __future__ import annotations

import json
import logging
import time

import pytest

from machinery_compat import Machinery, Signature, TaskFailed

from .conftest import Probe, StartWorker, wait_for

pytestmark = pytest.mark.kinds("redis", "memory")


def _register(app: Machinery) -> None:
    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)


def _body(name: str | None, uuid: str, **fields: object) -> bytes:
    sig = {"UUID": uuid, "Name": name, "RoutingKey": "machinery_tasks", **fields}
    return json.dumps(sig).encode()


def test_unusable_messages_are_dead_lettered_with_a_reason(
    app: Machinery, probe: Probe, start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    _register(app)
    deep = b'{"Name":"add","OnSuccess":[' + b'{"OnSuccess":[' * 900 + b"]}" * 900 + b"]}"
    bad = [
        _body(None, "task_null_name"),
        b'{"UUID":"task_no_name","Args":[]}',
        _body("add", "task_big_retry").replace(b"}", b',"RetryCount":' + b"9" * 5000 + b"}"),
        _body("add", "task_big_group").replace(b"}", b',"GroupTaskCount":' + b"7" * 4400 + b"}"),
        deep,
    ]
    probe.push("machinery_tasks", *bad)
    worker = start_worker()
    wait_for(lambda: len(probe.dead()) == len(bad), what="every bad message dead-lettered")
    assert sorted(probe.dead()) == sorted(bad)  # kept byte for byte
    assert worker.outcomes["dead_lettered"] == len(bad)
    reasons = [r.getMessage() for r in caplog.records if "unusable message" in r.getMessage()]
    assert any("names no task" in m for m in reasons)
    assert any("integer string conversion" in m for m in reasons)
    assert any("recursion" in m for m in reasons)
    assert not any("unexpected worker error" in r.getMessage() for r in caplog.records)


def test_huge_typed_integer_fails_the_task_like_go(
    app: Machinery, probe: Probe, start_worker: StartWorker
) -> None:
    _register(app)
    body = _body("add", "task_huge_arg", Args=[{"Type": "int64", "Value": 1}]).replace(
        b'"Value": 1', b'"Value": ' + b"9" * 5000)
    app.backend.set_state_pending(Signature(uuid="task_huge_arg", name="add"))
    probe.push("machinery_tasks", body)
    start_worker()
    with pytest.raises(TaskFailed, match=r'^Reflect task args error: strconv.ParseInt: parsing '
                                         r'"9{40}…\(5000 characters\)…9{20}": value out of range$'):
        app.AsyncResult("task_huge_arg").get(timeout=10)


def test_oversized_message_is_not_parsed_and_logged_short(
    app: Machinery, probe: Probe, start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    _register(app)
    big = _body("add", "task_big", Args=[{"Type": "string", "Value": "x" * 3_000_000}])
    probe.push("machinery_tasks", big)
    worker = start_worker(max_message_size=1_000_000)
    wait_for(lambda: probe.dead() == [big], what="the big message dead-lettered")
    assert worker.outcomes == {"dead_lettered": 1}
    line = next(r.getMessage() for r in caplog.records if "unusable message" in r.getMessage())
    assert f"message of {len(big)} bytes is larger than max_message_size (1000000)" in line
    assert len(line) < 1000 and f"({len(big)} bytes)" in line


def test_unknown_tasks_do_not_slow_the_tasks_behind_them(
    app: Machinery, probe: Probe, start_worker: StartWorker
) -> None:
    _register(app)
    unknown = [_body("go_only", f"task_u{i}") for i in range(100)]
    probe.push("machinery_tasks", *unknown)
    res = app.send_task("add", args=[1, 2])
    worker = start_worker(concurrency=1)
    assert res.get(timeout=10) == 3
    wait_for(lambda: worker.outcomes["run"] == 1, what="the run counted")
    # it ran in the first pass over the queue: each unknown message was handed back once,
    # not cycled through again and again before the known one got its turn
    assert worker.outcomes["run"] == 1
    assert worker.outcomes["handed_back"] <= len(unknown) + 5


def test_a_queue_of_unknown_tasks_does_not_spin_and_keeps_them(
    app: Machinery, probe: Probe, start_worker: StartWorker
) -> None:
    _register(app)
    unknown = [_body("go_only", f"task_spin{i}") for i in range(3)]
    probe.push("machinery_tasks", *unknown)
    worker = start_worker()
    time.sleep(1.5)
    # a spinning worker would have handed them back thousands of times by now
    assert worker.outcomes["handed_back"] < 60, worker.outcomes
    # tasks that arrive meanwhile still run at once
    assert app.send_task("add", args=[2]).get(timeout=10) == 2
    worker.stop(timeout=10)
    # nothing is lost: what was kept aside went back to the queue on stop
    assert sorted(probe.messages()) == sorted(unknown)


def test_every_message_taken_is_accounted_for(
    app: Machinery, probe: Probe, start_worker: StartWorker
) -> None:
    _register(app)
    ok = [app.send_task("add", args=[i]) for i in range(20)]
    probe.push("machinery_tasks", b"not json", _body("", "task_empty"),
               _body("nobody", "task_drop", IgnoreWhenTaskNotRegistered=True))
    worker = start_worker()
    assert [r.get(timeout=10) for r in ok] == list(range(20))
    wait_for(lambda: sum(worker.outcomes.values()) == 23, what="all 23 accounted for")
    assert worker.outcomes == {"run": 20, "dead_lettered": 2, "dropped": 1}
    assert probe.messages() == []
    logging.getLogger("machinery_compat").debug("done")


def test_forged_callbacks_that_would_crash_a_go_worker_are_not_relayed(
    app: Machinery, probe: Probe, start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    _register(app)
    forged = _body("add", "task_forged", Args=[{"Type": "int64", "Value": 1}],
                   OnSuccess=[{"UUID": "task_cb", "Name": "go_only",
                               "Args": [{"Type": "[]int64", "Value": True}]}])
    app.backend.set_state_pending(Signature(uuid="task_forged", name="add"))
    probe.push("machinery_tasks", forged)
    start_worker()
    assert app.AsyncResult("task_forged").get(timeout=10) == 1
    line = wait_for(lambda: next((r.getMessage() for r in caplog.records
                                  if "OnSuccess callback go_only[task_cb]" in r.getMessage()), None),
                    what="the refusal")
    assert "not sent: argument []int64 holds a bool, which crashes a Go worker" in line
    assert probe.messages() == []
