"""The sublime fork's worker semantics (``wire_dialect="sublime"``) on real brokers: Redis
(no message visibility: keep-and-retry re-sends), SQS on moto and Azure on Azurite (the
message is kept and its visibility changed).  Pure rules: tests/unit/test_sublime_worker.py."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from machinery_compat import Machinery, Signature

from .conftest import Probe, StartWorker, wait_for

KINDS = ("redis", "sqs+redis", "azure+redis")
GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "sublime.json"


def _case(name: str) -> bytes:
    """A Signature the fork's json.Marshal wrote (written by interop/sublime-golden.sh)."""
    return next(str(c["json"]) for c in json.loads(GOLDEN.read_text("utf-8"))
                if c["name"] == name).encode("utf-8")


def _sublime(make_app: Callable[..., Machinery]) -> tuple[Machinery, list[tuple[int, int]]]:
    """A sublime app and what it publishes: (AttemptCount, RetryCount) of each message."""
    app = make_app(wire_dialect="sublime")
    published: list[tuple[int, int]] = []
    app.set_pre_publish_handler(lambda sig: published.append((sig.attempt_count,
                                                              sig.retry_count)))
    return app, published


@pytest.mark.kinds(*KINDS)
def test_default_retry_adds_one_attempt(make_app: Callable[..., Machinery],
                                        start_worker: StartWorker, app_kind: str) -> None:
    app, published = _sublime(make_app)
    seen: list[int] = []

    @app.task(name="flaky", bind=True)
    def flaky(self: Any) -> int:
        seen.append(self.request.signature.attempt_count)
        if len(seen) == 1:
            raise RuntimeError("first run fails")
        return len(seen)

    res = app.send_task("flaky", retry_count=1)
    start_worker(app)
    assert res.get(timeout=30) == 2
    assert published == [(0, 1), (1, 0)]  # the retry's message: AttemptCount + 1
    # SQS and Azure overwrite it on receipt with the receive count of the new message - 1
    # (Azure: 1 when the Python consumer received it a moment before it was due and hid it
    # again: whole-second visibility timeouts)
    assert seen == [0, 1] if app_kind == "redis" else (
        seen == [0, 0] if app_kind == "sqs+redis" else seen[0] == 0 and seen[1] in (0, 1))


@pytest.mark.kinds(*KINDS)
def test_keep_and_retry(make_app: Callable[..., Machinery], start_worker: StartWorker,
                        app_kind: str) -> None:
    app, published = _sublime(make_app)
    runs: list[tuple[int, str, float]] = []
    sigs: list[Signature] = []

    @app.task(name="later", bind=True)
    def later(self: Any) -> str:
        s = self.request.signature
        runs.append((s.attempt_count, s.sqs_message_id, time.monotonic()))
        sigs.append(s.copy())
        if len(runs) == 1:
            raise self.retry(countdown=2, keep_message=True)
        return "done"

    res = app.send_task("later", retry_count=3)
    w = start_worker(app)
    assert res.get(timeout=30) == "done"
    assert [a for a, _, _ in runs] == [0, 1]
    assert runs[1][2] - runs[0][2] >= 1.5, "made visible again only after the countdown"
    if app_kind == "redis":  # no visibility: re-sent, AttemptCount + 1, RetryCount untouched
        assert published == [(0, 3), (1, 3)]
    else:  # the same message kept: nothing re-sent, its second receipt counts the attempt
        assert published == [(0, 3)]
        if app_kind == "sqs+redis":
            assert runs[0][1] and runs[0][1] == runs[1][1]
            # the fork's SQS receive fields, filled before the task ran
            first = sigs[0]
            assert first.routing_key == app.config.default_queue and first.sqs_receipt_handle
            assert first.ingestion_time is not None and first.first_received is not None
            assert first.received_at is not None and not first.no_backend
            assert first.ingestion_time.unix_ns <= first.received_at.unix_ns
    assert w.outcomes["run"] == 2 and sum(w.outcomes.values()) == 2


@pytest.mark.kinds(*KINDS)
def test_unknown_task_hook(make_app: Callable[..., Machinery], start_worker: StartWorker,
                           app_kind: str, _sqs_sent: list[tuple[bytes, int]]) -> None:
    app, _ = _sublime(make_app)
    calls: list[tuple[str, float]] = []

    @app.on_unknown_task
    def hook(sig: Signature) -> object:
        calls.append((sig.name, time.monotonic()))
        return (True, 2.0) if len(calls) == 1 else False

    app.send_task("go_only_task", [1])
    w = start_worker(app)
    wait_for(lambda: w.outcomes["dropped"] == 1, timeout=20, what="dropped by the hook")
    assert [n for n, _ in calls] == ["go_only_task"] * 2
    assert w.outcomes["handed_back"] == 1 and sum(w.outcomes.values()) == 2
    gap = calls[1][1] - calls[0][1]
    if app_kind == "redis":  # the fork's Redis broker hands back at once (retry_in ignored)
        assert gap < 1.5
        assert Probe(app, _sqs_sent).messages(app.config.default_queue) == []
    else:  # SQS/Azure: visible again after retry_in
        assert gap >= 1.5


@pytest.mark.kinds("redis", "sqs+redis")
def test_no_backend_writes_no_state(make_app: Callable[..., Machinery],
                                    start_worker: StartWorker, app_kind: str,
                                    _sqs_sent: list[tuple[bytes, int]]) -> None:
    app, _ = _sublime(make_app)
    probe = Probe(app, _sqs_sent)
    runs: list[str] = []

    @app.task(name="nb", bind=True)
    def nb(self: Any) -> None:
        runs.append(self.request.id)
        if runs.count(self.request.id) == 1 and self.request.id == "task_nb":
            raise RuntimeError("retried once")  # RETRY, PENDING of the retry: skipped too

    def body(uuid: str, no_backend: bool) -> bytes:
        return Signature(uuid=uuid, name="nb", args=[], retry_count=1, no_backend=no_backend,
                         wire_dialect="sublime").to_json()

    bodies = [body("task_nb", True), body("task_yb", False)]
    if app_kind == "sqs+redis":  # the fork's SQS consumer sets NoBackend for these
        bodies.append(body("", False))
    probe.push(app.config.default_queue, *bodies)
    w = start_worker(app)
    wait_for(lambda: len(runs) == len(bodies) + 1, timeout=20, what="every run")
    wait_for(lambda: b"SUCCESS" in (probe.state_bytes("task_yb") or b""), what="SUCCESS")
    time.sleep(0.3)
    assert probe.state_bytes("task_nb") is None and probe.state_bytes("") is None
    assert w.outcomes["run"] == len(bodies) + 1


@pytest.mark.kinds("redis")
def test_first_retry_member_as_the_fork_writes_it(make_app: Callable[..., Machinery],
                                                  start_worker: StartWorker) -> None:
    """A fork producer's add(1,1) with RetryCount 3 fails once on a Python sublime worker:
    the ZADD member is the fork's first-retry bytes (golden ``sublime_first_retry``: RetryCount
    2, AttemptCount 1, RetryTimeout 1, ``"Delay":0``), plus this library's retries header."""
    from machinery_compat.task import RETRIES_HEADER

    app, _ = _sublime(make_app)
    probe = Probe(app)

    @app.task(name="add")
    def add(a: int, b: int) -> int:
        raise RuntimeError("fails")

    sent = Signature.from_json(_case("sublime_add_1_1"))
    sent.retry_count = 3
    probe.push("machinery_tasks", sent.to_json())
    start_worker(app)
    [(member, _due)] = wait_for(probe.delayed, timeout=10, what="the retry's ZADD")
    again = Signature.from_json(member)
    assert again.headers == {RETRIES_HEADER: "1"}
    again.headers = {}
    assert again.to_json() == _case("sublime_first_retry")
