"""A gateway wired to the in-memory bus and stores, driven through the openai SDK.

Behind it the requests, safety, storage and decoder services run on the same broker and
stores (tests/unit/gateway/pipeline.py), so its jobs live the lifecycle the services decide.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from fastapi import FastAPI
from openai import AsyncOpenAI

from libs.apikeys import mint, new_key_id
from libs.bus.offsets import LaneCounts
from libs.lanes import models
from libs.settings import GatewaySettings
from libs.stores.memory import InMemoryBlobStore, InMemoryDocumentStore
from services.gateway.app import create_app
from tests.helpers import sdk_client
from tests.unit.gateway.pipeline import Pipeline, pipeline_broker, running_pipeline

SIGNING = {"k1": "unit-test-signing-key"}


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
    pipeline: Pipeline
    api_key: str
    lanes: FakeLaneOffsets


def key_for(account: str, tier: str = "pro") -> str:
    return mint(account, tier, new_key_id("k1"), SIGNING)


@asynccontextmanager
async def gateway_with(**overrides: object) -> AsyncIterator[GatewayUnderTest]:
    """A gateway on an in-memory broker with the services behind it, its settings changed by `overrides`."""
    broker = pipeline_broker()
    documents = InMemoryDocumentStore()
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
        documents=documents,
        blobs=blobs,
        lane_offsets=lanes,
    )
    served = [model for model in settings.models if model in models()]
    async with app.router.lifespan_context(app), running_pipeline(broker, documents, blobs, served) as pipeline:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")
        api_key = key_for("acct_owner")
        client = sdk_client(http, api_key)
        try:
            yield GatewayUnderTest(app, client, http, pipeline, api_key, lanes)
        finally:
            await http.aclose()


@pytest.fixture
async def gateway() -> AsyncIterator[GatewayUnderTest]:
    async with gateway_with() as under_test:
        yield under_test
