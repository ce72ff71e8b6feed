"""Interceptors: the chain, tracing and tier routing, each on the in-memory bus."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

from libs import topics
from libs.bus import EventPublisher, Record, RejectedMessage
from libs.bus.interceptors import DeadLettered, Handle, Handled, Interceptor, Member, Outgoing, Send
from libs.bus.memory import InMemoryBroker
from libs.bus.ports import Delivered
from libs.bus.routing import SERVICE_INTERCEPTORS, TierRouting, member_groups
from libs.bus.tracing import Tracing, records_spans
from libs.events import Envelope
from libs.events.schemas import CancelJob, ServiceHeartbeat
from tests.unit.bus.test_consumer_loop import TOPIC, Harness


def _beat(n: int = 1) -> Envelope:
    beat = ServiceHeartbeat(service="s", instance_id=f"i{n}", started_at=datetime(2026, 1, 1, tzinfo=UTC))
    return Envelope.wrap(beat, aggregate_id=f"agg-{n}")


def _cancel(tier: str) -> Envelope:
    cancel = CancelJob(job_id="job_1", account_id="acct_1")
    return Envelope.wrap(cancel, aggregate_id="job_1", tier=tier)


class Recording(Interceptor):
    """Notes when it is entered and left, rewrites nothing unless told to."""

    def __init__(self, name: str, log: list[str], *, topic: str | None = None) -> None:
        self.name, self.log, self.topic = name, log, topic

    def outbound(self, send: Send) -> Send:
        async def recorded(message: Outgoing) -> Delivered:
            self.log.append(f"{self.name} sends {message.topic}")
            if self.topic is not None:
                message.topic = self.topic
            message.headers.append((self.name, b"1"))
            delivered = await send(message)
            self.log.append(f"{self.name} sent")
            return delivered

        return recorded

    def inbound(self, handle: Handle, member: Member) -> Handle:
        async def recorded(record: Record) -> Handled:
            self.log.append(f"{self.name} handles for {member.group}")
            handled = await handle(record)
            self.log.append(f"{self.name} got {'a dead letter' if isinstance(handled, DeadLettered) else handled.type}")
            return handled

        return recorded


async def test_the_first_interceptor_is_the_outermost_and_may_rewrite_topic_and_headers() -> None:
    broker = InMemoryBroker()
    log: list[str] = []
    publisher = EventPublisher(broker.producer(), (Recording("outer", log, topic="elsewhere"), Recording("inner", log)))
    delivered = await publisher.publish(TOPIC, _beat())
    assert log == [f"outer sends {TOPIC}", "inner sends elsewhere", "inner sent", "outer sent"]
    assert delivered.topic == "elsewhere" and broker.records(TOPIC) == []
    [record] = broker.records("elsewhere")
    assert record.headers == (("outer", b"1"), ("inner", b"1"))


async def test_without_interceptors_a_message_goes_as_asked_without_headers(spans: InMemorySpanExporter) -> None:
    broker = InMemoryBroker()
    await EventPublisher(broker.producer(), ()).publish(topics.IMAGE_COMMANDS, _cancel("api"))
    [record] = broker.records(topics.IMAGE_COMMANDS)
    assert record.headers == ()
    assert spans.get_finished_spans() == ()


async def test_inbound_interceptors_wrap_the_handling_and_see_what_it_came_to() -> None:
    harness = Harness()
    await harness.broker.producer().send(TOPIC, b"not an envelope")
    await harness.publisher.publish(TOPIC, _beat())
    log: list[str] = []

    async def handler(envelope: Envelope, record: Record) -> None:
        log.append("handler")

    await harness.run(handler, until=2, interceptors=(Recording("outer", log), Recording("inner", log)))
    assert log == [
        *("outer handles for g", "inner handles for g", "inner got a dead letter", "outer got a dead letter"),
        *("outer handles for g", "inner handles for g", "handler"),
        *("inner got system.service_heartbeat", "outer got system.service_heartbeat"),
    ]


async def test_tracing_opens_a_producer_span_whose_context_travels_in_the_headers(
    spans: InMemorySpanExporter,
) -> None:
    broker = InMemoryBroker()
    envelope = _beat()
    delivered = await EventPublisher(broker.producer(), (Tracing(),)).publish(TOPIC, envelope, key="k")
    [span] = spans.get_finished_spans()
    assert (span.name, span.kind) == (f"{TOPIC} publish", SpanKind.PRODUCER)
    assert span.attributes is not None
    assert span.attributes["messaging.destination.name"] == TOPIC
    assert span.attributes["messaging.message.id"] == envelope.event_id
    assert span.attributes["darkroom.event.type"] == envelope.type
    assert span.attributes["darkroom.aggregate.id"] == "agg-1"
    assert span.attributes["messaging.kafka.destination.partition"] == delivered.partition
    assert span.attributes["messaging.kafka.message.offset"] == delivered.offset
    [record] = broker.records(TOPIC)
    headers = dict(record.headers)
    assert f"{span.context.trace_id:032x}-{span.context.span_id:016x}" in headers["traceparent"].decode()


async def test_tracing_opens_a_consumer_span_per_record_and_marks_dead_letters(spans: InMemorySpanExporter) -> None:
    harness = Harness()
    await harness.broker.producer().send(TOPIC, b"not an envelope")
    for n in range(3):
        await harness.publisher.publish(TOPIC, _beat(n))

    async def handler(envelope: Envelope, record: Record) -> None:
        if envelope.aggregate_id == "agg-1":
            raise RejectedMessage("not this one")
        if envelope.aggregate_id == "agg-2":
            raise ZeroDivisionError("bug")

    await harness.run(handler, until=4, interceptors=(Tracing(),))
    finished = spans.get_finished_spans()
    producers = {s.context.span_id: s for s in finished if s.name == f"{TOPIC} publish"}
    processed = sorted(
        (s for s in finished if s.name == f"{TOPIC} process"),
        key=lambda s: int(str((s.attributes or {}).get("messaging.kafka.message.offset", -1))),
    )
    assert len(processed) == 4 and all(s.kind == SpanKind.CONSUMER for s in processed)
    garbage, fine, rejected, broken = processed
    for span in processed:
        assert span.attributes is not None
        assert span.attributes["messaging.consumer.group.name"] == "g"
        assert span.attributes["darkroom.service"] == "test"
    # Undecodable: no envelope to describe, no parent to continue.
    assert garbage.parent is None and garbage.status.status_code == StatusCode.ERROR
    assert garbage.attributes is not None and "darkroom.event.type" not in garbage.attributes
    # Decoded: a child of its producer's span, described by its envelope.
    for span, n in ((fine, 0), (rejected, 1), (broken, 2)):
        assert span.parent is not None and span.parent.span_id in producers
        assert span.attributes is not None and span.attributes["darkroom.aggregate.id"] == f"agg-{n}"
    assert fine.status.status_code == StatusCode.UNSET
    assert (rejected.status.status_code, rejected.status.description) == (StatusCode.ERROR, "not this one")
    assert rejected.events == ()
    assert broken.status.status_code == StatusCode.ERROR
    assert [event.name for event in broken.events] == ["exception"]
    # The dead letters' producer spans are children of the spans of the records they carry.
    letters = [s for s in finished if s.name == f"{topics.DEAD_LETTERS} publish"]
    assert {s.parent.span_id for s in letters if s.parent} == {garbage.context.span_id, rejected.context.span_id} | {
        broken.context.span_id
    }


async def test_tier_routing_sends_api_jobs_to_the_api_copy_of_their_topic() -> None:
    broker = InMemoryBroker()
    publisher = EventPublisher(broker.producer(), (TierRouting(),))
    await publisher.publish(topics.IMAGE_COMMANDS, _cancel("api"))
    await publisher.publish(topics.IMAGE_COMMANDS, _cancel("free"))
    # A name read back as a plain string (a saved outbox) is routed alike.
    await publisher.publish(str(topics.IMAGE_COMMANDS), _cancel("api"))
    # A topic without an api copy keeps api-tier messages.
    beat = Envelope.wrap(
        ServiceHeartbeat(service="s", instance_id="i", started_at=datetime(2026, 1, 1, tzinfo=UTC)),
        aggregate_id="i",
        tier="api",
    )
    await publisher.publish(topics.HEARTBEATS, beat)
    assert [Envelope.from_bytes(r.value).tier for r in broker.records(topics.IMAGE_COMMANDS_API)] == ["api", "api"]
    assert [Envelope.from_bytes(r.value).tier for r in broker.records(topics.IMAGE_COMMANDS)] == ["free"]
    assert len(broker.records(topics.HEARTBEATS)) == 1


async def test_a_service_routes_before_it_traces_so_the_span_names_where_the_message_went(
    spans: InMemorySpanExporter,
) -> None:
    broker = InMemoryBroker()
    await EventPublisher(broker.producer(), SERVICE_INTERCEPTORS).publish(topics.IMAGE_COMMANDS, _cancel("api"))
    [span] = spans.get_finished_spans()
    assert span.name == f"{topics.IMAGE_COMMANDS_API} publish"
    [record] = broker.records(topics.IMAGE_COMMANDS_API)
    assert "traceparent" in dict(record.headers)


def test_routing_leaves_the_handling_of_records_as_it_is() -> None:
    async def handle(record: Record) -> Handled:
        raise AssertionError("not called")

    assert TierRouting().inbound(handle, Member("s", "g")) is handle


def test_a_send_that_only_rewrites_adds_no_coroutine() -> None:
    sent: list[str] = []

    def send(message: Outgoing) -> Awaitable[Delivered]:
        sent.append(message.topic)
        return asyncio.sleep(0, Delivered(message.topic, 0, 0))

    routed = TierRouting().outbound(send)
    message = Outgoing(topics.STORAGE_EVENTS, _cancel("api"), b"k", None, [])
    awaitable = routed(message)
    assert sent == [topics.STORAGE_EVENTS_API], "routed and passed on before anything is awaited"
    asyncio.run(awaitable)  # type: ignore[arg-type]


def test_job_path_groups_get_a_member_for_api_traffic() -> None:
    assert member_groups("requests", [topics.IMAGE_COMMANDS, topics.SAFETY_VERDICTS]) == [
        ("requests", [topics.IMAGE_COMMANDS, topics.SAFETY_VERDICTS]),
        ("requests-api", [topics.IMAGE_COMMANDS_API, topics.SAFETY_VERDICTS_API]),
    ]
    # A live reader without a group reads both traffics; other topics are left alone.
    assert member_groups("", [topics.REQUEST_EVENTS]) == [("", [topics.REQUEST_EVENTS, topics.REQUEST_EVENTS_API])]
    assert member_groups("decoder-api", [topics.RENDER_API]) == [("decoder-api", [topics.RENDER_API])]
    # A process of one traffic runs that traffic's member only; a reader without a group
    # reads its traffic's copies and every topic that has none.
    names = [topics.IMAGE_COMMANDS]
    assert member_groups("requests", names, "consumer") == [("requests", [topics.IMAGE_COMMANDS])]
    assert member_groups("requests", names, "api") == [("requests-api", [topics.IMAGE_COMMANDS_API])]
    live = [topics.REQUEST_EVENTS, topics.RENDER_PROGRESS, topics.ACCOUNT_EVENTS]
    assert member_groups("", live, "api") == [
        ("", [topics.ACCOUNT_EVENTS, topics.REQUEST_EVENTS_API, topics.RENDER_PROGRESS_API])
    ]
    assert member_groups("", live, "consumer") == [("", live)]
    assert member_groups("", live) == [("", [*live, topics.REQUEST_EVENTS_API, topics.RENDER_PROGRESS_API])]


async def test_a_process_that_records_no_spans_opens_none_and_carries_the_trace_on(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a service without an exporter is configured (libs.telemetry.span_sampler).
    monkeypatch.setattr(trace.get_tracer_provider(), "sampler", ALWAYS_OFF)
    assert not records_spans()
    harness = Harness()
    traced = EventPublisher(harness.broker.producer(), (Tracing(),))
    upstream = SpanContext(trace_id=0xABC, span_id=0x42, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    with trace.use_span(NonRecordingSpan(upstream)):
        await traced.publish(TOPIC, _beat(0))
    onward: list[str] = []

    async def handler(envelope: Envelope, record: Record) -> None:
        if envelope.aggregate_id == "agg-0":
            await traced.publish(TOPIC, _beat(1))
        onward.append(format(trace.get_current_span().get_span_context().trace_id, "032x"))

    await harness.run(handler, until=2, interceptors=(Tracing(),))
    assert spans.get_finished_spans() == ()
    # The handler ran in the upstream's context, and what it published carries it on unchanged.
    assert onward == [format(0xABC, "032x")] * 2
    for record in harness.broker.records(TOPIC):
        assert dict(record.headers)["traceparent"] == f"00-{0xABC:032x}-{0x42:016x}-01".encode()


def test_a_process_records_spans_unless_its_sampler_is_always_off(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = trace.get_tracer_provider()
    assert records_spans()
    monkeypatch.setattr(provider, "sampler", ParentBased(TraceIdRatioBased(0.0)))
    assert records_spans(), "a share of traces, or a parent's decision, may still record"
    monkeypatch.setattr(provider, "sampler", ALWAYS_OFF)
    assert not records_spans()
