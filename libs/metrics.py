"""Prometheus metrics of every service, with prometheus-client.

Each service process exports its metrics at `GET /metrics`: the gateway on its API port, the
others on their health port (libs.runtime.health). What every service shares is counted here,
where it happens, once:

- events handled by a consumer group, by type and outcome, and how long the handler took;
- events published, by topic and type; dead letters, by group, topic and error type;
- each consumer group member's lag: records of its assigned partitions not fetched yet
  (the broker's end offset minus the member's position, as the member last saw them).

A service's own figures (decoder passes, safety verdicts, sign-ups, the gateway's requests
and refusals) are defined beside the code that counts them, in the same registry.

Every darkroom service runs as one process with one event loop (uvicorn without workers for
the gateway), so the default in-process registry is exact; a gateway run under several
workers would need prometheus-client's multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`),
which `exposition` honours when that variable is set.
"""

from __future__ import annotations

import os
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds: handlers take milliseconds, model passes and synchronous requests seconds."""

EVENTS_HANDLED = Counter(
    "darkroom_events_handled",
    "Events a consumer group handled, by event type and outcome (ok, dead_lettered).",
    ["service", "group", "type", "outcome"],
)
HANDLER_SECONDS = Histogram(
    "darkroom_handler_seconds",
    "Seconds a handler took for one event (retries included), by consumer group and event type.",
    ["service", "group", "type"],
    buckets=LATENCY_BUCKETS,
)
EVENTS_PUBLISHED = Counter(
    "darkroom_events_published",
    "Events published, by topic and event type.",
    ["topic", "type"],
)
DEAD_LETTERS = Counter(
    "darkroom_dead_letters",
    "Messages sent to the dead-letter topic, by the group that gave up, their topic and the error.",
    ["service", "group", "topic", "error_type"],
)
CONSUMER_LAG = Gauge(
    "darkroom_consumer_lag",
    "Records of an assigned partition the group member has not fetched yet, as it last saw the end.",
    ["group", "topic", "partition"],
)


def exposition() -> tuple[bytes, str]:
    """The metrics of this process in Prometheus' text format, and its content type."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
