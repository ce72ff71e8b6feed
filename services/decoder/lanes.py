"""Which lane a decoder serves next: paid before free, decided before every fetch.

A decoder renders one job at a time and fetches one job per poll. Before each fetch
it waits until it has room for a job, then looks at the jobs waiting on its own
partitions: while a lane of a lower priority number (pro, plus) has work waiting, it
pauses its partitions of higher numbers (free), and it resumes them as soon as nothing
waits above them (`libs.lanes.partitions_to_pause`). A paused lane's jobs stay in
Kafka, uncommitted, so nothing is dropped; they are served when capacity frees up.

Deciding at fetch time, not while a job waits in memory, is what makes the order
hold: the decoder never holds a fetched free job while a paid one arrives.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from libs.bus.ports import Consumer, Record, TopicPartition
from libs.events.schemas import LaneLoad
from libs.lanes import lane_of, partitions_to_pause

log = logging.getLogger(__name__)


def _lane_name(tp: TopicPartition) -> str:
    lane = lane_of(tp)
    return lane.tier if lane is not None else f"{tp.topic}/{tp.partition}"


class LaneGate:
    """Serves one decoder's lanes in priority order and counts what it takes.

    Args:
        room: Returns once the decoder can take another job.
    """

    def __init__(self, room: Callable[[], Awaitable[None]]) -> None:
        self._room = room
        self._held: set[str] = set()
        self._served: set[str] = set()
        self._taken: Counter[str] = Counter()

    async def before_poll(self, consumer: Consumer) -> None:
        """Waits for room, then pauses and resumes the member's partitions by priority."""
        await self._room()
        assigned = consumer.assignment()
        if not assigned:
            return
        waiting = await consumer.waiting(sorted(assigned, key=lambda tp: (tp.topic, tp.partition)))
        hold = partitions_to_pause(assigned, waiting)
        paused = consumer.paused() & assigned
        if hold - paused:
            consumer.pause(sorted(hold - paused, key=lambda tp: (tp.topic, tp.partition)))
        if paused - hold:
            consumer.resume(sorted(paused - hold, key=lambda tp: (tp.topic, tp.partition)))
        self._served = {_lane_name(tp) for tp in assigned}
        held = {_lane_name(tp) for tp in hold}
        if held != self._held:
            log.info("lanes held back: %s", ", ".join(sorted(held)) or "none")
        self._held = held

    def took(self, record: Record) -> None:
        """Counts a job taken from its lane."""
        self._taken[_lane_name(record.tp)] += 1

    def report(self) -> dict[str, LaneLoad]:
        """Per lane this decoder serves or took from: paused or not, and jobs taken."""
        names = self._served | self._held | set(self._taken)
        return {name: LaneLoad(paused=name in self._held, taken=self._taken[name]) for name in sorted(names)}
