"""In-process wake-ups for callers waiting on a query result.

Owns ``Notifier``: a waiter registers interest in a key before it reads the database, and
whoever stores a result for that key in this process wakes it at once. It is only a shortcut:
waiters also re-read the database at a short interval, so a result stored by another replica is
seen too, and nothing here is state another replica would need.

Must never: be the only way a result is found, or grow without bound (an entry lives only while
someone waits on it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterable


class Notifier:
    """Keyed one-shot events with waiter counting, so idle keys leave no entry behind."""

    def __init__(self) -> None:
        self._events: dict[Hashable, tuple[asyncio.Event, int]] = {}

    def register(self, key: Hashable) -> asyncio.Event:
        """An event set when ``key`` is published; call ``release`` when done waiting."""
        event, waiters = self._events.get(key, (asyncio.Event(), 0))
        self._events[key] = (event, waiters + 1)
        return event

    def release(self, key: Hashable, event: asyncio.Event) -> None:
        current = self._events.get(key)
        if current is None or current[0] is not event:
            return
        if current[1] <= 1:
            del self._events[key]
        else:
            self._events[key] = (event, current[1] - 1)

    def publish(self, keys: Iterable[Hashable]) -> None:
        """Wake everyone waiting on ``keys``; later waiters get a fresh event."""
        for key in keys:
            entry = self._events.pop(key, None)
            if entry is not None:
                entry[0].set()

    def __len__(self) -> int:
        return len(self._events)
