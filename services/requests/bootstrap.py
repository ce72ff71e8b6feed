"""Wiring of the requests service."""

from __future__ import annotations

import asyncio

from libs import topics
from libs.bus.affinity import JobAffinityAssignor
from libs.bus.ports import Producer
from libs.runtime.dispatch import Dispatcher
from libs.runtime.service import ConsumerFactory, ServiceRuntime, Subscription
from libs.runtime.wiring import kafka_consumer_factory, kafka_producer, mongo_store, reachable
from libs.settings import RequestsSettings
from libs.stores.grouped import GroupedInserts
from libs.stores.ports import DocumentStore
from services.requests.domain import Policy
from services.requests.handlers import RequestHandlers, registered_inputs
from services.requests.leases import LeaseMonitor

SERVICE = "requests"


def bootstrap(
    settings: RequestsSettings,
    *,
    producer: Producer | None = None,
    consumer_factory: ConsumerFactory | None = None,
    documents: DocumentStore | None = None,
) -> ServiceRuntime:
    """Wire the requests service; tests pass in-memory adapters."""
    docs = documents or mongo_store(settings)
    runtime = ServiceRuntime(
        name=SERVICE,
        settings=settings,
        producer=producer or kafka_producer(settings, SERVICE),
        # A job's records are cached and its render lease watched in this process: every input
        # of one job must reach the same member of the group (libs/bus/affinity.py).
        consumer_factory=consumer_factory or kafka_consumer_factory(settings, SERVICE, assignor=JobAffinityAssignor),
    )
    handlers = RequestHandlers(
        # Jobs handled side by side write their revisions together (group commit).
        GroupedInserts(docs),
        runtime.publisher,
        Policy(content_check_stride=settings.content_check_stride),
        LeaseMonitor(settings.render_lease_s),
    )
    dispatcher = Dispatcher(SERVICE)
    for event_type in registered_inputs():
        dispatcher.on(event_type, handlers.handle)

    runtime.subscriptions.append(
        Subscription(
            group=SERVICE,
            topics=[topics.IMAGE_COMMANDS, topics.RENDER_PROGRESS, topics.SAFETY_VERDICTS, topics.STORAGE_EVENTS],
            handler=dispatcher,
            # Each job's inputs in order, different jobs side by side (inputs are keyed by job).
            concurrency=settings.handler_concurrency,
        )
    )
    runtime.checks["mongo"] = reachable(docs)

    async def watch_leases(stop: asyncio.Event) -> None:
        await handlers.watch_leases(stop, settings.lease_check_s)

    runtime.background.append(watch_leases)
    return runtime
