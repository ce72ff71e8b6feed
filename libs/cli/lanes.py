"""`darkroom lanes`: what waits in each tier's lane, read from Kafka's own offsets.

A decoder commits a render job's offset when it takes the job (the render then runs
under a lease), so the jobs of a lane still waiting for a decoder are its partitions'
end offsets minus the pool group's committed offsets; `taken` counts the jobs the
pool has taken since the topic began.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from libs.lanes import lanes, pool_group

CLIENT_ID = "darkroom-lanes"
COORDINATOR_ATTEMPTS = 20


@dataclass(frozen=True)
class LaneReport:
    """One tier's lane as Kafka sees it now."""

    tier: str
    topic: str
    group: str
    partitions: tuple[int, ...]
    waiting: int
    """Render jobs on the lane that no decoder has taken yet."""
    taken: int
    """Render jobs the pool has taken from the lane (committed offsets over the retained log)."""


async def lane_reports(bootstrap: str) -> list[LaneReport]:
    """Every lane's waiting and taken jobs, from end and committed offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, client_id=CLIENT_ID, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id=CLIENT_ID)
    await consumer.start()
    try:
        await admin.start()
        reports = []
        for lane in lanes().values():
            tps = [TopicPartition(lane.topic, p) for p in lane.partitions]
            ends = await consumer.end_offsets(tps)
            begins = await consumer.beginning_offsets(tps)
            group = pool_group(lane.topic)
            committed = await _committed(admin, group, tps)
            waiting = taken = 0
            for tp in tps:
                meta = committed.get(tp)
                position = meta.offset if meta is not None and meta.offset >= 0 else begins[tp]
                waiting += max(0, ends[tp] - position)
                taken += max(0, position - begins[tp])
            reports.append(LaneReport(lane.tier, lane.topic, group, lane.partitions, waiting, taken))
        return reports
    finally:
        await consumer.stop()
        await admin.close()


async def _committed(
    admin: AIOKafkaAdminClient, group: str, tps: list[TopicPartition]
) -> dict[TopicPartition, OffsetAndMetadata]:
    # A broker that never had a consumer group creates its offsets topic on the first
    # coordinator lookup, and answers "not available" until it has.
    for _ in range(COORDINATOR_ATTEMPTS - 1):
        try:
            offsets: dict[TopicPartition, OffsetAndMetadata] = await admin.list_consumer_group_offsets(
                group, partitions=tps
            )
            return offsets
        except GroupCoordinatorNotAvailableError:
            await asyncio.sleep(0.5)
    offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
    return offsets


def format_reports(reports: list[LaneReport]) -> str:
    """A table for the terminal."""
    lines = [f"{'lane':6} {'topic':24} {'group':17} {'partitions':12} {'waiting':>8} {'taken':>8}"]
    for r in reports:
        parts = f"{r.partitions[0]}-{r.partitions[-1]}"
        lines.append(f"{r.tier:6} {r.topic:24} {r.group:17} {parts:12} {r.waiting:8d} {r.taken:8d}")
    return "\n".join(lines) + "\n"
