"""OpenTelemetry set-up for a service's entrypoint (libraries only use the API).

Spans are exported over OTLP/HTTP when DARKROOM_OTLP_ENDPOINT is set (for example a
collector or Jaeger at http://127.0.0.1:4318), a share of the traces that start in the
gateway when DARKROOM_TRACE_SAMPLE_RATIO is below 1 (a trace is kept or dropped whole:
every other service follows the gateway's decision, carried in the `traceparent` header).

Without an endpoint spans are not recorded at all: trace ids still exist and travel, for
x-request-id and logs, but no process pays for spans nobody receives (they were about a
tenth of the gateway's and the requests service's CPU in `make bench-pipeline`).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler, TraceIdRatioBased

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
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RepeatedLines) for f in handler.filters):
            handler.addFilter(RepeatedLines(prefixes=("aiokafka",)))


REPEAT_WINDOW_S = 10.0
"""How long a client library's line, once written, holds back the same line (RepeatedLines)."""


class RepeatedLines(logging.Filter):
    """Writes a client library's line once per `window_s`, counting the copies held back.

    While a Kafka broker is down, aiokafka logs the same two errors for every client of a
    process every 100 ms until its partitions move (a broker killed with -9 in `make surge
    ARGS="--quick --kill-broker"`: thousands of lines from a dozen processes in a few
    seconds, on the cores the failover needs). The first line is written at once, copies in
    the next `window_s` are counted, and the first copy after that is written saying how many
    were held (copies with none after them are counted into nothing: the line stopped).

    Args:
        prefixes: Loggers whose lines are filtered (a name or its children); others pass.
        window_s: How long a line holds back its copies.
        clock: Monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        prefixes: tuple[str, ...],
        window_s: float = REPEAT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._prefixes = prefixes
        self._window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        # line -> (when it was last written, copies held back since)
        self._written: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not any(record.name == p or record.name.startswith(p + ".") for p in self._prefixes):
            return True
        line = (record.name, record.levelno, record.getMessage())
        now = self._clock()
        with self._lock:
            last = self._written.get(line)
            if last is not None and now - last[0] < self._window_s:
                self._written[line] = (last[0], last[1] + 1)
                return False
            self._written = {k: v for k, v in self._written.items() if now - v[0] < self._window_s}
            self._written[line] = (now, 0)
        if last is not None and last[1]:
            record.msg = f"{record.getMessage()} ({last[1]} more like this in the {self._window_s:g} s before)"
            record.args = None
        return True


def span_sampler(otlp_endpoint: str, sample_ratio: float = 1.0) -> Sampler:
    """Which spans a process records: none without an exporter (their ids are still made and
    sent on), else a `sample_ratio` share of new traces and whatever a parent decided."""
    return ParentBased(TraceIdRatioBased(sample_ratio)) if otlp_endpoint else ALWAYS_OFF


def configure_tracing(
    service: str, otlp_endpoint: str = "", instance_id: str = "", sample_ratio: float = 1.0
) -> TracerProvider:
    """Install the SDK tracer provider for this process (once).

    Args:
        service: `service.name` of every span.
        otlp_endpoint: OTLP/HTTP base URL; no exporter, and no span recorded, when empty.
        instance_id: `service.instance.id` (replicas of one service differ here).
        sample_ratio: The share of new traces recorded and exported (a trace that arrives
            with a parent keeps its parent's decision).

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
    provider = TracerProvider(resource=Resource.create(attributes), sampler=span_sampler(otlp_endpoint, sample_ratio))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = otlp_endpoint.rstrip("/")
        if not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    _configured = True
    return provider
