"""`KafkaLogReader` on the real broker: read to the end, then notice what came after."""

from __future__ import annotations

from libs.bus import Record
from libs.bus.logreader import KafkaLogReader, fold_topics, read_to_end
from libs.events import Envelope, Event
from libs.events.schemas import RolloutChanged
from tests.integration.conftest import KafkaBus


async def _write(bus: KafkaBus, topic: str, first: int, count: int) -> None:
    producer = bus.producer()
    await producer.start()
    try:
        for n in range(first, first + count):
            await producer.send(topic, str(n).encode(), key=f"k{n % 7}".encode())
    finally:
        await producer.stop()


async def test_a_reader_reads_to_the_end_and_is_behind_again_after_new_records(kafka_bus: KafkaBus) -> None:
    topic = await kafka_bus.new_topic(3)
    await _write(kafka_bus, topic, 0, 450)
    reader = KafkaLogReader(kafka_bus.bootstrap, [topic], client_id="test-logreader")
    seen: list[int] = []

    async def keep(record: Record) -> None:
        seen.append(int(record.value))

    await reader.start()
    try:
        # 450 records take several fetches of at most 100: the reader must not stop at the
        # end offsets it saw first without asking again, nor stop short of them.
        await read_to_end(reader, keep, timeout_s=30)
        assert sorted(seen) == list(range(450))
        assert await reader.caught_up()

        await _write(kafka_bus, topic, 450, 5)
        assert not await reader.caught_up()
        await read_to_end(reader, keep, timeout_s=30)
        assert sorted(seen) == list(range(455))
    finally:
        await reader.stop()


async def test_folding_a_topic_decodes_its_events_in_order_and_skips_what_does_not_decode(
    kafka_bus: KafkaBus,
) -> None:
    topic = await kafka_bus.new_topic(1)
    producer = kafka_bus.producer()
    await producer.start()
    try:
        for percent in (10.0, 50.0):
            change = RolloutChanged(feature="hd", tier="free", percent=percent)
            await producer.send(topic, Envelope.wrap(change, aggregate_id="rollout").to_bytes(), key=b"rollout")
        await producer.send(topic, b"not an envelope", key=b"rollout")
        await producer.send(
            topic,
            Envelope.wrap(RolloutChanged(feature="hd", tier="pro", percent=100.0), aggregate_id="rollout").to_bytes(),
            key=b"rollout",
        )
    finally:
        await producer.stop()
    folded: list[Event] = []
    await fold_topics(kafka_bus.bootstrap, [topic], folded.append, client_id="test-fold", timeout_s=30)
    assert [(e.tier, e.percent) for e in folded if isinstance(e, RolloutChanged)] == [
        ("free", 10.0),
        ("free", 50.0),
        ("pro", 100.0),
    ]
    assert len(folded) == 3
