"""Which spans a process records: none without an exporter, a share of traces with one."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from libs.telemetry import span_sampler


def _tracer(otlp_endpoint: str, ratio: float = 1.0) -> trace.Tracer:
    return TracerProvider(sampler=span_sampler(otlp_endpoint, ratio)).get_tracer("test")


def test_without_an_exporter_spans_are_not_recorded_but_their_ids_exist_and_travel() -> None:
    tracer = _tracer("")
    with tracer.start_as_current_span("request") as root:
        assert not root.is_recording()
        assert root.get_span_context().is_valid, "x-request-id and the traceparent header need a trace id"
        with tracer.start_as_current_span("child") as child:
            assert child.get_span_context().trace_id == root.get_span_context().trace_id


def test_with_an_exporter_every_trace_is_recorded_by_default() -> None:
    with _tracer("http://127.0.0.1:4318").start_as_current_span("request") as span:
        assert span.is_recording() and span.get_span_context().trace_flags.sampled


def test_a_ratio_drops_whole_traces_where_they_start_and_a_parent_decides_for_its_children() -> None:
    dropped = _tracer("http://127.0.0.1:4318", 0.0)
    with dropped.start_as_current_span("request") as root:
        assert not root.is_recording()
    kept = _tracer("http://127.0.0.1:4318", 1.0)
    with kept.start_as_current_span("request") as parent:
        # A service that samples nothing itself still records a child of a sampled trace.
        with dropped.start_as_current_span("handler", context=trace.set_span_in_context(parent)) as child:
            assert child.is_recording()
