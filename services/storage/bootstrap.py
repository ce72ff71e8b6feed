"""Wiring of the storage service."""

from __future__ import annotations

from libs import topics
from libs.bus.ports import Producer
from libs.events.schemas import StoreImage
from libs.runtime.dispatch import Dispatcher
from libs.runtime.service import ConsumerFactory, ServiceRuntime, Subscription
from libs.runtime.wiring import kafka_consumer_factory, kafka_producer, minio_store, mongo_store, reachable
from libs.settings import StorageSettings
from libs.stores.grouped import GroupedInserts
from libs.stores.minio import MinioBlobStore
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
    docs = documents or mongo_store(settings)
    objects = blobs or minio_store(settings)
    runtime = ServiceRuntime(
        name=SERVICE,
        settings=settings,
        producer=producer or kafka_producer(settings, SERVICE),
        consumer_factory=consumer_factory or kafka_consumer_factory(settings, SERVICE),
    )
    handlers = StorageHandlers(runtime.publisher, GroupedInserts(docs), objects)
    dispatcher = Dispatcher(SERVICE)
    dispatcher.on(StoreImage, handlers.on_store_image)

    runtime.subscriptions.append(
        Subscription(
            group=SERVICE,
            topics=[topics.STORAGE_BLOBS],
            handler=dispatcher,
            concurrency=settings.handler_concurrency,
        )
    )
    runtime.checks.update({"mongo": reachable(docs), "minio": reachable(objects)})
    if isinstance(objects, MinioBlobStore):
        runtime.on_stop.append(objects.close)
    return runtime
