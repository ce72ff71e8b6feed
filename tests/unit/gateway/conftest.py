"""A gateway wired to the in-memory bus and stores, driven through the openai SDK.

The other services are not running here: `FakePipeline` plays their part by turning
each GenerateImage command into the request events a real pipeline would produce.
It exists only for these unit tests; tests/e2e runs the real services.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from openai import AsyncOpenAI

from libs import topics
from libs.apikeys import mint, new_key_id
from libs.bus import EventPublisher
from libs.bus.memory import InMemoryBroker
from libs.bus.offsets import LaneCounts
from libs.events import REGISTRY, Envelope, Event
from libs.events.schemas import (
    CancelJob,
    GenerateImage,
    ImageRef,
    JobAccepted,
    JobBlocked,
    JobCancelled,
    JobCompleted,
    JobProgressed,
    JobQueued,
    RenderProgressed,
    Usage,
)
from libs.imaging import encode
from libs.jobs import preview_passes
from libs.lanes import lane_for
from libs.model.interface import pack_tokens
from libs.settings import GatewaySettings
from libs.stores.memory import InMemoryBlobStore, InMemoryDocumentStore
from services.gateway.app import create_app

SIGNING = {"k1": "unit-test-signing-key"}


@dataclass
class FakePipeline:
    """Answers GenerateImage commands with request events (blocked when 'forbidden' is in the prompt)."""

    broker: InMemoryBroker
    blobs: InMemoryBlobStore
    hold: asyncio.Event = field(default_factory=asyncio.Event)
    """Jobs wait for this before completing (set by default)."""
    cancelled: set[str] = field(default_factory=set)
    """Jobs a CancelJob named: they end cancelled once `hold` is set."""
    generated: list[str] = field(default_factory=list)
    """Job ids of every GenerateImage received, in order."""

    commands: list[GenerateImage] = field(default_factory=list)
    """Every command the gateway sent, in order."""

    def __post_init__(self) -> None:
        self.hold.set()

    async def run(self, stop: asyncio.Event) -> None:
        consumer = self.broker.consumer("fake-pipeline", [topics.IMAGE_COMMANDS])
        await consumer.start()
        publisher = EventPublisher(self.broker.producer())
        jobs: set[asyncio.Task[None]] = set()
        while not stop.is_set():
            for record in await consumer.getmany(timeout_ms=50):
                command = REGISTRY.decode(Envelope.from_bytes(record.value))
                if isinstance(command, CancelJob):
                    self.cancelled.add(command.job_id)
                    continue
                assert isinstance(command, GenerateImage)
                self.commands.append(command)
                task = asyncio.create_task(self._job(publisher, command))
                jobs.add(task)
                task.add_done_callback(jobs.discard)
        await consumer.stop()

    async def _job(self, publisher: EventPublisher, command: GenerateImage) -> None:
        job, spec = command.job_id, command.spec
        seq = 0

        async def emit(event: Event, topic: str = topics.REQUEST_EVENTS) -> None:
            nonlocal seq
            seq += 1
            await publisher.publish(topic, Envelope.wrap(event, aggregate_id=job, sequence=seq))

        self.generated.append(job)
        await emit(JobAccepted(job_id=job, spec=spec, created_at=command.created_at))
        if "forbidden" in spec.prompt:
            await emit(JobBlocked(job_id=job, stage="prompt", category="test", message="blocked by the test policy"))
            return
        lane = lane_for(spec.lane or spec.tier)
        await emit(JobQueued(job_id=job, lane=lane.tier, topic=lane.topic, partition=lane.partition_for(job)))
        await self.hold.wait()
        if job in self.cancelled:
            await emit(JobCancelled(job_id=job))
            return
        data = encode(np.full((spec.size, spec.size, 3), 200, np.uint8), spec.output_format)
        shown = preview_passes(spec.passes, spec.partial_images)
        for k in range(1, spec.passes + 1):
            await emit(JobProgressed(job_id=job, pass_index=k, total_passes=spec.passes))
            previews = [base64.b64encode(data).decode()] if k in shown else []
            progress = RenderProgressed(
                job_id=job, pass_index=k, total_passes=spec.passes, tokens=[], previews=previews
            )
            await publisher.publish(topics.RENDER_PROGRESS, Envelope.wrap(progress, aggregate_id=job))
        refs = []
        for i in range(spec.n):
            key = f"images/{job}/{i}.{spec.output_format}"
            info = await self.blobs.put(key, data, f"image/{spec.output_format}")
            tokens_key = f"tokens/{job}/{i}.u16"
            await self.blobs.put(tokens_key, pack_tokens(np.full((16, 16), i, np.int64)), "application/octet-stream")
            refs.append(
                ImageRef(
                    index=i,
                    image_id=f"img_{job}_{i}",
                    object_key=key,
                    tokens_key=tokens_key,
                    content_type=info.content_type,
                    size_bytes=info.size,
                    sha256=info.sha256,
                )
            )
        usage = Usage(
            input_tokens=spec.text_tokens, text_tokens=spec.text_tokens, image_tokens=0, output_tokens=256 * spec.n
        )
        await emit(JobCompleted(job_id=job, images=refs, usage=usage))


@dataclass
class FakeLaneOffsets:
    """Lane counts the test sets (in place of Kafka's offsets)."""

    counts: dict[str, LaneCounts] = field(default_factory=dict)

    async def read(self) -> dict[str, LaneCounts]:
        return dict(self.counts)


@dataclass
class GatewayUnderTest:
    app: FastAPI
    client: AsyncOpenAI
    http: httpx.AsyncClient
    pipeline: FakePipeline
    api_key: str
    lanes: FakeLaneOffsets


def key_for(account: str, tier: str = "pro") -> str:
    return mint(account, tier, new_key_id("k1"), SIGNING)


@asynccontextmanager
async def gateway_with(**overrides: object) -> AsyncIterator[GatewayUnderTest]:
    """A gateway on an in-memory broker with the fake pipeline, its settings changed by `overrides`."""
    broker = InMemoryBroker()
    blobs = InMemoryBlobStore()
    settings = GatewaySettings(
        signing_key="k1=unit-test-signing-key",
        sync_wait_s=5,
        stream_keepalive_s=0.2,
        reply_timeout_s=1,
        **overrides,  # type: ignore[arg-type]
    )
    lanes = FakeLaneOffsets()
    app = create_app(
        settings,
        producer=broker.producer(),
        consumer_factory=broker.consumer,
        documents=InMemoryDocumentStore(),
        blobs=blobs,
        lane_offsets=lanes,
    )
    pipeline = FakePipeline(broker, blobs)
    stop = asyncio.Event()
    async with app.router.lifespan_context(app):
        task = asyncio.create_task(pipeline.run(stop))
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")
        api_key = key_for("acct_owner")
        client = AsyncOpenAI(base_url="http://gateway/v1", api_key=api_key, http_client=http, max_retries=0)
        try:
            yield GatewayUnderTest(app, client, http, pipeline, api_key, lanes)
        finally:
            stop.set()
            await task
            await http.aclose()


@pytest.fixture
async def gateway() -> AsyncIterator[GatewayUnderTest]:
    async with gateway_with() as under_test:
        yield under_test
