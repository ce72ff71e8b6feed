"""Sortable unique identifiers for events and aggregates.

Event ids are ULIDs: 48 bits of milliseconds since the epoch followed by 80 random
bits, in Crockford base32, so they sort by creation time as plain strings and stay
unique across processes without coordination.
"""

from __future__ import annotations

import os
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid(now_ms: int | None = None) -> str:
    """Return a new 26-character ULID.

    Args:
        now_ms: Milliseconds since the epoch; the current time when omitted.

    Returns:
        The identifier, lexicographically ordered by its timestamp part.
    """
    millis = int(time.time() * 1000) if now_ms is None else now_ms
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
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
