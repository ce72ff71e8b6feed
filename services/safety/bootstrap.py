"""Wiring of the safety service."""

from __future__ import annotations

from libs import topics
from libs.bus.ports import Producer
from libs.runtime.dispatch import Dispatcher
from libs.runtime.service import ConsumerFactory, ServiceRuntime, Subscription
from libs.runtime.wiring import kafka_consumer_factory, kafka_producer
from libs.settings import SafetySettings

SERVICE = "safety"


def bootstrap(
    settings: SafetySettings,
    *,
    producer: Producer | None = None,
    consumer_factory: ConsumerFactory | None = None,
) -> ServiceRuntime:
    """Wire the safety service; tests pass in-memory adapters."""
    checks = Dispatcher(SERVICE)
    return ServiceRuntime(
        name=SERVICE,
        settings=settings,
        producer=producer or kafka_producer(settings, SERVICE),
        consumer_factory=consumer_factory or kafka_consumer_factory(settings, SERVICE),
        subscriptions=[Subscription(group=SERVICE, topics=[topics.SAFETY_CHECKS], handler=checks)],
    )
