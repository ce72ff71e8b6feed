"""Real adapters (Kafka, MongoDB, MinIO) for a service's runtime; tests wire in-memory ones."""

from __future__ import annotations

from collections.abc import Sequence

from libs.bus.assignment import PlannedAssignor
from libs.bus.kafka import KafkaConsumer, KafkaProducer
from libs.bus.ports import Consumer
from libs.runtime.service import ConsumerFactory, HealthCheck
from libs.settings import MinioSettings, MongoSettings, ServiceSettings
from libs.stores.minio import MinioBlobStore
from libs.stores.mongo import MongoDocumentStore
from libs.stores.ports import BlobStore, DocumentStore


def kafka_producer(settings: ServiceSettings, service: str) -> KafkaProducer:
    """The service's idempotent producer."""
    return KafkaProducer(settings.kafka_bootstrap, client_id=f"darkroom-{service}")


def kafka_consumer_factory(
    settings: ServiceSettings, service: str, *, assignor: type[PlannedAssignor] | None = None
) -> ConsumerFactory:
    """Makes consumer-group members for the service's subscriptions (group "" = none);
    `assignor` places their groups' partitions (Kafka's round robin when None)."""

    def make(group: str, topics: Sequence[str]) -> Consumer:
        if not group:
            # No group: read what arrives from now on, on every partition (live views).
            return KafkaConsumer(
                settings.kafka_bootstrap,
                group=None,
                topics=topics,
                client_id=f"darkroom-{service}",
                auto_offset_reset="latest",
                fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            )
        return KafkaConsumer(
            settings.kafka_bootstrap,
            group=group,
            topics=topics,
            client_id=f"darkroom-{service}",
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            assignor=assignor,
        )

    return make


def mongo_store(settings: MongoSettings) -> MongoDocumentStore:
    """The service's MongoDB document store."""
    return MongoDocumentStore(settings.mongo_url, settings.mongo_database)


def minio_store(settings: MinioSettings) -> MinioBlobStore:
    """The service's MinIO (S3) bucket."""
    return MinioBlobStore(
        settings.minio_endpoint,
        settings.minio_access_key,
        settings.minio_secret_key,
        settings.minio_bucket,
        secure=settings.minio_secure,
    )


def reachable(store: DocumentStore | BlobStore) -> HealthCheck:
    """A health check that passes while the store answers its ping."""

    async def check() -> bool:
        await store.ping()
        return True

    return check
