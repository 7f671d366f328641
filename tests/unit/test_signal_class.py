"""machinery_compat.signals.Signal: connect forms, sender filters, weak refs, errors."""

from __future__ import annotations

import gc
import logging
from typing import Any

import pytest

from machinery_compat import signals
from machinery_compat.signals import Signal


def test_connect_as_decorator_and_direct_send_arguments() -> None:
    sig = Signal("s", frozenset({"x"}))
    got: list[tuple[Any, Any, int]] = []

    @sig.connect
    def a(signal: Signal, sender: Any, x: int, **kw: Any) -> str:
        got.append((signal, sender, x))
        return "a"

    def b(sender: Any, **kw: Any) -> str:
        return "b"

    assert sig.connect(b) is b
    assert sig.send("me", x=1) == [(a, "a"), (b, "b")]
    assert got == [(sig, "me", 1)]
    assert sig.receivers == [a, b]


def test_connecting_twice_is_once_and_disconnect() -> None:
    sig = Signal("s")
    calls: list[int] = []

    def r(**kw: Any) -> None:
        calls.append(1)

    sig.connect(r)
    sig.connect(r)
    sig.send(None)
    assert calls == [1]
    assert sig.disconnect(r) is True
    assert sig.disconnect(r) is False
    sig.send(None)
    assert calls == [1]


def test_dispatch_uid() -> None:
    sig = Signal("s")
    sig.connect(lambda **kw: 1, dispatch_uid="one")
    sig.connect(lambda **kw: 2, dispatch_uid="one")
    assert [r for _, r in sig.send(None)] == [1]
    assert sig.disconnect(dispatch_uid="one")
    assert sig.send(None) == []


def test_sender_filter_by_identity_name_and_task_name() -> None:
    sig = Signal("s")

    class FakeTask:
        name = "add"

    task = FakeTask()
    other = FakeTask()
    hits: list[Any] = []
    sig.connect(lambda sender, **kw: hits.append(("name", sender)), sender="add")
    sig.connect(lambda sender, **kw: hits.append(("obj", sender)), sender=task)
    sig.send("add")
    sig.send("sub")
    sig.send(task)
    sig.send(other)
    assert hits == [("name", "add"), ("name", task), ("obj", task), ("name", other)]
    assert sig.has_listeners("add") and not sig.has_listeners("sub")


def test_receiver_errors_are_logged_and_returned(caplog: pytest.LogCaptureFixture) -> None:
    sig = Signal("s")
    boom = ValueError("nope")

    def bad(**kw: Any) -> None:
        raise boom

    sig.connect(bad)
    sig.connect(lambda **kw: "ok")
    with caplog.at_level(logging.ERROR, logger="machinery_compat.signals"):
        out = sig.send(None)
    assert out[0] == (bad, boom) and out[1][1] == "ok"
    assert "Signal handler" in caplog.text and "nope" in caplog.text


def test_weak_receivers_go_away_strong_ones_stay() -> None:
    sig = Signal("s")

    def make() -> Any:
        def inner(**kw: Any) -> str:
            return "inner"
        return inner

    sig.connect(make(), weak=True)
    sig.connect(make())
    gc.collect()
    assert [r for _, r in sig.send(None)] == ["inner"]
    assert len(sig.receivers) == 1

    class Holder:
        def method(self, **kw: Any) -> str:
            return "method"

    h = Holder()
    sig.connect(h.method, weak=True)
    assert [r for _, r in sig.send(None)] == ["inner", "method"]
    del h
    gc.collect()
    assert [r for _, r in sig.send(None)] == ["inner"]


def test_not_callable_refused() -> None:
    with pytest.raises(TypeError):
        Signal("s").connect(42)  # type: ignore[call-overload]


def test_celery_names_and_arguments() -> None:
    assert signals.before_task_publish.providing_args == {
        "body", "exchange", "routing_key", "headers", "properties", "declare", "retry_policy"}
    assert signals.task_postrun.providing_args >= {"task_id", "task", "args", "kwargs", "retval"}
    assert signals.task_failure.providing_args == {
        "task_id", "exception", "args", "kwargs", "traceback", "einfo"}
    for name in ("after_task_publish", "task_received", "task_prerun", "task_success",
                 "task_retry", "worker_ready", "worker_shutdown"):
        assert getattr(signals, name).name == name
