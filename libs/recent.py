"""A bounded map that forgets its least recently written entries.

Services keep what they wrote last per aggregate (a job's latest record, a document's
latest revision) so the next input needs no read back; the store stays the truth, so
forgetting an entry only costs a read.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class RecentMap(Generic[K, V]):
    """At most `capacity` entries; writing one makes it the newest, the oldest goes first."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The entry, or None when it was never written or has been forgotten."""
        return self._entries.get(key)

    def put(self, key: K, value: V) -> None:
        """Write an entry (the newest now), forgetting the oldest beyond capacity."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> None:
        """Forget an entry (no error when absent)."""
        self._entries.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)
