"""The `python -m services.<name>` entrypoint shared by every Kafka-driven service."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import TypeVar

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
    """Configure logging and tracing, wire the service and run it until SIGTERM."""
    settings = load_settings(settings_type)
    configure_logging(settings.log_level, service)
    configure_tracing(service, settings.otlp_endpoint, settings.instance_id, settings.trace_sample_ratio)
    asyncio.run(run_service(bootstrap(settings)))
