"""Wiring of the storage service."""

from __future__ import annotations

from libs import topics
from libs.bus.ports import Producer
from libs.events.schemas import StoreImage
from libs.runtime.dispatch import Dispatcher
from libs.runtime.service import ConsumerFactory, ServiceRuntime, Subscription
from libs.runtime.wiring import kafka_consumer_factory, kafka_producer
from libs.settings import StorageSettings
from libs.stores.minio import MinioBlobStore
from libs.stores.mongo import MongoDocumentStore
from libs.stores.ports import BlobStore, DocumentStore
from services.storage.handlers import StorageHandlers

SERVICE = "storage"


def bootstrap(
    settings: StorageSettings,
    *,
    producer: Producer | None = None,
    consumer_factory: ConsumerFactory | None = None,
    documents: DocumentStore | None = None,
    blobs: BlobStore | None = None,
) -> ServiceRuntime:
    """Wire the storage service; tests pass in-memory adapters.

    Args:
        settings: The service's settings.
        producer: The bus producer (Kafka when omitted).
        consumer_factory: Makes consumer-group members (Kafka when omitted).
        documents: The metadata store (MongoDB when omitted).
        blobs: The object store (MinIO when omitted).

    Returns:
        The runtime, ready for `run_service`.
    """
    docs = documents or MongoDocumentStore(settings.mongo_url, settings.mongo_database)
    objects = blobs or MinioBlobStore(
        settings.minio_endpoint,
        settings.minio_access_key,
        settings.minio_secret_key,
        settings.minio_bucket,
        secure=settings.minio_secure,
    )
    runtime = ServiceRuntime(
        name=SERVICE,
        settings=settings,
        producer=producer or kafka_producer(settings, SERVICE),
        consumer_factory=consumer_factory or kafka_consumer_factory(settings, SERVICE),
    )
    handlers = StorageHandlers(runtime.publisher, docs, objects)
    dispatcher = Dispatcher(SERVICE)
    dispatcher.on(StoreImage, handlers.on_store_image)

    async def mongo_ok() -> bool:
        await docs.ping()
        return True

    async def minio_ok() -> bool:
        await objects.ping()
        return True

    runtime.subscriptions.append(Subscription(group=SERVICE, topics=[topics.STORAGE_BLOBS], handler=dispatcher))
    runtime.checks.update({"mongo": mongo_ok, "minio": minio_ok})
    return runtime
