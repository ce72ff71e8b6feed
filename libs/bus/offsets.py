"""How many render jobs wait in each lane, read from Kafka's own offsets.

A decoder commits a render job's offset when it takes the job (the render then runs
under a lease), so the jobs of a lane still waiting for a decoder are its partitions'
end offsets minus the pool group's committed offsets, and the jobs taken are the
committed offsets minus the log's beginning. The gateway reads these every second to
bound each lane's backlog; `darkroom lanes` reads them once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError, KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from libs.lanes import lanes, pool_group

COORDINATOR_ATTEMPTS = 20


@dataclass(frozen=True)
class LaneCounts:
    """A lane's jobs as Kafka counts them now."""

    waiting: int
    """Render jobs on the lane that no decoder has taken yet (the pool group's lag)."""
    taken: int
    """Render jobs the pool has taken from the lane over the retained log."""


class LaneOffsets(Protocol):
    """Reads every lane's counts."""

    async def read(self) -> dict[str, LaneCounts]:
        """Counts per lane name."""
        ...


class KafkaLaneOffsets:
    """Reads lane counts from a broker through one long-lived consumer and admin client.

    Args:
        bootstrap: The Kafka bootstrap servers.
        client_id: How the broker names this reader.
    """

    def __init__(self, bootstrap: str, client_id: str = "darkroom-lanes") -> None:
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        # Each pool group's coordinator, found once: a lookup per group per read was as many
        # requests as the reads themselves (the gateway reads every second).
        self._coordinators: dict[str, int] = {}

    async def start(self) -> None:
        """Connects (aiokafka binds its clients to the running loop, so they are made here)."""
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, client_id=self._client_id, enable_auto_commit=False
        )
        self._admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap, client_id=self._client_id)
        await self._consumer.start()
        await self._admin.start()

    async def stop(self) -> None:
        """Disconnects."""
        if self._consumer is not None:
            await self._consumer.stop()
        if self._admin is not None:
            await self._admin.close()

    async def read(self) -> dict[str, LaneCounts]:
        """Every lane's waiting and taken jobs, from end, beginning and committed offsets."""
        if self._consumer is None or self._admin is None:
            raise RuntimeError("the lane reader is not started")
        by_lane = {name: [TopicPartition(lane.topic, p) for p in lane.partitions] for name, lane in lanes().items()}
        every = [tp for tps in by_lane.values() for tp in tps]
        ends = await self._consumer.end_offsets(every)
        begins = await self._consumer.beginning_offsets(every)
        committed: dict[TopicPartition, OffsetAndMetadata] = {}
        for topic in sorted({tp.topic for tp in every}):
            committed |= await self._committed(pool_group(topic), [tp for tp in every if tp.topic == topic])
        counts: dict[str, LaneCounts] = {}
        for name, tps in by_lane.items():
            waiting = taken = 0
            for tp in tps:
                meta = committed.get(tp)
                position = meta.offset if meta is not None and meta.offset >= 0 else begins[tp]
                waiting += max(0, ends[tp] - position)
                taken += max(0, position - begins[tp])
            counts[name] = LaneCounts(waiting=waiting, taken=taken)
        return counts

    async def _committed(self, group: str, tps: list[TopicPartition]) -> dict[TopicPartition, OffsetAndMetadata]:
        coordinator = self._coordinators.get(group)
        if coordinator is not None:
            try:
                return await self._offsets(group, coordinator, tps)
            except KafkaError:
                # The coordinator moved (its broker failed over) or is unreachable: find it again.
                del self._coordinators[group]
        coordinator = await self._find_coordinator(group)
        offsets = await self._offsets(group, coordinator, tps)
        self._coordinators[group] = coordinator
        return offsets

    async def _offsets(
        self, group: str, coordinator: int, tps: list[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        assert self._admin is not None
        offsets: dict[TopicPartition, OffsetAndMetadata] = await self._admin.list_consumer_group_offsets(
            group, group_coordinator_id=coordinator, partitions=tps
        )
        return offsets

    async def _find_coordinator(self, group: str) -> int:
        assert self._admin is not None
        # A broker that never had a consumer group creates its offsets topic on the first
        # coordinator lookup, and answers "not available" until it has.
        for _ in range(COORDINATOR_ATTEMPTS - 1):
            try:
                coordinator: int = await self._admin.find_coordinator(group)
                return coordinator
            except GroupCoordinatorNotAvailableError:
                await asyncio.sleep(0.5)
        last: int = await self._admin.find_coordinator(group)
        return last
