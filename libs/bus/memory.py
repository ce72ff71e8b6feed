"""The bus port in memory, for unit tests: topics, partitions, groups and offsets.

It keeps Kafka's observable behaviour that darkroom relies on: per-partition order,
keyed partitioning, committed offsets per consumer group, independent groups, and
paused partitions. It does not rebalance: all members of one group share the
partitions by index, fixed at start. Group "" is a group-less reader, as in
libs.runtime.wiring: it reads every partition from the end at its start and keeps
no offsets.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Mapping, Sequence

from libs.bus.ports import Delivered, Record, TopicPartition


class InMemoryBroker:
    """A process-local broker shared by the producers and consumers made from it."""

    def __init__(self, partitions: Mapping[str, int] | None = None, default_partitions: int = 3) -> None:
        self._logs: dict[str, list[list[Record]]] = {}
        self._committed: dict[tuple[str, TopicPartition], int] = {}
        self._members: dict[str, list[InMemoryConsumer]] = {}
        self._default_partitions = default_partitions
        self._changed = asyncio.Condition()
        for topic, count in (partitions or {}).items():
            self.create_topic(topic, count)

    def create_topic(self, topic: str, partitions: int) -> None:
        """Declare a topic with a partition count (idempotent)."""
        self._logs.setdefault(topic, [[] for _ in range(partitions)])

    def _partitions(self, topic: str) -> list[list[Record]]:
        if topic not in self._logs:
            self.create_topic(topic, self._default_partitions)
        return self._logs[topic]

    def records(self, topic: str) -> list[Record]:
        """Every record of a topic, partition by partition (for assertions)."""
        return [r for part in self._partitions(topic) for r in part]

    async def append(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        partition: int | None,
    ) -> Delivered:
        parts = self._partitions(topic)
        if partition is None:
            partition = (zlib.crc32(key) if key is not None else len(self.records(topic))) % len(parts)
        if not 0 <= partition < len(parts):
            raise ValueError(f"{topic} has no partition {partition}")
        offset = len(parts[partition])
        parts[partition].append(Record(topic, partition, offset, key, value, tuple(headers), int(time.time() * 1000)))
        async with self._changed:
            self._changed.notify_all()
        return Delivered(topic, partition, offset)

    def producer(self) -> InMemoryProducer:
        """A producer writing to this broker."""
        return InMemoryProducer(self)

    def consumer(self, group: str, topics: Sequence[str]) -> InMemoryConsumer:
        """A consumer-group member reading from this broker."""
        return InMemoryConsumer(self, group, topics)

    def committed(self, group: str, tp: TopicPartition) -> int:
        """The committed offset of a group on a partition (0 when none)."""
        return self._committed.get((group, tp), 0)


class InMemoryProducer:
    """Producer adapter over an InMemoryBroker."""

    def __init__(self, broker: InMemoryBroker) -> None:
        self._broker = broker

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> Delivered:
        return await self._broker.append(topic, value, key, headers, partition)

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(len(self._broker._partitions(topic))))


class InMemoryConsumer:
    """Consumer adapter over an InMemoryBroker with manual commits."""

    def __init__(self, broker: InMemoryBroker, group: str, topics: Sequence[str]) -> None:
        self._broker = broker
        self._group = group
        self._topics = list(topics)
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._running = False

    async def start(self) -> None:
        self._running = True
        if not self._group:
            for topic in self._topics:
                for partition, log in enumerate(self._broker._partitions(topic)):
                    self._positions[TopicPartition(topic, partition)] = len(log)
            return
        members = self._broker._members.setdefault(self._group, [])
        members.append(self)

    async def stop(self) -> None:
        self._running = False
        members = self._broker._members.get(self._group, [])
        if self in members:
            members.remove(self)

    def assignment(self) -> set[TopicPartition]:
        if not self._group:
            return {
                TopicPartition(topic, partition)
                for topic in self._topics
                for partition in range(len(self._broker._partitions(topic)))
            }
        members = self._broker._members.get(self._group, [self])
        index = members.index(self) if self in members else 0
        assigned: set[TopicPartition] = set()
        for topic in self._topics:
            for partition in range(len(self._broker._partitions(topic))):
                if partition % max(len(members), 1) == index:
                    assigned.add(TopicPartition(topic, partition))
        return assigned

    def _position(self, tp: TopicPartition) -> int:
        if tp not in self._positions:
            self._positions[tp] = self._broker.committed(self._group, tp)
        return self._positions[tp]

    def _available(self, max_records: int | None) -> list[Record]:
        records: list[Record] = []
        for tp in sorted(self.assignment() - self._paused, key=lambda t: (t.topic, t.partition)):
            log = self._broker._partitions(tp.topic)[tp.partition]
            position = self._position(tp)
            for record in log[position:]:
                if max_records is not None and len(records) >= max_records:
                    return records
                records.append(record)
                self._positions[tp] = record.offset + 1
        return records

    async def getmany(self, timeout_ms: int, max_records: int | None = None) -> list[Record]:
        records = self._available(max_records)
        if records or timeout_ms <= 0:
            return records
        try:
            async with self._broker._changed:
                await asyncio.wait_for(self._broker._changed.wait(), timeout_ms / 1000)
        except TimeoutError:
            return []
        return self._available(max_records)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not self._group:
            return
        for tp, offset in offsets.items():
            self._broker._committed[(self._group, tp)] = offset

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        self._paused.update(partitions)

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        self._paused.difference_update(partitions)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    async def waiting(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        assigned = self.assignment()
        return {
            tp: len(self._broker._partitions(tp.topic)[tp.partition]) - self._position(tp)
            for tp in partitions
            if tp in assigned
        }
