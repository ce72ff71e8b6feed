"""The bus port on aiokafka, for real Kafka brokers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError, RecordTooLargeError
from aiokafka.structs import OffsetAndMetadata

from libs.bus.assignment import PlannedAssignor
from libs.bus.errors import RejectedMessage, TransientError
from libs.bus.ports import Delivered, Record, TopicPartition

MAX_REQUEST_BYTES = 10 * 1024 * 1024
FETCH_MAX_WAIT_MS = 500
"""How long the broker holds a fetch while nothing new comes, unless a service's settings say
otherwise (`kafka_fetch_max_wait_ms`); see KafkaConsumer."""
QUIET_FETCH_MAX_WAIT_MS = 5000
"""The same for a log reader of quiet topics alone (`libs.topics.QUIET`: tier policies,
revocations, account tiers, releases, the safety policy, metered usage), which is idle nearly
always: a record that comes ends the fetch in flight at once, so the wait adds no latency to
it, and such a reader costs the broker one fetch per 5 s instead of two per second. Not for a
reader that can fall behind (one whose partitions a fetch leaves out while their records
wait unread) or pauses partitions: a partition left out of the fetch in flight waits for it
to end."""


class KafkaProducer:
    """An idempotent producer: acks from all in-sync replicas, no duplicates on retry."""

    def __init__(self, bootstrap: str, *, client_id: str = "darkroom", linger_ms: int = 0) -> None:
        self._options = {
            "bootstrap_servers": bootstrap,
            "client_id": client_id,
            "enable_idempotence": True,
            "acks": "all",
            "linger_ms": linger_ms,
            "max_request_size": MAX_REQUEST_BYTES,
            "request_timeout_ms": 30000,
        }
        self._client: AIOKafkaProducer | None = None

    @property
    def _producer(self) -> AIOKafkaProducer:
        if self._client is None:
            raise RuntimeError("producer not started")
        return self._client

    async def start(self) -> None:
        # aiokafka binds its clients to the running loop, so they are made here.
        self._client = AIOKafkaProducer(**self._options)
        await self._client.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> Delivered:
        try:
            meta = await self._producer.send_and_wait(
                topic, value=value, key=key, headers=list(headers), partition=partition
            )
        except RecordTooLargeError as exc:
            raise RejectedMessage(f"message of {len(value)} bytes is too large for {topic}") from exc
        except (KafkaConnectionError, KafkaTimeoutError) as exc:
            # The broker is away: the handler is retried until it is back, never dead-lettered.
            raise TransientError(f"Kafka unavailable: {exc!r}") from exc
        except KafkaError as exc:
            if getattr(exc, "retriable", False):
                raise TransientError(f"Kafka error: {exc!r}") from exc
            raise
        return Delivered(meta.topic, meta.partition, meta.offset)

    async def partitions_for(self, topic: str) -> set[int]:
        return set(await self._producer.partitions_for(topic))


class KafkaConsumer:
    """A consumer-group member with manual commits, subscribed to topics.

    With `group=None` it reads every partition without a group and commits nothing.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        group: str | None,
        topics: Sequence[str],
        client_id: str = "darkroom",
        auto_offset_reset: str = "earliest",
        max_poll_interval_ms: int = 300000,
        fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS,
        assignor: type[PlannedAssignor] | None = None,
    ) -> None:
        """Args (beyond aiokafka's): `assignor` places the group's partitions (e.g. every
        input of one job on one member, libs/bus/affinity.py), Kafka's round robin when None.

        A member offers its assignor alone, without round robin as a fallback: with two
        protocols offered, eight decoders on Kafka 4 fell into rebalance storms in 6 of 15
        starts (99 to 1,000 rebalances, the group never stable), with one they settled
        after 5 in every start. So a group changes assignor all at once: stop the old
        members first."""
        self._topics = list(topics)
        self._group = group
        self._options: dict[str, object] = {
            "bootstrap_servers": bootstrap,
            "group_id": group,
            "client_id": client_id,
            "enable_auto_commit": False,
            "auto_offset_reset": auto_offset_reset,
            "max_poll_interval_ms": max_poll_interval_ms,
            # How long the broker holds a fetch while nothing new comes. A record that lands on
            # a partition the fetch in flight leaves out (aiokafka leaves out those whose fetched
            # records wait unread for over 100 ms) waits until that fetch returns; every idle
            # member sends one fetch per wait. 500 ms (FETCH_MAX_WAIT_MS) halved the idle
            # stack's CPU against 100 ms with no measurable change in a job's latency
            # (docs/operations.md, the lean job path).
            "fetch_max_wait_ms": fetch_max_wait_ms,
            "fetch_max_bytes": MAX_REQUEST_BYTES * 2,
            "max_partition_fetch_bytes": MAX_REQUEST_BYTES,
        }
        if assignor is not None:
            self._options["partition_assignment_strategy"] = (assignor,)
        self._client: AIOKafkaConsumer | None = None

    @property
    def _consumer(self) -> AIOKafkaConsumer:
        if self._client is None:
            raise RuntimeError("consumer not started")
        return self._client

    async def start(self) -> None:
        # aiokafka binds its clients to the running loop, so they are made here.
        self._client = AIOKafkaConsumer(**self._options)
        await self._client.start()
        self._client.subscribe(self._topics)

    async def stop(self) -> None:
        await self._consumer.stop()

    async def getmany(self, timeout_ms: int, max_records: int | None = None) -> list[Record]:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        records: list[Record] = []
        for batch in batches.values():
            for msg in batch:
                records.append(
                    Record(
                        topic=msg.topic,
                        partition=msg.partition,
                        offset=msg.offset,
                        key=msg.key,
                        value=msg.value if msg.value is not None else b"",
                        headers=tuple((k, v) for k, v in msg.headers),
                        timestamp_ms=msg.timestamp,
                    )
                )
        return records

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if self._group is None:
            return  # a group-less reader (e.g. heartbeats from "now") keeps no offsets
        await self._consumer.commit(
            {
                KafkaTopicPartition(tp.topic, tp.partition): OffsetAndMetadata(offset, "")
                for tp, offset in offsets.items()
            }
        )

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        self._consumer.pause(*[KafkaTopicPartition(tp.topic, tp.partition) for tp in partitions])

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        self._consumer.resume(*[KafkaTopicPartition(tp.topic, tp.partition) for tp in partitions])

    def paused(self) -> set[TopicPartition]:
        return {TopicPartition(tp.topic, tp.partition) for tp in self._consumer.paused()}

    async def waiting(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        counts: dict[TopicPartition, int] = {}
        assigned = self._consumer.assignment()
        for tp in partitions:
            ktp = KafkaTopicPartition(tp.topic, tp.partition)
            if ktp not in assigned:
                continue
            # The highwater comes with every fetch response, so this costs no request.
            end = self._consumer.highwater(ktp)
            counts[tp] = 0 if end is None else max(0, end - await self._consumer.position(ktp))
        return counts
