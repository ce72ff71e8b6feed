"""The service runtime, wired with in-memory adapters: heartbeats, health, shutdown."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from datetime import UTC, datetime

from libs import topics
from libs.bus import EventPublisher
from libs.bus.memory import InMemoryBroker
from libs.events import REGISTRY, Envelope
from libs.events.schemas import DeadLetter, ServiceHeartbeat
from libs.runtime.service import run_service
from libs.settings import StorageSettings
from libs.stores.memory import InMemoryBlobStore, InMemoryDocumentStore
from services.storage.bootstrap import bootstrap
from tests.helpers import eventually, metric, metric_samples


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_a_service_heartbeats_serves_health_and_stops_cleanly() -> None:
    broker = InMemoryBroker()
    settings = StorageSettings(health_port=0, heartbeat_interval_s=0.05, instance_id="storage-t")
    runtime = bootstrap(
        settings,
        producer=broker.producer(),
        consumer_factory=broker.consumer,
        documents=InMemoryDocumentStore(),
        blobs=InMemoryBlobStore(),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(runtime, stop))

    async def beats() -> list[ServiceHeartbeat]:
        return [
            REGISTRY.decode_as(Envelope.from_bytes(r.value), ServiceHeartbeat)
            for r in broker.records(topics.HEARTBEATS)
        ]

    beat = (await eventually(beats, 5, "a heartbeat"))[0]
    assert (beat.service, beat.instance_id, beat.healthy) == ("storage", "storage-t", True)
    assert beat.checks == {"mongo": True, "minio": True}

    healthy, report = await runtime.health_report()
    assert healthy and report["status"] == "ok"

    stop.set()
    await asyncio.wait_for(task, 10)


async def test_a_poison_message_on_the_service_topic_is_dead_lettered() -> None:
    broker = InMemoryBroker()
    runtime = bootstrap(
        StorageSettings(heartbeat_interval_s=10),
        producer=broker.producer(),
        consumer_factory=broker.consumer,
        documents=InMemoryDocumentStore(),
        blobs=InMemoryBlobStore(),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(runtime, stop))
    await broker.producer().send(topics.STORAGE_BLOBS, b"{oops", key=b"x")

    async def letters() -> list[DeadLetter]:
        return [
            REGISTRY.decode_as(Envelope.from_bytes(r.value), DeadLetter) for r in broker.records(topics.DEAD_LETTERS)
        ]

    [letter] = await eventually(letters, 5, "a dead letter")
    assert (letter.service, letter.group, letter.topic) == ("storage", "storage", topics.STORAGE_BLOBS)
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_the_health_endpoint_answers_over_http() -> None:
    broker = InMemoryBroker()
    failing = InMemoryDocumentStore()

    async def down() -> None:
        raise ConnectionError("mongo down")

    failing.ping = down  # type: ignore[method-assign]
    settings = StorageSettings(health_port=0, heartbeat_interval_s=10)
    runtime = bootstrap(
        settings,
        producer=broker.producer(),
        consumer_factory=broker.consumer,
        documents=failing,
        blobs=InMemoryBlobStore(),
    )
    stop = asyncio.Event()
    from libs.runtime.health import HealthServer

    server = HealthServer(runtime.health_report, "127.0.0.1", 0)
    await server.start()
    try:
        status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{server.port}/healthz")
        assert status == 503
        assert body["checks"] == {"mongo": False, "minio": True}
        status, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{server.port}/nope")
        assert status == 404
    finally:
        await server.stop()
        stop.set()


async def test_the_metrics_endpoint_serves_the_process_metrics_in_prometheus_format() -> None:
    from libs.runtime.health import HealthServer

    broker = InMemoryBroker()
    publisher = EventPublisher(broker.producer())
    beat = ServiceHeartbeat(service="storage", instance_id="storage-m", started_at=datetime.now(UTC))
    await publisher.publish(topics.HEARTBEATS, Envelope.wrap(beat, aggregate_id="storage-m"))

    async def healthy() -> tuple[bool, dict[str, object]]:
        return True, {}

    server = HealthServer(healthy, "127.0.0.1", 0)
    await server.start()
    try:

        def scrape() -> tuple[int, str, str]:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=2) as response:
                return response.status, response.headers["content-type"], response.read().decode()

        status, content_type, text = await asyncio.to_thread(scrape)
    finally:
        await server.stop()
    assert status == 200 and content_type.startswith("text/plain")
    samples = metric_samples(text)
    published = metric(samples, "darkroom_events_published_total", topic=topics.HEARTBEATS, type=ServiceHeartbeat.TYPE)
    assert published is not None and published >= 1
