"""Machinery's Fibonacci retry arithmetic (§4, retry/fibonacci.go)."""

from __future__ import annotations

import itertools

import pytest

from machinery_compat.protocol.retry import fibonacci, fibonacci_next, retry_delays


def test_fibonacci_sequence() -> None:
    assert list(itertools.islice(fibonacci(), 12)) == [1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144]


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        (-1, 1),
        (0, 1),
        (1, 2),
        (2, 3),
        (3, 5),
        (4, 5),
        (5, 8),
        (10, 13),
        (13, 21),
        (20, 21),
        (144, 233),
        (10**6, 1346269),
    ],
)
def test_fibonacci_next(start: int, expected: int) -> None:
    assert fibonacci_next(start) == expected


def test_retry_delays_from_zero() -> None:
    assert retry_delays(6) == [1, 2, 3, 5, 8, 13]


def test_retry_delays_from_user_timeout() -> None:
    assert retry_delays(3, 10) == [13, 21, 34]


def test_retry_delays_none() -> None:
    assert retry_delays(0) == []
    assert retry_delays(0, 10) == []


def test_retry_delays_chain_fibonacci_next() -> None:
    t = 0
    for delay in retry_delays(10):
        t = fibonacci_next(t)
        assert delay == t


def test_default_retry_delay_rounds_to_a_fibonacci_step() -> None:
    from machinery_compat import ConfigError, Machinery
    from machinery_compat.task import timeout_for_first_delay

    assert [timeout_for_first_delay(d) for d in (1, 2, 4, 5, 10, 60)] == [0, 1, 3, 3, 8, 55]
    app = Machinery(broker="memory://unit-retry")  # never connected: signature() does no I/O

    @app.task(name="t", default_retry_delay=10, max_retries=4)
    def t() -> None:
        return None

    sig = t.signature()
    assert (sig.retry_count, sig.retry_timeout) == (4, 8)  # delays 13, 21, 34, 55 s
    with pytest.raises(ConfigError, match="Fibonacci"):
        app.task(name="u", retry_backoff=False)(lambda: None)
