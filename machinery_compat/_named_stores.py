"""Process-wide stores looked up by name, for the in-memory broker and result backend.

Every broker (backend) built on ``memory://<name>`` in one process shares the store of that
name.  After a fork the child keeps the parent's data as it was, but gets fresh locks: a lock
another thread held at the fork would stay held in the child for ever.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

S = TypeVar("S")


class NamedStores(Generic[S]):
    """Stores made by ``factory`` on first use of a name; ``renew_locks(store)`` gives a store
    fresh locks in a forked child."""

    def __init__(self, factory: Callable[[], S], renew_locks: Callable[[S], None]) -> None:
        self._factory = factory
        self._renew_locks = renew_locks
        self._stores: dict[str, S] = {}
        self._lock = threading.Lock()
        #: every store still in use (also those reset() dropped but a user still holds)
        self._live: weakref.WeakValueDictionary[int, S] = weakref.WeakValueDictionary()
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    def get(self, name: str) -> S:
        with self._lock:
            store = self._stores.get(name)
            if store is None:
                store = self._stores[name] = self._factory()
                self._live[id(store)] = store
            return store

    def reset(self, name: str | None = None) -> None:
        """Forget the store ``name`` (every store when ``None``); users built on it afterwards
        start empty, users still holding the old store keep it."""
        with self._lock:
            if name is None:
                self._stores.clear()
            else:
                self._stores.pop(name, None)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        for store in list(self._live.values()):
            self._renew_locks(store)
