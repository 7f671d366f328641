"""Stepping aside for a message this consumer handed back (pure: no I/O, no clock of its own).

A worker hands a message back to an SQS queue (a task it does not have, an ETA too far off)
by changing its visibility: it becomes receivable again after a whole number of seconds.  A
consumer whose long polls restart as soon as they return polls in step with that timeout
(both are whole seconds from the same moment), so it starts a poll just after the message
reappears, every time, and a worker that has the task may never get it: seen with Go
Machinery workers sharing a queue on moto, whose long polls only see a message that was
already visible when they started.

So for :data:`STEP_ASIDE` seconds after a handed-back message is due to be visible again,
the consumer polls none of that queue; and a long poll that would still run at that moment
is made shorter, to end :data:`EARLY` seconds before it (on real SQS a running long poll
receives a message as soon as it reappears).  Other workers get the first chance; if none
takes it, this consumer receives it again once the pause is over.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Final

#: seconds a consumer keeps out of a queue once a message it handed back is visible again
STEP_ASIDE: Final = 0.5
#: a long poll running then ends this many seconds before the message reappears
EARLY: Final = 0.05


class StepAside:
    """Per queue, the (monotonic) times handed-back messages become visible again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: dict[str, list[float]] = {}

    def note(self, queue: str, visible_at: float) -> None:
        """A message of ``queue`` this consumer handed back is visible again at
        ``visible_at``."""
        with self._lock:
            self._due.setdefault(queue, []).append(visible_at)

    def wait_for(self, queue: str, wait: int, now: float) -> int | None:
        """The ``WaitTimeSeconds`` a poll of ``queue`` starting at ``now`` may use (at most
        ``wait``), or None: do not poll it now."""
        with self._lock:
            due = self._due.get(queue)
            if not due:
                return wait
            due[:] = [t for t in due if t + STEP_ASIDE > now]
            if not due:
                del self._due[queue]
                return wait
            if any(t - EARLY <= now for t in due):
                return None
            return max(0, min(wait, int(min(due) - EARLY - now)))

    def pause_left(self, queues: Sequence[str], now: float) -> float | None:
        """Seconds until the first of ``queues`` kept out now may be polled again (None:
        none is kept out)."""
        with self._lock:
            ends = [t + STEP_ASIDE - now for q in queues for t in self._due.get(q, ())
                    if t - EARLY <= now < t + STEP_ASIDE]
        return min(ends) if ends else None
