"""Wiring of the metering service: the faust app inside darkroom's service runtime.

The runtime gives the service what every darkroom service has (heartbeats, `/healthz` and
`/metrics` on its health port, the producer that publishes `AccountUsage`); the faust app
(services/metering/app.py) does the stream processing, in the same event loop.
"""

from __future__ import annotations

import asyncio
import logging

import faust

from libs import topics
from libs.bus.ports import Producer
from libs.events import Envelope
from libs.events.schemas import AccountUsage
from libs.runtime.service import ConsumerFactory, ServiceRuntime
from libs.runtime.wiring import kafka_consumer_factory, kafka_producer
from libs.settings import ServiceSettings
from services.metering.app import build_app
from services.metering.domain import usage_key

SERVICE = "metering"
log = logging.getLogger(__name__)


def bootstrap(
    settings: ServiceSettings,
    *,
    producer: Producer | None = None,
    consumer_factory: ConsumerFactory | None = None,
    app: faust.App | None = None,
) -> ServiceRuntime:
    """Wire the metering service (its faust app on the settings' Kafka unless one is given)."""
    runtime = ServiceRuntime(
        name=SERVICE,
        settings=settings,
        producer=producer or kafka_producer(settings, SERVICE),
        consumer_factory=consumer_factory or kafka_consumer_factory(settings, SERVICE),
    )

    async def publish(usage: AccountUsage) -> None:
        key = usage_key(usage.account_id, usage.day)
        await runtime.publisher.publish(topics.USAGE, Envelope.wrap(usage, aggregate_id=key), key=key)

    metering = app or build_app(settings.kafka_bootstrap, publish)
    started = asyncio.Event()

    async def run_app(stop: asyncio.Event) -> None:
        await metering.start()
        started.set()
        try:
            await stop.wait()
        finally:
            await metering.stop()

    async def app_running() -> bool:
        return started.is_set() and not metering.should_stop

    runtime.background.append(run_app)
    runtime.checks["faust"] = app_running
    return runtime
