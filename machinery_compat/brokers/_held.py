"""Messages a consumer holds (received, not settled) and keeps alive from one background thread.

SQS (visibility timeout) and Pub/Sub (ack deadline) both lease a message to the consumer that
received it: the lease must be renewed while the task runs, and renewal must never race the
settling call (a renewal landing after a delete/ack would be harmless on SQS but a renewal
landing after a *give back* would hide the message again).  :class:`Holdings` is the part the
two share: the registry keyed by one of the delivery's ``extra`` fields, the
wait-for-renewal-in-flight in :meth:`Holdings.forget`, and one :meth:`Holdings.beat` that picks
what is due, hands it to the broker's renewal call grouped by queue, and always clears the
in-flight marks.  When each entry is due and how it is renewed stay with each broker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from .base import Delivery

logger = logging.getLogger(__name__)


@dataclass
class Held:
    """A held message: its delivery and when it was received (monotonic seconds)."""

    delivery: Delivery
    received: float
    extending: bool = False  # a renewal call for it is on its way


H = TypeVar("H", bound=Held)


class Holdings(Generic[H]):
    """The messages one consumer holds, keyed by ``delivery.extra[key]`` (the receipt
    handle, the ack id), and the thread that renews their leases."""

    def __init__(self, key: str, thread_name: str) -> None:
        self.key = key
        self.thread_name = thread_name
        self._items: dict[str, H] = {}
        self._lock = threading.Condition(threading.RLock())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lock(self) -> threading.Condition:
        """Held while the registry is read or changed (re-entrant): hold it to change an
        entry's fields consistently with :meth:`beat`."""
        return self._lock

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[H]:
        with self._lock:
            return iter(list(self._items.values()))

    def get(self, delivery: Delivery) -> H | None:
        return self._items.get(delivery.extra.get(self.key, ""))

    def hold(self, held: H, beat: Callable[[], float] | None = None) -> None:
        """Register ``held``; with ``beat``, start the renewal thread (once) calling it."""
        with self._lock:
            self._items[held.delivery.extra[self.key]] = held
            if beat is not None and self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._loop, args=(beat,), daemon=True,
                                                name=self.thread_name)
                self._thread.start()

    def discard(self, held: H) -> None:
        """Stop renewing ``held`` (its lease cannot be renewed any more); no waiting."""
        with self._lock:
            self._items.pop(held.delivery.extra[self.key], None)

    def forget(self, delivery: Delivery) -> None:
        """Stop renewing ``delivery`` (it is being settled); if a renewal of it is on its way,
        wait for that call first, so that it cannot undo the settling call."""
        with self._lock:
            held = self._items.pop(delivery.extra.get(self.key, ""), None)
            while held is not None and held.extending:
                self._lock.wait(1.0)

    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return [h.delivery for h in self._items.values()]

    def beat(self, now: float, due_at: Callable[[H, float], float | None],
             group: Callable[[H], str],
             renew: Callable[[str, list[H], float], None]) -> float:
        """Renew every entry due: ``due_at(held, now)`` says when it is (None: never; it may
        :meth:`discard` it), ``renew(group, entries, now)`` renews one group's due entries.
        Returns the seconds until the next entry is due (between 0.05 and 1)."""
        pause = 1.0
        due: dict[str, list[H]] = {}
        with self._lock:
            for held in list(self._items.values()):
                at = due_at(held, now)
                if at is None:
                    continue
                if at <= now:
                    held.extending = True
                    due.setdefault(group(held), []).append(held)
                else:
                    pause = min(pause, at - now)
        try:
            for name, items in due.items():
                renew(name, items, now)
        finally:
            with self._lock:
                for items in due.values():
                    for held in items:
                        held.extending = False
                self._lock.notify_all()
        return max(pause, 0.05)

    def _loop(self, beat: Callable[[], float]) -> None:
        while not self._stop.is_set():
            try:
                pause = beat()
            except Exception:
                logger.exception("%s: renewing held messages failed", self.thread_name)
                pause = 1.0
            self._stop.wait(pause)

    def stop(self) -> None:
        """Stop the renewal thread (what is still held is not renewed any more)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
