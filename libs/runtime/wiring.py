"""Real Kafka adapters for a service's runtime (tests wire in-memory ones instead)."""

from __future__ import annotations

from collections.abc import Sequence

from libs.bus.kafka import KafkaConsumer, KafkaProducer
from libs.bus.ports import Consumer
from libs.runtime.service import ConsumerFactory
from libs.settings import ServiceSettings


def kafka_producer(settings: ServiceSettings, service: str) -> KafkaProducer:
    """The service's idempotent producer."""
    return KafkaProducer(settings.kafka_bootstrap, client_id=f"darkroom-{service}")


def kafka_consumer_factory(settings: ServiceSettings, service: str) -> ConsumerFactory:
    """Makes consumer-group members for the service's subscriptions (group "" = none)."""

    def make(group: str, topics: Sequence[str]) -> Consumer:
        if not group:
            # No group: read what arrives from now on, on every partition (live views).
            return KafkaConsumer(
                settings.kafka_bootstrap,
                group=None,
                topics=topics,
                client_id=f"darkroom-{service}",
                auto_offset_reset="latest",
            )
        return KafkaConsumer(settings.kafka_bootstrap, group=group, topics=topics, client_id=f"darkroom-{service}")

    return make
