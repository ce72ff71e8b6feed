"""The metered usage every gateway holds: a fold of the compacted `darkroom.usage` topic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from libs.bus import Record
from libs.events import REGISTRY, DecodeError, Envelope
from libs.events.schemas import AccountUsage
from libs.ratelimit import UsageLedger


@dataclass
class MeteredUsage:
    """Every account's usage per day, as the metering service last published it."""

    days: dict[str, dict[str, AccountUsage]] = field(default_factory=dict)
    """account id -> day (YYYY-MM-DD) -> usage."""
    changes: int = 0
    updated: asyncio.Event = field(default_factory=asyncio.Event)
    ledger: UsageLedger | None = None
    """The rate-limit ledger that counts today's metered images toward the daily quota."""
    clock: Callable[[], float] = time.time

    def apply(self, usage: AccountUsage) -> None:
        self.days.setdefault(usage.account_id, {})[usage.day] = usage
        self.changes += 1
        self.updated.set()
        if self.ledger is not None:
            through = usage.completed_through.timestamp() if usage.completed_through is not None else None
            self.ledger.record_metered(usage.account_id, usage.day, usage.images, through, self.clock())

    def of(self, account_id: str, since: str) -> list[AccountUsage]:
        """The account's days from `since` (YYYY-MM-DD) on, oldest first."""
        return [u for day, u in sorted(self.days.get(account_id, {}).items()) if day >= since]

    async def __call__(self, envelope: Envelope, record: Record) -> None:
        """The feed's handler: folds `AccountUsage` records (others are not ours)."""
        if envelope.type != AccountUsage.TYPE:
            return
        try:
            self.apply(REGISTRY.decode_as(envelope, AccountUsage))
        except DecodeError:
            return  # the topic's producer is the metering service; nothing to answer here
