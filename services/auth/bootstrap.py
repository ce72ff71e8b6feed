"""Wiring of the auth service."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from libs import topics
from libs.bus.ports import Producer
from libs.events.schemas import CreateAccount
from libs.runtime.dispatch import Dispatcher
from libs.runtime.service import ConsumerFactory, ServiceRuntime, Subscription
from libs.runtime.wiring import kafka_consumer_factory, kafka_producer, mongo_store, reachable
from libs.settings import AuthSettings
from libs.stores.ports import DocumentStore
from services.auth.handlers import AuthHandlers

SERVICE = "auth"


def _now() -> datetime:
    return datetime.now(UTC)


def bootstrap(
    settings: AuthSettings,
    *,
    producer: Producer | None = None,
    consumer_factory: ConsumerFactory | None = None,
    documents: DocumentStore | None = None,
    clock: Callable[[], datetime] = _now,
) -> ServiceRuntime:
    """Wire the auth service; tests pass in-memory adapters.

    Args:
        settings: The service's settings.
        producer: The bus producer (Kafka when omitted).
        consumer_factory: Makes consumer-group members (Kafka when omitted).
        documents: The document store (MongoDB when omitted).
        clock: The current time, for account creation.

    Returns:
        The runtime, ready for `run_service`.
    """
    docs = documents or mongo_store(settings)
    runtime = ServiceRuntime(
        name=SERVICE,
        settings=settings,
        producer=producer or kafka_producer(settings, SERVICE),
        consumer_factory=consumer_factory or kafka_consumer_factory(settings, SERVICE),
    )
    handlers = AuthHandlers(runtime.publisher, docs, clock)
    commands = Dispatcher(SERVICE)
    commands.on(CreateAccount, handlers.on_create_account)

    runtime.subscriptions.append(Subscription(group=SERVICE, topics=[topics.ACCOUNT_COMMANDS], handler=commands))
    runtime.checks["mongo"] = reachable(docs)
    return runtime
