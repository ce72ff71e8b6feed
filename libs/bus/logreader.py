"""Readers that know when they have read a topic to its end.

Why not a plain subscription: a consumer-group member resumes at its committed offset
and a group-less one starts at the end, but a service that folds a compacted topic
(the safety policy, the gateway's policies and revocations) must read the whole topic
before it serves, and must know when it has. So one group-less reader starts at the
beginning (or at a time), reads until its position reaches the end offsets, and the
same reader then keeps following the topic, so no record falls between "loaded" and
"live".

The bus port has no way to ask for end offsets yet, hence `LogReader` with two
adapters: `KafkaLogReader` (exact, on aiokafka's end offsets) and `PortLogReader`
(over any bus Consumer: caught up after an empty fetch, which is exact for the
in-memory broker that unit tests use and only a heuristic on Kafka).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as KafkaTopicPartition

from libs.bus.kafka import FETCH_MAX_WAIT_MS, QUIET_FETCH_MAX_WAIT_MS, KafkaConsumer
from libs.bus.ports import Consumer, Record, TopicPartition
from libs.events import REGISTRY, DecodeError, Envelope, Event
from libs.topics import QUIET


class LogReader(Consumer, Protocol):
    """A consumer that reads a topic from its beginning and can tell when it is caught up."""

    async def caught_up(self) -> bool:
        """Whether every assigned partition has been read to its current end."""
        ...


class KafkaLogReader(KafkaConsumer):
    """Reads every partition of the topics from the beginning, with no group and no commits."""

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        *,
        client_id: str,
        since_ms: Mapping[str, int] | None = None,
        fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS,
    ) -> None:
        """Creates the reader (connects on start).

        Args:
            bootstrap: Kafka bootstrap servers.
            topics: Topics to read.
            client_id: Client id shown in broker logs.
            since_ms: Per topic, a time (Unix ms) to start reading from instead of the
                beginning: the first record at or after it (the end when there is none).
            fetch_max_wait_ms: How long the broker holds a fetch when nothing is new; a
                reader of quiet topics alone (libs.topics.QUIET) waits
                QUIET_FETCH_MAX_WAIT_MS instead.
        """
        super().__init__(
            bootstrap,
            group=None,
            topics=topics,
            client_id=client_id,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=QUIET_FETCH_MAX_WAIT_MS if set(topics) <= QUIET else fetch_max_wait_ms,
        )
        self._since_ms = dict(since_ms or {})
        self._ends: dict[KafkaTopicPartition, int] | None = None

    async def start(self) -> None:
        """Connect; with start times, assign every partition and seek to its time."""
        if not self._since_ms:
            await super().start()
            return
        self._client = AIOKafkaConsumer(**self._options)
        await self._client.start()
        # The consumer tracks metadata only for subscribed topics; ask for these (aiokafka's
        # client has no public call for that on a consumer that assigns by hand).
        await self._client._client.set_topics(self._topics)
        assigned = [
            KafkaTopicPartition(topic, partition)
            for topic in self._topics
            for partition in sorted(self._client.partitions_for_topic(topic) or ())
        ]
        self._client.assign(assigned)
        timed = [tp for tp in assigned if tp.topic in self._since_ms]
        found = await self._client.offsets_for_times({tp: self._since_ms[tp.topic] for tp in timed})
        ends = await self._client.end_offsets(timed) if timed else {}
        for tp in assigned:
            if tp in found:
                hit = found[tp]
                self._client.seek(tp, hit.offset if hit is not None else ends[tp])
            else:
                await self._client.seek_to_beginning(tp)

    async def caught_up(self) -> bool:
        """See LogReader.caught_up (position against aiokafka's end offsets).

        Asking the broker for end offsets is a round trip, and a reader loading a long topic
        asks after every fetch; so the ends are asked for again only once the reader has
        reached the ones it last saw. The answer is the same: caught up means the position
        has reached ends fetched just now.
        """
        # The port has no end offsets (see the report on libs/bus); the adapter's client does.
        client = self._consumer
        assigned = list(client.assignment())
        if not assigned:
            return False  # metadata not in yet: nothing assigned, nothing read
        known = self._ends
        if known is not None and set(known) == set(assigned) and not await self._reached(known):
            return False
        self._ends = await client.end_offsets(assigned)
        return await self._reached(self._ends)

    async def _reached(self, ends: Mapping[KafkaTopicPartition, int]) -> bool:
        client = self._consumer
        for tp, end in ends.items():
            if await client.position(tp) < end:
                return False
        return True


class PortLogReader:
    """A LogReader over any bus Consumer: caught up once a fetch came back empty.

    Its commits do nothing: a reader keeps no offsets, it starts from the beginning
    every time (give it a group that has none, e.g. a fresh name).
    """

    def __init__(self, consumer: Consumer) -> None:
        """Wraps a consumer that starts at the beginning of its topics."""
        self._consumer = consumer
        self._drained = False

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def getmany(self, timeout_ms: int, max_records: int | None = None) -> list[Record]:
        records = await self._consumer.getmany(timeout_ms, max_records)
        self._drained = not records and bool(self._consumer.assignment())
        return records

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        return None

    def assignment(self) -> set[TopicPartition]:
        return self._consumer.assignment()

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        self._consumer.pause(partitions)

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        self._consumer.resume(partitions)

    def paused(self) -> set[TopicPartition]:
        return self._consumer.paused()

    async def waiting(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return await self._consumer.waiting(partitions)

    async def caught_up(self) -> bool:
        """See LogReader.caught_up."""
        return self._drained


async def read_to_end(
    reader: LogReader,
    handle: Callable[[Record], Awaitable[None]],
    *,
    timeout_s: float = 60.0,
    poll_ms: int = 200,
) -> None:
    """Feed every record of the reader's topics to `handle` until the reader is caught up.

    Args:
        reader: A started reader.
        handle: Called with each record, in order.
        timeout_s: How long to try before giving up.
        poll_ms: Fetch timeout per poll.

    Raises:
        TimeoutError: The end was not reached in time (e.g. the broker is unreachable).
    """
    deadline = time.monotonic() + timeout_s
    while not await reader.caught_up():
        if time.monotonic() > deadline:
            raise TimeoutError(f"did not reach the end of the topics within {timeout_s}s")
        for record in await reader.getmany(poll_ms, 100):
            await handle(record)


async def fold_topics(
    bootstrap: str,
    topic_names: Sequence[str],
    apply: Callable[[Event], object],
    *,
    client_id: str,
    timeout_s: float = 60.0,
) -> None:
    """Reads `topic_names` from their beginning to their end and passes every event to `apply`,
    in order (what an operator's command does to learn what is in force). A record that does
    not decode is skipped: the services that consume the topic dead-letter it.

    Raises:
        TimeoutError: The end was not reached within `timeout_s`.
    """
    reader = KafkaLogReader(bootstrap, topic_names, client_id=client_id)

    async def handle(record: Record) -> None:
        try:
            event = REGISTRY.decode(Envelope.from_bytes(record.value))
        except DecodeError:
            return
        apply(event)

    await reader.start()
    try:
        await read_to_end(reader, handle, timeout_s=timeout_s)
    finally:
        await reader.stop()
