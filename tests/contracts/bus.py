"""The bus contract: what every Producer/Consumer adapter must do.

Subclasses provide the `bus` fixture (a BusUnderTest); the same tests then run
against the in-memory adapter (tests/unit) and real Kafka (tests/integration).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import pytest

from libs.bus.ports import Consumer, Producer, Record, TopicPartition
from tests.helpers import consume


class BusUnderTest(Protocol):
    """What a contract test needs from an adapter pair."""

    async def new_topic(self, partitions: int) -> str: ...

    def producer(self) -> Producer: ...

    def consumer(self, group: str, topics: list[str]) -> Consumer: ...


class BusContract:
    """Contract tests; subclasses supply the `bus` fixture."""

    @pytest.fixture
    async def producer(self, bus: BusUnderTest) -> AsyncIterator[Producer]:
        producer = bus.producer()
        await producer.start()
        yield producer
        await producer.stop()

    async def test_a_message_round_trips_with_key_and_headers(self, bus: BusUnderTest, producer: Producer) -> None:
        topic = await bus.new_topic(3)
        sent = await producer.send(topic, b'{"x": 1}', key=b"job-1", headers=[("traceparent", b"00-abc")])
        consumer = bus.consumer("g-roundtrip", [topic])
        await consumer.start()
        try:
            [record] = await consume(consumer, 1)
        finally:
            await consumer.stop()
        assert (record.topic, record.partition, record.offset) == (sent.topic, sent.partition, sent.offset)
        assert record.value == b'{"x": 1}'
        assert record.key == b"job-1"
        assert ("traceparent", b"00-abc") in record.headers

    async def test_one_key_keeps_one_partition_and_its_order(self, bus: BusUnderTest, producer: Producer) -> None:
        topic = await bus.new_topic(4)
        landed = [await producer.send(topic, str(i).encode(), key=b"same") for i in range(10)]
        assert len({d.partition for d in landed}) == 1
        consumer = bus.consumer("g-order", [topic])
        await consumer.start()
        try:
            records = await consume(consumer, 10)
        finally:
            await consumer.stop()
        assert [r.value for r in records] == [str(i).encode() for i in range(10)]

    async def test_an_explicit_partition_is_honoured(self, bus: BusUnderTest, producer: Producer) -> None:
        topic = await bus.new_topic(4)
        sent = await producer.send(topic, b"lane", key=b"k", partition=3)
        assert sent.partition == 3
        assert await producer.partitions_for(topic) == {0, 1, 2, 3}

    async def test_a_group_resumes_after_its_committed_offset(self, bus: BusUnderTest, producer: Producer) -> None:
        topic = await bus.new_topic(1)
        for i in range(4):
            await producer.send(topic, str(i).encode(), key=b"k")
        first = bus.consumer("g-resume", [topic])
        await first.start()
        try:
            records = await consume(first, 4)
            await first.commit({records[1].tp: records[1].offset + 1})
        finally:
            await first.stop()
        second = bus.consumer("g-resume", [topic])
        await second.start()
        try:
            again = await consume(second, 2)
        finally:
            await second.stop()
        assert [r.value for r in again] == [b"2", b"3"]

    async def test_each_group_reads_every_message(self, bus: BusUnderTest, producer: Producer) -> None:
        topic = await bus.new_topic(2)
        for i in range(3):
            await producer.send(topic, str(i).encode(), key=str(i).encode())
        for group in ("g-a", "g-b"):
            consumer = bus.consumer(group, [topic])
            await consumer.start()
            try:
                records = await consume(consumer, 3)
            finally:
                await consumer.stop()
            assert sorted(r.value for r in records) == [b"0", b"1", b"2"]

    async def test_waiting_counts_the_records_not_returned_yet(self, bus: BusUnderTest, producer: Producer) -> None:
        topic = await bus.new_topic(2)
        # All three are written before the consumer starts: the count comes from the highwater
        # of the last fetch, and a fetch that ran between two sends would know of one record only.
        for value in (b"a", b"b", b"c"):
            await producer.send(topic, value, partition=1)
        consumer = bus.consumer("g-waiting", [topic])
        await consumer.start()
        try:
            first: list[Record] = []
            while not first:
                first = await consumer.getmany(timeout_ms=200, max_records=1)
            busy, idle = TopicPartition(topic, 1), TopicPartition(topic, 0)
            assert await consumer.waiting([busy, idle]) == {busy: 2, idle: 0}
            await consume(consumer, 2)
            assert await consumer.waiting([busy]) == {busy: 0}
        finally:
            await consumer.stop()

    async def test_a_paused_partition_waits_until_resumed(self, bus: BusUnderTest, producer: Producer) -> None:
        topic = await bus.new_topic(2)
        consumer = bus.consumer("g-pause", [topic])
        await consumer.start()
        try:
            await producer.send(topic, b"warm-up", partition=0)
            await consume(consumer, 1)
            held = TopicPartition(topic, 1)
            consumer.pause([held])
            assert consumer.paused() == {held}
            await producer.send(topic, b"held", partition=1)
            await producer.send(topic, b"free", partition=0)
            [record] = await consume(consumer, 1)
            assert record.value == b"free"
            assert await consumer.getmany(timeout_ms=500) == []
            consumer.resume([held])
            [record] = await consume(consumer, 1)
            assert record.value == b"held"
        finally:
            await consumer.stop()
