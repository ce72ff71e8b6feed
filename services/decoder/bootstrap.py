"""Wiring of the decoder service."""

from __future__ import annotations

from libs import topics
from libs.bus.ports import Producer
from libs.runtime.dispatch import Dispatcher
from libs.runtime.service import ConsumerFactory, ServiceRuntime, Subscription
from libs.runtime.wiring import kafka_consumer_factory, kafka_producer
from libs.settings import DecoderSettings

SERVICE = "decoder"


def bootstrap(
    settings: DecoderSettings,
    *,
    producer: Producer | None = None,
    consumer_factory: ConsumerFactory | None = None,
) -> ServiceRuntime:
    """Wire the decoder service; tests pass in-memory adapters."""
    jobs = Dispatcher(SERVICE)
    return ServiceRuntime(
        name=SERVICE,
        settings=settings,
        producer=producer or kafka_producer(settings, SERVICE),
        consumer_factory=consumer_factory or kafka_consumer_factory(settings, SERVICE),
        subscriptions=[Subscription(group=f"{SERVICE}-consumer", topics=[topics.RENDER_CONSUMER], handler=jobs)],
    )
