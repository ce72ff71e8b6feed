"""The event bus on the real broker: trace context across a hop, dead letters."""

from __future__ import annotations

import asyncio

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from libs.bus import EventConsumer, EventPublisher, Record, RetryPolicy
from libs.events import REGISTRY, Envelope
from libs.events.schemas import DeadLetter, ServiceHeartbeat
from tests.helpers import consume
from tests.integration.conftest import KafkaBus


def _message(n: int) -> Envelope:
    beat = ServiceHeartbeat(service="test", instance_id=f"i{n}", started_at="2026-01-01T00:00:00Z")
    return Envelope.wrap(beat, aggregate_id=f"agg-{n}")


async def _run_until(loop: EventConsumer, count: int, timeout_s: float = 30) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        for _ in range(int(timeout_s * 20)):
            if loop.handled + loop.dead_lettered >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"handled {loop.handled}, dead-lettered {loop.dead_lettered} of {count}")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_the_consumer_span_is_a_child_of_the_producer_span(
    kafka_bus: KafkaBus, spans: InMemorySpanExporter
) -> None:
    topic, dlq = await kafka_bus.new_topic(2), await kafka_bus.new_topic(1)
    producer = kafka_bus.producer()
    await producer.start()
    consumer = kafka_bus.consumer("trace", [topic])
    await consumer.start()
    handled: list[Envelope] = []

    async def handler(envelope: Envelope, record: Record) -> None:
        handled.append(envelope)

    try:
        sent = _message(1)
        await EventPublisher(producer).publish(topic, sent)
        loop = EventConsumer(
            consumer, handler, publisher=EventPublisher(producer), dead_letter_topic=dlq, service="test", group="trace"
        )
        await _run_until(loop, 1)
    finally:
        await consumer.stop()
        await producer.stop()

    assert [e.event_id for e in handled] == [sent.event_id]
    finished = spans.get_finished_spans()
    publish = next(s for s in finished if s.name == f"{topic} publish")
    process = next(s for s in finished if s.name == f"{topic} process")
    assert process.context.trace_id == publish.context.trace_id
    assert process.parent is not None
    assert process.parent.span_id == publish.context.span_id


async def test_invalid_json_is_dead_lettered_and_consumption_goes_on(kafka_bus: KafkaBus) -> None:
    topic, dlq = await kafka_bus.new_topic(1), await kafka_bus.new_topic(1)
    producer = kafka_bus.producer()
    await producer.start()
    consumer = kafka_bus.consumer("dlq", [topic])
    await consumer.start()
    handled: list[Envelope] = []

    async def handler(envelope: Envelope, record: Record) -> None:
        handled.append(envelope)

    try:
        bad = await producer.send(topic, b"this is not json", key=b"bad")
        good = _message(2)
        await EventPublisher(producer).publish(topic, good)
        loop = EventConsumer(
            consumer,
            handler,
            publisher=EventPublisher(producer),
            dead_letter_topic=dlq,
            service="test",
            group="dlq",
            retry=RetryPolicy(initial_backoff_s=0.01),
        )
        await _run_until(loop, 2)
        reader = kafka_bus.consumer("dlq-reader", [dlq])
        await reader.start()
        try:
            [record] = await consume(reader, 1)
        finally:
            await reader.stop()
    finally:
        await consumer.stop()
        await producer.stop()

    assert [e.event_id for e in handled] == [good.event_id]
    letter = REGISTRY.decode_as(Envelope.from_bytes(record.value), DeadLetter)
    assert "not valid JSON" in letter.reason
    assert (letter.topic, letter.partition, letter.offset) == (topic, bad.partition, bad.offset)
    assert letter.value == "this is not json"
