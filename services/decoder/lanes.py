"""Which lane a decoder serves next: paid before free, decided before every fetch.

A decoder fetches only as many jobs as its batch has room for, in images. Before each
fetch it waits until the batch has room, then looks at the jobs waiting on its own
partitions: while a lane of a lower priority number (pro, plus) has work waiting, it
pauses its partitions of higher numbers (free), and it resumes them as soon as nothing
waits above them (`libs.lanes.partitions_to_pause`). A paused lane's jobs stay in
Kafka, uncommitted, so nothing is dropped; they are served when capacity frees up.

Deciding at fetch time, not while a job waits in memory, is what makes the order
hold: the decoder never holds a fetched free job while a paid one arrives. When the
batch is full, the engine asks the gate what waits unfetched (`backlog`) at every pass
boundary and preempts a lower-priority render for a paid job (services.decoder.engine).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from libs.bus.ports import Consumer, Record, TopicPartition
from libs.events.schemas import LaneLoad
from libs.lanes import lane_of, partitions_to_pause
from services.decoder.engine import BatchStats

log = logging.getLogger(__name__)


def lane_name(tp: TopicPartition) -> str:
    """The lane a partition belongs to, or topic/partition outside every lane."""
    lane = lane_of(tp)
    return lane.name if lane is not None else f"{tp.topic}/{tp.partition}"


def lane_priority(tp: TopicPartition) -> int:
    """The priority of the lane a partition belongs to (0 outside every lane)."""
    lane = lane_of(tp)
    return lane.priority if lane is not None else 0


CAPPED_RECHECK_S = 0.05
"""How often a gate whose next jobs the mixed-batch cap holds back looks again (for a render
that ended, or a paid job that arrived)."""


class LaneGate:
    """Serves one decoder's lanes in priority order and counts what it takes.

    Args:
        room: Returns the images the batch has room for, once it has some.
        room_for: The images a job of a lane priority could take now (the batch's mixed
            cap: a free job does not join a paid render beyond it); None: `room` alone.
    """

    def __init__(self, room: Callable[[], Awaitable[int]], room_for: Callable[[int], int] | None = None) -> None:
        self._room = room
        self._room_for = room_for
        self._member: Consumer | None = None
        self._held: set[str] = set()
        self._served: set[str] = set()
        self._taken: Counter[str] = Counter()

    async def backlog(self) -> dict[int, int]:
        """Jobs waiting unfetched on this member's partitions, per lane priority.

        As the member last heard from the broker (no request): Kafka's client keeps
        fetching the partitions it serves in the background, so a paid job that arrives
        while the batch is full shows up here within a fetch.
        """
        member = self._member
        if member is None:
            return {}
        assigned = member.assignment()
        if not assigned:
            return {}
        waiting = await member.waiting(sorted(assigned, key=lambda tp: (tp.topic, tp.partition)))
        counts: Counter[int] = Counter()
        for tp, jobs in waiting.items():
            if jobs > 0:
                counts[lane_priority(tp)] += jobs
        return dict(counts)

    async def before_poll(self, consumer: Consumer) -> int | None:
        """Waits for room, then pauses and resumes the member's partitions by priority.

        Returns:
            The most jobs to fetch: the images the batch has room for.
        """
        self._member = consumer
        while True:
            room = await self._room()
            assigned = consumer.assignment()
            if not assigned:
                return room
            waiting = await consumer.waiting(sorted(assigned, key=lambda tp: (tp.topic, tp.partition)))
            hold = partitions_to_pause(assigned, waiting)
            self._pause(consumer, assigned, hold)
            if self._room_for is None:
                return room
            # The lane the fetch will serve: the best with jobs waiting, else any (the lowest).
            fetched = [lane_priority(tp) for tp in assigned - hold if waiting.get(tp, 0) > 0]
            priority = min(fetched) if fetched else max(lane_priority(tp) for tp in assigned)
            allowed = min(room, self._room_for(priority))
            if allowed >= 1:
                return allowed
            await asyncio.sleep(CAPPED_RECHECK_S)

    def _pause(self, consumer: Consumer, assigned: set[TopicPartition], hold: set[TopicPartition]) -> None:
        """Pauses the partitions to hold back and resumes the others."""
        paused = consumer.paused() & assigned
        if hold - paused:
            consumer.pause(sorted(hold - paused, key=lambda tp: (tp.topic, tp.partition)))
        if paused - hold:
            consumer.resume(sorted(paused - hold, key=lambda tp: (tp.topic, tp.partition)))
        self._served = {lane_name(tp) for tp in assigned}
        held = {lane_name(tp) for tp in hold}
        if held != self._held:
            log.info("lanes held back: %s", ", ".join(sorted(held)) or "none")
        self._held = held

    def took(self, record: Record) -> None:
        """Counts a job taken from its lane."""
        self._taken[lane_name(record.tp)] += 1

    def report(self, stats: BatchStats | None = None) -> dict[str, LaneLoad]:
        """Per lane this decoder serves or took from: paused or not, jobs taken, and with
        the batch's `stats` its preemptions and images/s."""
        names = self._served | self._held | set(self._taken) | (stats.lanes() if stats is not None else set())
        return {
            name: LaneLoad(
                paused=name in self._held,
                taken=self._taken[name],
                preempted=stats.preempted[name] if stats is not None else 0,
                images_per_s=round(stats.images_per_s(name), 4) if stats is not None else 0.0,
            )
            for name in sorted(names)
        }
