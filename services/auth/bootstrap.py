"""Wiring of the auth service."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from libs import topics
from libs.bus.ports import Producer
from libs.events.schemas import ChangeTier, CreateAccount, RevokeKeys
from libs.runtime.dispatch import Dispatcher
from libs.runtime.service import ConsumerFactory, ServiceRuntime
from libs.runtime.wiring import kafka_consumer_factory, kafka_producer, mongo_store, reachable
from libs.settings import AuthSettings
from libs.stores.ports import DocumentStore
from services.auth.batches import SignUpBatches
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
    commands.on(RevokeKeys, handlers.on_revoke_keys)
    commands.on(ChangeTier, handlers.on_change_tier)

    # Sign-ups are decided a fetch at a time (services/auth/batches.py); the loop is a
    # background task with its own member of the service's group.
    batches = SignUpBatches(
        runtime.consumer_factory(SERVICE, [topics.ACCOUNT_COMMANDS]),
        handlers,
        commands,
        publisher=runtime.publisher,
        dead_letter_topic=topics.DEAD_LETTERS,
        group=SERVICE,
    )
    runtime.background.append(batches.run)
    runtime.checks["mongo"] = reachable(docs)
    return runtime
