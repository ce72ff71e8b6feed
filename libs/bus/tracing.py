"""W3C trace context in Kafka headers: the one place it is injected and extracted.

Why here and nowhere else: every hop between services is a Kafka message, so if the
bus carries `traceparent`/`tracestate` in the headers of each message, one trace follows
a job from the HTTP request through every service without any handler knowing about
tracing. `Tracing` is the interceptor (libs.bus.interceptors) that the publisher and the
consumer loop apply: a producer span around every send, whose context goes out in the
headers, and a consumer span around the handling of every record, a child of the span
its headers name. Libraries use only the OpenTelemetry API; each service's entrypoint
configures the SDK (libs.telemetry).

A process that records no spans at all (its provider's sampler is always off: no exporter,
see libs.telemetry.span_sampler) opens none: a record is handled in the context its headers
carry, and what it publishes carries that context on, so the trace id still travels from
the HTTP request through every service at about half the cost per message (a span the SDK
is told not to record still costs ids, attributes and context switches: ~10 us each).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from libs.bus.interceptors import DeadLettered, Handle, Handled, Interceptor, Member, Outgoing, Send
from libs.bus.ports import Delivered, Record
from libs.events import Envelope

TRACE_HEADERS = ("traceparent", "tracestate", "baggage")
ALWAYS_OFF_SAMPLER = "AlwaysOffSampler"
"""How the SDK's sampler that records nothing describes itself."""

_tracer = trace.get_tracer("darkroom.bus")


def inject_headers(
    ctx: otel_context.Context | None = None, into: list[tuple[str, bytes]] | None = None
) -> list[tuple[str, bytes]]:
    """Return the trace context of `ctx` (default: current) as Kafka headers, appended to
    `into` when given (a message's headers) or in a list of their own."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    headers = [] if into is None else into
    for name, value in carrier.items():
        headers.append((name, value.encode()))
    return headers


def extract_context(headers: Iterable[tuple[str, bytes]]) -> otel_context.Context:
    """Return the trace context carried in Kafka headers (empty if none)."""
    carrier = {
        name: value.decode("utf-8", "replace") for name, value in headers if name in TRACE_HEADERS and value is not None
    }
    return propagate.extract(carrier)


def merge_headers(base: Sequence[tuple[str, bytes]], extra: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Headers of `base` with the trace headers replaced by those in `extra`."""
    names = {name for name, _ in extra}
    return [h for h in base if h[0] not in names] + list(extra)


def records_spans() -> bool:
    """Whether this process may record a span: False only when its tracer provider's sampler
    is always off (read at each call: a test may install another provider). Through the API
    alone: the SDK's provider names its sampler, whose description says what it is."""
    sampler = getattr(trace.get_tracer_provider(), "sampler", None)
    return sampler is None or sampler.get_description() != ALWAYS_OFF_SAMPLER


class Tracing(Interceptor):
    """A producer span per message sent and a consumer span per record handled (where the
    process records spans; elsewhere the context is carried on without them)."""

    def outbound(self, send: Send) -> Send:
        async def traced(message: Outgoing) -> Delivered:
            if not records_spans():
                inject_headers(into=message.headers)
                return await send(message)
            envelope = message.envelope
            with _tracer.start_as_current_span(
                f"{message.topic} publish",
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.destination.name": message.topic,
                    "messaging.message.id": envelope.event_id,
                    "darkroom.event.type": envelope.type,
                    "darkroom.aggregate.id": envelope.aggregate_id,
                },
            ) as span:
                # The producer span's own context, so the consumer's span is its child.
                inject_headers(into=message.headers)
                delivered = await send(message)
                span.set_attribute("messaging.kafka.destination.partition", delivered.partition)
                span.set_attribute("messaging.kafka.message.offset", delivered.offset)
            return delivered

        return traced

    def inbound(self, handle: Handle, member: Member) -> Handle:
        # What every record of the member's spans says alike.
        consumer = {
            "messaging.system": "kafka",
            "messaging.consumer.group.name": member.group,
            "darkroom.service": member.service,
        }

        async def traced(record: Record) -> Handled:
            if not records_spans():
                token = otel_context.attach(extract_context(record.headers))
                try:
                    return await handle(record)
                finally:
                    otel_context.detach(token)
            with _tracer.start_as_current_span(
                f"{record.topic} process",
                context=extract_context(record.headers),
                kind=SpanKind.CONSUMER,
                attributes={
                    **consumer,
                    "messaging.destination.name": record.topic,
                    "messaging.kafka.destination.partition": record.partition,
                    "messaging.kafka.message.offset": record.offset,
                },
            ) as span:
                handled = await handle(record)
                if isinstance(handled, DeadLettered):
                    _dead_lettered(span, handled)
                else:
                    _describe(span, handled)
            return handled

        return traced


def _describe(span: trace.Span, envelope: Envelope) -> None:
    span.set_attribute("messaging.message.id", envelope.event_id)
    span.set_attribute("darkroom.event.type", envelope.type)
    span.set_attribute("darkroom.aggregate.id", envelope.aggregate_id)


def _dead_lettered(span: trace.Span, letter: DeadLettered) -> None:
    if letter.envelope is not None:
        _describe(span, letter.envelope)
    if letter.exhausted:
        span.record_exception(letter.error)
    span.set_status(Status(StatusCode.ERROR, str(letter.error)))
