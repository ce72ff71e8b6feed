"""The `python -m services.<name>` entrypoint shared by every Kafka-driven service."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import TypeVar

import uvloop
from pydantic import ValidationError

from libs.runtime.service import ServiceRuntime, run_service
from libs.settings import ServiceSettings
from libs.telemetry import configure_logging, configure_tracing

S = TypeVar("S", bound=ServiceSettings)


def load_settings(settings_type: type[S]) -> S:
    """Read and validate settings; exit with a plain message when they are invalid."""
    try:
        return settings_type()
    except ValidationError as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def main(service: str, settings_type: type[S], bootstrap: Callable[[S], ServiceRuntime]) -> None:
    """Configure logging and tracing, wire the service and run it until SIGTERM.

    The service runs on uvloop's event loop, as the gateway does under uvicorn: the services
    beside the decoder spend much of their CPU in the loop's own work (sockets to the broker
    and the stores, callbacks, timers), which uvloop does in C.
    """
    settings = load_settings(settings_type)
    configure_logging(settings.log_level, service)
    configure_tracing(service, settings.otlp_endpoint, settings.instance_id, settings.trace_sample_ratio)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run_service(bootstrap(settings)))
