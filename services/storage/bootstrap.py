"""Wiring of the storage service."""

from __future__ import annotations

from libs import topics
from libs.bus.ports import Producer
from libs.runtime.dispatch import Dispatcher
from libs.runtime.service import ConsumerFactory, ServiceRuntime, Subscription
from libs.runtime.wiring import kafka_consumer_factory, kafka_producer
from libs.settings import StorageSettings
from libs.stores.minio import MinioBlobStore
from libs.stores.mongo import MongoDocumentStore
from libs.stores.ports import BlobStore, DocumentStore

SERVICE = "storage"


def bootstrap(
    settings: StorageSettings,
    *,
    producer: Producer | None = None,
    consumer_factory: ConsumerFactory | None = None,
    documents: DocumentStore | None = None,
    blobs: BlobStore | None = None,
) -> ServiceRuntime:
    """Wire the storage service; tests pass in-memory adapters."""
    docs = documents or MongoDocumentStore(settings.mongo_url, settings.mongo_database)
    objects = blobs or MinioBlobStore(
        settings.minio_endpoint,
        settings.minio_access_key,
        settings.minio_secret_key,
        settings.minio_bucket,
        secure=settings.minio_secure,
    )
    dispatcher = Dispatcher(SERVICE)

    async def mongo_ok() -> bool:
        await docs.ping()
        return True

    async def minio_ok() -> bool:
        await objects.ping()
        return True

    return ServiceRuntime(
        name=SERVICE,
        settings=settings,
        producer=producer or kafka_producer(settings, SERVICE),
        consumer_factory=consumer_factory or kafka_consumer_factory(settings, SERVICE),
        subscriptions=[Subscription(group=SERVICE, topics=[topics.STORAGE_BLOBS], handler=dispatcher)],
        checks={"mongo": mongo_ok, "minio": minio_ok},
    )
