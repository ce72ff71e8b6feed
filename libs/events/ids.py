"""Sortable unique identifiers for events and aggregates.

Event ids are ULIDs: 48 bits of milliseconds since the epoch followed by 80 random
bits, in Crockford base32, so they sort by creation time as plain strings and stay
unique across processes without coordination. Within one process they are also
strictly increasing: an id made in the same millisecond as the previous one takes
the previous random part plus one (the monotonic variant of the ULID spec).
"""

from __future__ import annotations

import os
import threading
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80
_lock = threading.Lock()
_last = (0, 0)  # (milliseconds, random part) of the previous id


def new_ulid(now_ms: int | None = None) -> str:
    """Return a new 26-character ULID.

    Args:
        now_ms: Milliseconds since the epoch; the current time when omitted.

    Returns:
        The identifier, lexicographically ordered by its timestamp part.
    """
    global _last
    millis = int(time.time() * 1000) if now_ms is None else now_ms
    with _lock:
        last_ms, last_random = _last
        if millis <= last_ms and now_ms is None and last_random + 1 < (1 << _RANDOM_BITS):
            millis, random_part = last_ms, last_random + 1
        else:
            random_part = int.from_bytes(os.urandom(10), "big")
        _last = (millis, random_part)
    value = (millis << _RANDOM_BITS) | random_part
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def ulid_time_ms(ulid: str) -> int:
    """Return the millisecond timestamp encoded in a ULID."""
    value = 0
    for char in ulid[:10]:
        value = value * 32 + _CROCKFORD.index(char)
    return value
