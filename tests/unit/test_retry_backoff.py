"""Pluggable retry back-off (Python workers): delays and the RetryTimeout written."""

from __future__ import annotations

import logging

import pytest

from machinery_compat import Machinery
from machinery_compat.exceptions import ConfigError
from machinery_compat.task import exponential_backoff, fibonacci_backoff, retry_delay


def test_default_is_machinerys_fibonacci() -> None:
    assert retry_delay(None, 0, 0) == (1.0, 1)
    assert retry_delay(None, 5, 3) == (8.0, 8)
    assert [fibonacci_backoff(t, 0) for t in (0, 1, 2, 3, 5)] == [1, 2, 3, 5, 8]


def test_function_delay_rounded_up_into_retry_timeout() -> None:
    assert retry_delay(lambda t, n: 0.2, 0, 0) == (0.2, 1)
    assert retry_delay(lambda t, n: 0, 0, 0) == (0.0, 0)
    assert retry_delay(lambda t, n: 30 * (n + 1), 30, 1) == (60.0, 60)
    assert retry_delay(lambda t, n: 1e30, 0, 0) == (1e9, 1_000_000_000)


@pytest.mark.parametrize("bad", [lambda t, n: -1, lambda t, n: float("nan"),
                                 lambda t, n: "soon", lambda t, n: 1 / 0])
def test_broken_backoff_falls_back_to_fibonacci(bad: object,
                                                caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        assert retry_delay(bad, 3, 2) == (5.0, 5)  # type: ignore[arg-type]
    assert "Fibonacci" in caplog.text


def test_exponential_like_celery() -> None:
    b = exponential_backoff(2, maximum=100, jitter=False)
    assert [b(0, n) for n in range(8)] == [2, 4, 8, 16, 32, 64, 100, 100]
    j = exponential_backoff(1, maximum=8, jitter=True)
    assert all(0 <= j(0, 5) <= 8 and float(j(0, 5)).is_integer() for _ in range(50))
    with pytest.raises(ConfigError):
        exponential_backoff(0)


def test_task_option_forms() -> None:
    app = Machinery(broker="memory://backoff-unit")
    fn = lambda t, n: 7.0  # noqa: E731
    assert app.task(name="a", retry_backoff=fn)(lambda: None).retry_backoff is fn
    assert app.task(name="b")(lambda: None).retry_backoff is None
    celery_factor = app.task(name="c", retry_backoff=3)(lambda: None).retry_backoff
    assert celery_factor is not None and 0 <= celery_factor(0, 2) <= 12
    with pytest.raises(ConfigError):
        app.task(name="d", retry_backoff=False)(lambda: None)
    with pytest.raises(ConfigError):
        app.task(name="e", retry_backoff="fast")(lambda: None)  # type: ignore[call-overload]
    app.close()
