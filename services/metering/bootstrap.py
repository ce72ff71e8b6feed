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
from libs.access import AccessState
from libs.bus.logreader import KafkaLogReader, LogReader, PortLogReader, read_to_end
from libs.bus.ports import Producer, Record
from libs.events import REGISTRY, DecodeError, Envelope
from libs.events.ids import new_ulid
from libs.events.schemas import AccountUsage
from libs.runtime.service import ConsumerFactory, ServiceRuntime
from libs.runtime.wiring import kafka_consumer_factory, kafka_producer
from libs.settings import MeteringSettings
from services.metering.abuse import AbuseWatch
from services.metering.app import LAG_INTERVAL_S, build_app, record_lag
from services.metering.domain import usage_key

SERVICE = "metering"
log = logging.getLogger(__name__)


def bootstrap(
    settings: MeteringSettings,
    *,
    producer: Producer | None = None,
    consumer_factory: ConsumerFactory | None = None,
    app: faust.App | None = None,
    access_reader: LogReader | None = None,
) -> ServiceRuntime:
    """Wire the metering service (its faust app on the settings' Kafka unless one is given).

    `access_reader` reads the tier policies and account tiers (abuse detection judges by
    them) from their beginning; Kafka's when omitted, else a reader over `consumer_factory`.
    """
    runtime = ServiceRuntime(
        name=SERVICE,
        settings=settings,
        producer=producer or kafka_producer(settings, SERVICE),
        consumer_factory=consumer_factory or kafka_consumer_factory(settings, SERVICE),
    )

    async def publish(usage: AccountUsage) -> None:
        key = usage_key(usage.account_id, usage.day)
        await runtime.publisher.publish(topics.USAGE, Envelope.wrap(usage, aggregate_id=key), key=key)

    access = AccessState()
    watch = AbuseWatch(
        access, runtime.publisher, settings.abuse_action, settings.abuse_tolerance, settings.abuse_baseline_factor
    )
    access_topics = [topics.POLICIES, topics.ACCOUNT_TIERS]
    if access_reader is None:
        if consumer_factory is None:
            access_reader = KafkaLogReader(
                settings.kafka_bootstrap,
                access_topics,
                client_id=f"darkroom-{SERVICE}",
                fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            )
        else:
            access_reader = PortLogReader(consumer_factory(f"{SERVICE}-access-{new_ulid()}", access_topics))
    reader = access_reader

    def fold(record: Record) -> None:
        try:
            access.apply(REGISTRY.decode(Envelope.from_bytes(record.value)))
        except DecodeError:
            pass  # the gateways dead-letter such records; they own these topics

    async def apply(record: Record) -> None:
        fold(record)

    async def load_access() -> None:
        await reader.start()
        await read_to_end(reader, apply, timeout_s=60)

    async def follow_access(stop: asyncio.Event) -> None:
        while not stop.is_set():
            for record in await reader.getmany(200, 500):
                fold(record)

    async def close_access() -> None:
        await reader.stop()

    runtime.on_start.append(load_access)
    runtime.background.append(follow_access)
    runtime.on_stop.append(close_access)

    metering = app or build_app(
        settings.kafka_bootstrap,
        publish,
        watch.counted,
        replicas=settings.kafka_replication_factor,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
    )
    started = asyncio.Event()

    async def run_app(stop: asyncio.Event) -> None:
        await metering.start()
        started.set()
        try:
            await stop.wait()
        finally:
            await metering.stop()

    async def report_lag(stop: asyncio.Event) -> None:
        await started.wait()
        while not stop.is_set():
            try:
                await record_lag(metering)
            except Exception:  # metrics never stop the service (e.g. during a rebalance)
                log.debug("consumer lag not read this time", exc_info=True)
            try:
                await asyncio.wait_for(stop.wait(), LAG_INTERVAL_S)
            except TimeoutError:
                pass

    async def app_running() -> bool:
        return started.is_set() and not metering.should_stop

    runtime.background.append(run_app)
    runtime.background.append(report_lag)
    runtime.checks["faust"] = app_running
    return runtime
