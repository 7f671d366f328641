"""TaskFailed built from an exception record (no services): the record's JSON, and which
original classes the raised exception also belongs to."""

from __future__ import annotations

from typing import Any

import pytest

from machinery_compat import DecodeError, TaskFailed
from machinery_compat.backends.base import ExceptionRecord, exception_record_key
from machinery_compat.exceptions import task_failed


class Cached(Exception):
    """A class whose __new__ hands out one shared instance (not of the class asked for)."""

    _one: Any = None

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if Cached._one is None:
            Cached._one = Exception.__new__(Cached)
        return Cached._one


class WithGetattr:
    """A namespace whose __getattr__ must never be called by the lookup."""

    calls = 0

    def __getattr__(self, name: str) -> Any:
        WithGetattr.calls += 1
        return ValueError


hooked = WithGetattr()


def _record_for(exc: BaseException, error: str) -> ExceptionRecord:
    try:
        raise exc
    except BaseException as e:
        return ExceptionRecord.from_exception(e, error)


def test_record_json_round_trip_and_key() -> None:
    rec = _record_for(KeyError("k\ud800é"), "'k\\ud800é'")
    raw = rec.to_json()
    assert raw.isascii() and raw.startswith(b'{"exc_type":"KeyError","exc_module":"builtins",'
                                            b'"exc_qualname":"KeyError","traceback":"Traceback')
    assert ExceptionRecord.from_json(raw) == rec
    assert "in _record_for\n" in rec.traceback
    assert exception_record_key("task_1") == "task_1.exc"


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"exc_type":"X"}', b"\xff",
                                 b'{"exc_type":1,"exc_module":"","exc_qualname":"",'
                                 b'"traceback":"","error":""}'])
def test_record_refuses_what_it_cannot_read(raw: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        ExceptionRecord.from_json(raw)
    assert info.value.raw == raw


def test_plain_task_failed_unchanged_shape() -> None:
    err = TaskFailed("task_1", "boom", "add")
    assert (str(err), repr(err), err.args) == ("boom", "TaskFailed('boom')", ("boom",))
    assert (err.exc_type, err.exc_module, err.traceback) == (None, None, None)


class Outer:
    class Inner(KeyError):
        pass


def test_lookup_by_module_and_qualname() -> None:
    err = task_failed("t", "e", exc_type="Inner", exc_module=__name__, exc_qualname="Outer.Inner")
    assert isinstance(err, Outer.Inner) and isinstance(err, TaskFailed)
    # only the qualname finds a nested class; a class that is no exception is refused
    assert type(task_failed("t", "e", exc_type="Inner", exc_module=__name__)) is TaskFailed
    assert type(task_failed("t", "e", exc_type="ExceptionRecord", exc_module=__name__)) is TaskFailed
    err = task_failed("t", "e", exc_type="JSONDecodeError", exc_module="json.decoder")
    import json

    assert isinstance(err, json.JSONDecodeError)
    assert not hasattr(err, "msg")  # JSONDecodeError.__init__ did not run: only the text travels


def test_lookup_runs_no_getattr_hooks() -> None:
    before = WithGetattr.calls
    err = task_failed("t", "e", exc_type="Anything", exc_module=__name__,
                      exc_qualname="hooked.Anything")
    assert type(err) is TaskFailed and WithGetattr.calls == before


def test_a_new_returning_another_object_falls_back() -> None:
    err = task_failed("t", "e", exc_type="Cached", exc_module=__name__)
    assert type(err) is TaskFailed and err.exc_type == "Cached"


def test_task_failed_subclass_is_not_combined_again() -> None:
    err = task_failed("t", "e", exc_type="TaskFailed", exc_module="machinery_compat.exceptions")
    assert type(err) is TaskFailed


def test_combined_class_is_cached_and_named() -> None:
    a = task_failed("t1", "x", exc_type="ValueError", exc_module="builtins")
    b = task_failed("t2", "y", exc_type="ValueError", exc_module="builtins")
    assert type(a) is type(b) and type(a).__qualname__ == "TaskFailed[ValueError]"
    assert type(a).__module__ == "machinery_compat.exceptions"
    assert (a.task_id, b.error, a.exc_type, a.exc_module) == ("t1", "y", "ValueError", "builtins")
