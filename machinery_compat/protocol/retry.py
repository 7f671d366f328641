"""Machinery's retry arithmetic (``retry/fibonacci.go`` and ``worker.go``).

A failing task with ``RetryCount > 0`` is re-sent with ``RetryCount - 1`` and
``RetryTimeout = fibonacci_next(RetryTimeout)`` seconds of delay: starting from 0 the
delays are 1, 2, 3, 5, 8, 13, … seconds; a user-set ``RetryTimeout=10`` gives 13, 21, ….
"""

from __future__ import annotations

from collections.abc import Iterator


def fibonacci() -> Iterator[int]:
    """1, 1, 2, 3, 5, 8, … (Go's ``retry.Fibonacci``)."""
    a, b = 0, 1
    while True:
        a, b = b, a + b
        yield a


def fibonacci_next(start: int) -> int:
    """The smallest Fibonacci number strictly greater than ``start`` (Go's ``FibonacciNext``)."""
    for n in fibonacci():
        if n > start:
            return n
    raise AssertionError("unreachable")


def retry_delays(retry_count: int, retry_timeout: int = 0) -> list[int]:
    """The successive delays (seconds) Machinery uses for ``retry_count`` retries."""
    out = []
    t = retry_timeout
    for _ in range(retry_count):
        t = fibonacci_next(t)
        out.append(t)
    return out
