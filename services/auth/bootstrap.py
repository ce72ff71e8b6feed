"""Wiring of the auth service."""

from __future__ import annotations

from libs import topics
from libs.bus.ports import Producer
from libs.runtime.dispatch import Dispatcher
from libs.runtime.service import ConsumerFactory, ServiceRuntime, Subscription
from libs.runtime.wiring import kafka_consumer_factory, kafka_producer
from libs.settings import AuthSettings
from libs.stores.mongo import MongoDocumentStore
from libs.stores.ports import DocumentStore

SERVICE = "auth"


def bootstrap(
    settings: AuthSettings,
    *,
    producer: Producer | None = None,
    consumer_factory: ConsumerFactory | None = None,
    documents: DocumentStore | None = None,
) -> ServiceRuntime:
    """Wire the auth service; tests pass in-memory adapters."""
    docs = documents or MongoDocumentStore(settings.mongo_url, settings.mongo_database)
    commands = Dispatcher(SERVICE)

    async def mongo_ok() -> bool:
        await docs.ping()
        return True

    return ServiceRuntime(
        name=SERVICE,
        settings=settings,
        producer=producer or kafka_producer(settings, SERVICE),
        consumer_factory=consumer_factory or kafka_consumer_factory(settings, SERVICE),
        subscriptions=[Subscription(group=SERVICE, topics=[topics.ACCOUNT_COMMANDS], handler=commands)],
        checks={"mongo": mongo_ok},
    )
