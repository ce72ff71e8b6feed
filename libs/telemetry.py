"""OpenTelemetry set-up for a service's entrypoint (libraries only use the API).

Spans are exported over OTLP/HTTP when DARKROOM_OTLP_ENDPOINT is set (for example a
collector or Jaeger at http://127.0.0.1:4318); otherwise tracing still runs, so trace
ids exist for x-request-id and logs, but nothing is exported.
"""

from __future__ import annotations

import logging
import sys

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_configured = False


def configure_logging(level: str, service: str) -> None:
    """Log to stderr, one line per record, with the service name."""
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s",
    )
    for noisy in ("aiokafka", "kafka", "pymongo", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def configure_tracing(service: str, otlp_endpoint: str = "", instance_id: str = "") -> TracerProvider:
    """Install the SDK tracer provider for this process (once).

    Args:
        service: `service.name` of every span.
        otlp_endpoint: OTLP/HTTP base URL; no exporter when empty.
        instance_id: `service.instance.id` (replicas of one service differ here).

    Returns:
        The provider, so tests can attach span processors.
    """
    global _configured
    current = trace.get_tracer_provider()
    if _configured and isinstance(current, TracerProvider):
        return current
    attributes = {"service.name": f"darkroom-{service}", "service.namespace": "darkroom"}
    if instance_id:
        attributes["service.instance.id"] = instance_id
    provider = TracerProvider(resource=Resource.create(attributes))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = otlp_endpoint.rstrip("/")
        if not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    _configured = True
    return provider
