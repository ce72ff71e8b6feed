"""The gateway's /healthz, wired with the in-memory bus."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx

from libs import topics
from libs.bus import EventPublisher
from libs.bus.memory import InMemoryBroker
from libs.events import Envelope
from libs.events.schemas import BatchLoad, ServiceHeartbeat
from libs.runtime.heartbeats import SERVICES
from libs.settings import GatewaySettings
from libs.stores.memory import InMemoryBlobStore, InMemoryDocumentStore
from services.gateway.app import create_app
from tests.helpers import eventually


async def _get(app, path: str) -> httpx.Response:  # type: ignore[no-untyped-def]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        return await client.get(path)


async def test_healthz_is_degraded_until_every_service_has_reported() -> None:
    broker = InMemoryBroker()
    app = create_app(
        GatewaySettings(heartbeat_interval_s=0.05, instance_id="gw-1"),
        producer=broker.producer(),
        consumer_factory=broker.consumer,
        documents=InMemoryDocumentStore(),
        blobs=InMemoryBlobStore(),
    )
    async with app.router.lifespan_context(app):

        async def own_beat_seen() -> bool:
            return app.state.heartbeats.seen("gw-1") is not None

        await eventually(own_beat_seen, 5, "the gateway's own heartbeat")
        response = await _get(app, "/healthz")
        assert response.status_code == 503
        body = response.json()
        assert body["kafka"]["reachable"] is True
        assert body["services"]["gateway"]["healthy"] is True
        assert body["services"]["storage"]["healthy"] is False

        publisher = EventPublisher(broker.producer())
        for service in SERVICES:
            if service != "gateway":
                # The only decoder serves the consumer pool.
                batch = BatchLoad(pool="consumer", limit=8) if service == "decoder" else None
                beat = ServiceHeartbeat(
                    service=service, instance_id=f"{service}-1", started_at=datetime.now(UTC), batch=batch
                )
                await publisher.publish(topics.HEARTBEATS, Envelope.wrap(beat, aggregate_id=f"{service}-1"))

        async def services_healthy() -> httpx.Response | None:
            response = await _get(app, "/healthz")
            return response if response.json()["services"]["storage"]["healthy"] else None

        # Every service reports, but the api pool has no decoder: degraded, and named.
        response = await eventually(services_healthy, 5, "every service reported")
        assert response.status_code == 503
        assert response.json()["problems"] == ["decoder pool darkroom-mini/api: no live decoder"]
        assert response.json()["pools"] == {
            "darkroom-mini/consumer": {"healthy": True, "instances": 1},
            "darkroom-mini/api": {"healthy": False, "instances": 0},
        }
        beat = ServiceHeartbeat(
            service="decoder",
            instance_id="decoder-api-1",
            started_at=datetime.now(UTC),
            batch=BatchLoad(pool="api", model="darkroom-mini", limit=8),
        )
        await publisher.publish(topics.HEARTBEATS, Envelope.wrap(beat, aggregate_id="decoder-api-1"))

        async def all_healthy() -> httpx.Response | None:
            response = await _get(app, "/healthz")
            return response if response.status_code == 200 else None

        response = await eventually(all_healthy, 5, "every service healthy")
        assert response.json()["status"] == "ok" and response.json()["problems"] == []
        assert response.json()["pools"]["darkroom-mini/api"] == {"healthy": True, "instances": 1}
        await asyncio.sleep(0)


async def test_openapi_docs_are_served() -> None:
    broker = InMemoryBroker()
    app = create_app(
        GatewaySettings(),
        producer=broker.producer(),
        consumer_factory=broker.consumer,
        documents=InMemoryDocumentStore(),
        blobs=InMemoryBlobStore(),
    )
    async with app.router.lifespan_context(app):
        assert (await _get(app, "/docs")).status_code == 200
        spec = (await _get(app, "/openapi.json")).json()
        assert "/healthz" in spec["paths"]
