"""Failures as Celery users know them, on every broker and backend: the worker's
``raised unexpected`` log line with its traceback, ``TaskFailed`` carrying the exception's
type, module and traceback (stored beside Go's TaskState under ``<task UUID>.exc``),
``except OriginalError:``, and ``AsyncResult.result/info/traceback/task_id/wait()``.

The TaskState itself stays exactly what Go writes; a state a Go worker wrote has no record.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

import pytest

from machinery_compat import Machinery, ResultTimeout, TaskFailed
from machinery_compat.backends.base import ExceptionRecord
from tests.helpers import state_bytes

from .conftest import Probe, StartWorker, wait_for


class QuotaExceeded(Exception):
    """A user-defined error whose __init__ and __str__ need their own arguments."""

    def __init__(self, user: str, limit: int) -> None:
        super().__init__(user, limit)
        self.user = user
        self.limit = limit

    def __str__(self) -> str:
        return f"{self.user} is over the limit of {self.limit}"


class Outer:
    class NestedError(LookupError):
        pass


class DiskFull(OSError):
    pass


class Sealed(Exception):
    """A class that refuses subclasses: TaskFailed cannot be combined with it."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("Sealed cannot be subclassed")


GO_FAILURE = state_bytes("task_gofail", "div", "FAILURE", "2024-05-01T12:34:56.123456789Z",
                         error="division by zero")


def _register(app: Machinery) -> None:
    @app.task(name="div")
    def div(a: int, b: int) -> float:
        return a / b

    @app.task(name="raise_")
    def raise_(kind: str) -> None:
        if kind == "quota":
            raise QuotaExceeded("ann", 3)
        if kind == "nested":
            raise Outer.NestedError("no such row")
        if kind == "diskfull":
            raise DiskFull("disk is full")
        if kind == "sealed":
            raise Sealed("sealed error")
        if kind == "group":
            raise ExceptionGroup("several", [ValueError("a"), KeyError("b")])
        if kind == "exit":
            sys.exit("bye")
        if kind == "local":
            class LocalError(Exception):
                pass
            raise LocalError("from a function")
        raise AssertionError(kind)


def _failure(res: Any, timeout: float = 10) -> TaskFailed:
    with pytest.raises(TaskFailed) as info:
        res.get(timeout=timeout)
    return info.value


# -- the worker's log ------------------------------------------------------------------------

def test_failure_logs_celery_line_with_traceback(
    app: Machinery, start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    _register(app)
    start_worker()
    res = app.get_task("div").delay(1, 0)
    _failure(res)
    line = f"Task div[{res.id}] raised unexpected: ZeroDivisionError('division by zero')"
    record = wait_for(lambda: next((r for r in caplog.records if r.getMessage() == line), None),
                      what="the raised unexpected line")
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[0] is ZeroDivisionError
    text = caplog.text
    assert line + "\nTraceback (most recent call last):\n" in text
    assert re.search(r'File ".*test_failures\.py", line \d+, in div\n', text)
    assert "ZeroDivisionError: division by zero\n" in text


def test_retry_logs_one_warning_line_then_failure_traceback(
    app: Machinery, start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[int] = []

    @app.task(name="flaky")
    def flaky() -> None:
        runs.append(1)
        raise RuntimeError(f"attempt {len(runs)}")

    start_worker()
    res = flaky.apply_async(retry_count=1)
    failed = _failure(res)
    assert failed.error == "attempt 2" and failed.exc_type == "RuntimeError"
    retries = [r for r in caplog.records if f"flaky[{res.id}] retry" in r.getMessage()]
    assert len(retries) == 1
    assert retries[0].levelno == logging.WARNING and retries[0].exc_info is None
    assert "attempt 1" in retries[0].getMessage() and "\n" not in retries[0].getMessage()
    line = f"Task flaky[{res.id}] raised unexpected: RuntimeError('attempt 2')"
    record = wait_for(lambda: next((r for r in caplog.records if r.getMessage() == line), None),
                      what="the raised unexpected line")
    assert record.exc_info is not None and str(record.exc_info[1]) == "attempt 2"
    assert not any("raised unexpected" in r.getMessage() and "attempt 1" in r.getMessage()
                   for r in caplog.records)


# -- TaskFailed from a Python worker ---------------------------------------------------------

def test_task_failed_carries_type_module_and_traceback(app: Machinery, start_worker: StartWorker) -> None:
    _register(app)
    start_worker()
    res = app.get_task("div").delay(1, 0)
    err = _failure(res)
    assert (err.task_id, err.task_name, err.error, str(err)) == (
        res.id, "div", "division by zero", "division by zero")
    assert (err.exc_type, err.exc_module) == ("ZeroDivisionError", "builtins")
    assert err.traceback is not None
    assert err.traceback.startswith("Traceback (most recent call last):\n")
    assert re.search(r'File ".*test_failures\.py", line \d+, in div\n', err.traceback)
    assert err.traceback.endswith("ZeroDivisionError: division by zero\n")


def test_except_original_type_catches_it(app: Machinery, start_worker: StartWorker) -> None:
    _register(app)
    start_worker()
    res = app.get_task("div").delay(1, 0)
    with pytest.raises(ZeroDivisionError) as info:
        res.get(timeout=10)
    err = info.value
    assert isinstance(err, TaskFailed) and isinstance(err, ArithmeticError)
    assert type(err).__name__ == "TaskFailed[ZeroDivisionError]"
    assert repr(err) == "TaskFailed[ZeroDivisionError]('division by zero')"
    # one class per original type, reused
    with pytest.raises(ZeroDivisionError) as again:
        app.AsyncResult(res.id).get(timeout=1)
    assert type(again.value) is type(err) and again.value is not err
    assert isinstance(res.get(timeout=1, propagate=False), ZeroDivisionError)


def test_custom_exception_classes(app: Machinery, start_worker: StartWorker) -> None:
    _register(app)
    start_worker()
    task = app.get_task("raise_")
    with pytest.raises(QuotaExceeded) as quota:
        task.delay("quota").get(timeout=10)
    err = quota.value
    assert isinstance(err, TaskFailed)
    assert (err.exc_type, err.exc_module) == ("QuotaExceeded", __name__)
    # only the text travels: str() is the stored error, the original __init__ did not run
    assert str(err) == err.error == "ann is over the limit of 3"
    assert not hasattr(err, "user")
    with pytest.raises(Outer.NestedError) as nested:
        task.delay("nested").get(timeout=10)
    assert nested.value.exc_type == "NestedError" and isinstance(nested.value, LookupError)
    # a class defined inside a function cannot be found: plain TaskFailed, type still named
    local = _failure(task.delay("local"))
    assert type(local) is TaskFailed
    assert (local.exc_type, local.exc_module, local.error) == ("LocalError", __name__, "from a function")


def test_oserror_subclass_is_combined_without_errno(app: Machinery, start_worker: StartWorker) -> None:
    """OSError's C layout does not conflict with TaskFailed's: DiskFull is caught by
    ``except OSError``, with the error text and no errno/strerror/filename."""
    _register(app)
    start_worker()
    with pytest.raises(OSError) as info:
        app.get_task("raise_").delay("diskfull").get(timeout=10)
    err = info.value
    assert isinstance(err, DiskFull) and isinstance(err, TaskFailed)
    assert str(err) == "disk is full" and err.exc_type == "DiskFull"
    assert (err.errno, err.strerror, err.filename) == (None, None, None)


def test_fallback_to_plain_task_failed(app: Machinery, start_worker: StartWorker) -> None:
    """Classes that cannot be combined or built, and BaseExceptions that are not Exceptions."""
    _register(app)
    start_worker()
    task = app.get_task("raise_")
    for kind, exc_type, error in (
        ("sealed", "Sealed", "sealed error"),           # refuses subclasses (TypeError)
        ("group", "ExceptionGroup", "several (2 sub-exceptions)"),  # __new__ wants its own args
        ("exit", "SystemExit", "bye"),                  # not an Exception
    ):
        err = _failure(task.delay(kind))
        assert type(err) is TaskFailed, kind
        assert (err.exc_type, err.error) == (exc_type, error)
        assert err.traceback is not None and f"{exc_type}: {error}\n" in err.traceback


def test_modules_are_never_imported_from_a_record(
    app: Machinery, probe: Probe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record naming a module this process has not imported gives a plain TaskFailed and
    imports nothing; once the module is imported, the same record resolves."""
    monkeypatch.delitem(sys.modules, "tabnanny", raising=False)
    probe.put_state_bytes("task_rec", state_bytes("task_rec", "x", "FAILURE",
                                                  "0001-01-01T00:00:00Z", error="nag"))
    app.backend.set_exception_record("task_rec", ExceptionRecord(
        "NannyNag", "tabnanny", "NannyNag", "Traceback (most recent call last):\n", "nag"))
    err = _failure(app.AsyncResult("task_rec"), timeout=1)
    assert type(err) is TaskFailed and err.exc_type == "NannyNag" and err.exc_module == "tabnanny"
    assert "tabnanny" not in sys.modules
    import tabnanny

    with pytest.raises(tabnanny.NannyNag):
        app.AsyncResult("task_rec").get(timeout=1)


# -- what Go wrote, and what Go sees ---------------------------------------------------------

@pytest.mark.mixed
def test_go_written_failure_has_no_exception_info(app: Machinery, probe: Probe) -> None:
    probe.put_state_bytes("task_gofail", GO_FAILURE)
    res = app.AsyncResult("task_gofail")
    err = _failure(res, timeout=1)
    assert type(err) is TaskFailed
    assert (err.error, err.task_name, err.exc_type, err.exc_module, err.traceback) == (
        "division by zero", "div", None, None, None)
    assert res.traceback is None
    assert isinstance(res.result, TaskFailed) and res.result.exc_type is None


def test_record_from_another_run_or_unreadable_is_ignored(
    app: Machinery, probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    """Go failed this UUID after a Python worker had: the leftover record (other error text)
    is not used; bytes that are not a record are ignored with a warning."""
    probe.put_state_bytes("task_gofail", GO_FAILURE)
    app.backend.set_exception_record("task_gofail", ExceptionRecord(
        "KeyError", "builtins", "KeyError", "Traceback (most recent call last):\n", "'old'"))
    err = _failure(app.AsyncResult("task_gofail"), timeout=1)
    assert type(err) is TaskFailed and err.exc_type is None and err.traceback is None
    probe.put_state_bytes("task_gofail.exc", b"not a record")
    err = _failure(app.AsyncResult("task_gofail"), timeout=1)
    assert type(err) is TaskFailed and err.exc_type is None
    assert any("ignoring the exception record of task task_gofail" in r.getMessage()
               for r in caplog.records)


@pytest.mark.mixed
def test_failure_state_bytes_stay_go_exact_and_record_beside_them(
    app: Machinery, probe: Probe, start_worker: StartWorker
) -> None:
    @app.task(name="boom")
    def boom(msg: str) -> int:
        raise ValueError(msg)

    res = boom.delay('bad "thing" <&>')
    created = re.search(rb'"CreatedAt":"([^"]+)"', probe.state_bytes(res.id) or b"")
    assert created
    start_worker()
    err = _failure(res)
    assert err.error == 'bad "thing" <&>' and err.exc_type == "ValueError"
    assert probe.state_bytes(res.id) == state_bytes(
        res.id, "boom", "FAILURE", created.group(1).decode(),
        error='bad \\"thing\\" \\u003c\\u0026\\u003e')
    raw = probe.state_bytes(f"{res.id}.exc")
    assert raw is not None
    record = json.loads(raw)
    assert list(record) == ["exc_type", "exc_module", "exc_qualname", "traceback", "error"]
    assert record["error"] == 'bad "thing" <&>' and record["exc_module"] == "builtins"
    assert record["traceback"] == err.traceback


def test_success_writes_no_record(app: Machinery, probe: Probe, start_worker: StartWorker) -> None:
    _register(app)
    start_worker()
    res = app.get_task("div").delay(6, 3)
    assert res.get(timeout=10) == 2.0
    assert probe.state_bytes(f"{res.id}.exc") is None


@pytest.mark.kinds("redis")
def test_redis_record_goes_in_the_states_write(
    app: Machinery, start_worker: StartWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One write carries the record then the FAILURE state, with the state's expiry."""
    _register(app)
    fast = app.backend.fast  # type: ignore[attr-defined]
    writes: list[tuple[tuple[Any, ...], ...]] = []
    real = fast.execute

    def spy(*commands: tuple[Any, ...]) -> list[Any]:
        writes.append(commands)
        return real(*commands)  # type: ignore[no-any-return]

    monkeypatch.setattr(fast, "execute", spy)
    start_worker()
    res = app.get_task("div").delay(1, 0)
    _failure(res)
    final = [c for c in writes if any(cmd[:2] == ("SET", res.id) for cmd in c)]
    assert len(final) == 1, writes
    assert [cmd[:2] for cmd in final[0]] == [("SET", f"{res.id}.exc"), ("SET", res.id)]
    assert final[0][0][3:] == final[0][1][3:] == ("EX", 3600)
    client = app.backend.client  # type: ignore[attr-defined]
    assert 3500 < client.ttl(f"{res.id}.exc") <= 3600


# -- AsyncResult, Celery-shaped --------------------------------------------------------------

def test_result_info_traceback_task_id_wait(app: Machinery, start_worker: StartWorker) -> None:
    _register(app)
    div = app.get_task("div")
    ok, bad = div.delay(6, 3), div.delay(1, 0)
    assert ok.task_id == ok.id
    assert (ok.result, ok.info, ok.traceback) == (None, None, None)  # PENDING: nothing yet
    start_worker()
    assert ok.wait(timeout=10) == 2.0
    assert (ok.result, ok.info, ok.traceback) == (2.0, 2.0, None)
    with pytest.raises(ZeroDivisionError):
        bad.wait(timeout=10)
    failed = bad.wait(timeout=1, propagate=False)
    assert isinstance(failed, TaskFailed) and isinstance(failed, ZeroDivisionError)
    assert isinstance(bad.result, ZeroDivisionError) and isinstance(bad.info, TaskFailed)
    assert bad.result.error == "division by zero"
    assert bad.traceback == failed.traceback and bad.traceback is not None
    assert "ZeroDivisionError: division by zero" in bad.traceback


def test_unknown_id_is_pending(app: Machinery) -> None:
    res = app.AsyncResult("task_nobody_knows")
    assert (res.state, res.status, res.ready(), res.result, res.info, res.traceback) == (
        "PENDING", "PENDING", False, None, None, None)
    with pytest.raises(ResultTimeout, match=r"^task task_nobody_knows not ready after 0\.1s "
                       r"\(last state: PENDING\)$") as info:
        res.get(timeout=0.1)
    assert (info.value.task_id, info.value.timeout, info.value.state) == (
        "task_nobody_knows", 0.1, "PENDING")


@pytest.mark.mixed
def test_forget_removes_state_and_record(app: Machinery, probe: Probe, start_worker: StartWorker) -> None:
    _register(app)
    start_worker()
    res = app.get_task("div").delay(1, 0)
    _failure(res)
    assert probe.state_bytes(res.id) is not None and probe.state_bytes(f"{res.id}.exc") is not None
    res.forget()
    assert probe.state_bytes(res.id) is None and probe.state_bytes(f"{res.id}.exc") is None
    assert (res.state, res.traceback, res.result) == ("PENDING", None, None)


def test_go_message_failing_on_a_python_worker_gets_a_record(
    app: Machinery, probe: Probe, start_worker: StartWorker
) -> None:
    """A message a Go producer sent, run by a Python worker: the record is there too."""
    _register(app)
    probe.push("machinery_tasks", b'{"UUID":"task_fromgo","Name":"div","Args":[{"Name":"","Type":'
               b'"int64","Value":1},{"Name":"","Type":"int64","Value":0}]}')
    start_worker()
    err = _failure(app.AsyncResult("task_fromgo"))
    assert err.error == "division by zero"
    assert err.exc_type == "ZeroDivisionError" and isinstance(err, ZeroDivisionError)


def test_exhausted_self_retry_records_the_exception(app: Machinery, start_worker: StartWorker) -> None:
    @app.task(name="gives_up", bind=True, max_retries=1)
    def gives_up(self: Any) -> None:
        raise self.retry(countdown=0.05, exc=QuotaExceeded("ann", 3))

    res = gives_up.delay()
    start_worker()
    with pytest.raises(QuotaExceeded) as info:
        res.get(timeout=10)
    assert isinstance(info.value, TaskFailed)
    assert info.value.exc_type == "QuotaExceeded" and str(info.value) == "ann is over the limit of 3"
