"""The bus port: the smallest producer/consumer surface darkroom needs from Kafka.

Two adapters implement it: `libs.bus.kafka` (aiokafka, real brokers) and
`libs.bus.memory` (in-process, for unit tests). tests/contracts/bus.py holds one
contract suite that runs against both, so the fake cannot drift from Kafka.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class TopicPartition:
    """A partition of a topic."""

    topic: str
    partition: int


@dataclass(frozen=True)
class Record:
    """One message as the broker delivered it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = field(default=())
    timestamp_ms: int = 0

    @property
    def tp(self) -> TopicPartition:
        """The record's topic-partition."""
        return TopicPartition(self.topic, self.partition)


@dataclass(frozen=True)
class Delivered:
    """Where a produced message landed."""

    topic: str
    partition: int
    offset: int


class Producer(Protocol):
    """Sends raw messages; idempotent and acknowledged by all in-sync replicas."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> Delivered:
        """Send one message and wait for the broker's acknowledgement."""
        ...

    async def partitions_for(self, topic: str) -> set[int]:
        """The partition numbers of a topic."""
        ...


class Consumer(Protocol):
    """A member of a consumer group with manual commits."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def getmany(self, timeout_ms: int, max_records: int | None = None) -> list[Record]:
        """Fetch the next records of the assigned, unpaused partitions (may be empty)."""
        ...

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit, per partition, the offset of the next record to read."""
        ...

    def assignment(self) -> set[TopicPartition]:
        """The partitions currently assigned to this member."""
        ...

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        """Stop fetching from these partitions until resumed; their records wait."""
        ...

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        """Fetch again from paused partitions."""
        ...

    def paused(self) -> set[TopicPartition]:
        """The partitions currently paused."""
        ...

    async def waiting(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Records of these assigned partitions that `getmany` has not returned yet.

        As far as this member knows: the end offset the broker last reported minus the
        position, without a request to the broker. A partition not fetched yet, or paused
        since, may show fewer than are there.
        """
        ...
