"""W3C trace context in Kafka headers: the one place it is injected and extracted.

Why here and nowhere else: every hop between services is a Kafka message, so if the
bus adapter carries `traceparent`/`tracestate` in the headers of each message, one
trace follows a job from the HTTP request through every service without any handler
knowing about tracing. Libraries use only the OpenTelemetry API; each service's
entrypoint configures the SDK (libs.telemetry).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from opentelemetry import context as otel_context
from opentelemetry import propagate

TRACE_HEADERS = ("traceparent", "tracestate", "baggage")


def inject_headers(ctx: otel_context.Context | None = None) -> list[tuple[str, bytes]]:
    """Return the trace context of `ctx` (default: current) as Kafka headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    return [(name, value.encode()) for name, value in carrier.items()]


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
