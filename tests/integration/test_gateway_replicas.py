"""Two gateway replicas on the real Kafka enforce one account's limit together.

Both apps run in this process with the real adapters (Kafka, FerretDB, MinIO), as two
`make up` gateways would. A policy published on the policy topic reaches both without
a restart; then requests alternate between them. Each replica learns of the other's
admissions from the image-command topic; the test waits for that (the replicas'
ledgers agree on the jobs in flight) before each next request, so the outcome is
exact: the fleet admits the account's limit once, not once per replica.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import httpx
import openai
import pytest
from fastapi import FastAPI
from openai import AsyncOpenAI

from infra.stack import DEV_MINIO_PASSWORD, DEV_MINIO_USER
from libs import topics
from libs.access import DEFAULT_POLICIES
from libs.apikeys import mint, new_key_id, parse_signing_keys
from libs.bus import EventPublisher
from libs.bus.kafka import KafkaProducer
from libs.cli.models import add_change, change, rollback_change, rollout_change
from libs.events import Envelope
from libs.events.schemas import TierPolicy, TierPolicyChanged
from libs.settings import DEV_SIGNING_KEY, GatewaySettings
from services.gateway.app import create_app
from services.gateway.limits import Limits
from tests.helpers import eventually, sdk_client

TIER = "plus"
ASYNC = {"Prefer": "respond-async"}


ACCOUNT = f"acct_it_{uuid.uuid4().hex[:10]}"


@dataclass
class Replica:
    app: FastAPI
    client: AsyncOpenAI

    @property
    def limits(self) -> Limits:
        limits: Limits = self.app.state.gateway.limits
        return limits


async def _publish_policy(bootstrap: str, policy: TierPolicy, replicas: list[Replica]) -> None:
    producer = KafkaProducer(bootstrap)
    await producer.start()
    try:
        change = TierPolicyChanged(tier=TIER, policy=policy, changed_by="integration-test")
        key = f"tier:{TIER}"
        await EventPublisher(producer).publish(topics.POLICIES, Envelope.wrap(change, aggregate_id=key), key=key)
    finally:
        await producer.stop()

    async def everywhere() -> bool:
        return all(r.limits.access.policy(TIER) == policy for r in replicas)

    await eventually(everywhere, 10, "both replicas to apply the policy")


@pytest.fixture
async def replicas(kafka_bootstrap: str, mongo_url: str, minio_endpoint: str) -> AsyncIterator[list[Replica]]:
    api_key = mint(ACCOUNT, TIER, new_key_id(), parse_signing_keys(DEV_SIGNING_KEY))
    async with AsyncExitStack() as stack:
        out = []
        for name in ("a", "b"):
            settings = GatewaySettings(
                kafka_bootstrap=kafka_bootstrap,
                mongo_url=mongo_url,
                minio_endpoint=minio_endpoint,
                minio_access_key=DEV_MINIO_USER,
                minio_secret_key=DEV_MINIO_PASSWORD,
                instance_id=f"gateway-it-{name}",
            )
            app = create_app(settings)
            await stack.enter_async_context(app.router.lifespan_context(app))
            http = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://gateway-{name}")
            )
            client = sdk_client(http, api_key)
            out.append(Replica(app, client))
        try:
            yield out
        finally:
            await _publish_policy(kafka_bootstrap, DEFAULT_POLICIES[TIER], out)


async def test_two_replicas_enforce_one_accounts_limit(kafka_bootstrap: str, replicas: list[Replica]) -> None:
    limit = 4
    policy = DEFAULT_POLICIES[TIER].model_copy(update={"requests_per_minute": limit, "concurrent_jobs": 100})
    await _publish_policy(kafka_bootstrap, policy, replicas)
    admitted: list[str] = []
    refused: dict[str, int] = {"a": 0, "b": 0}
    for i in range(2 * limit):
        name, replica = ("a", replicas[0]) if i % 2 == 0 else ("b", replicas[1])
        try:
            raw = await replica.client.images.with_raw_response.generate(
                prompt=f"a red circle {i}", quality="low", extra_headers=ASYNC
            )
        except openai.RateLimitError as error:
            assert error.code == "rate_limit_exceeded"
            assert error.response.headers["x-ratelimit-limit-requests"] == str(limit)
            assert int(error.response.headers["retry-after"]) >= 1
            refused[name] += 1
            continue
        assert raw.http_response.status_code == 202
        admitted.append(name)

        # Both ledgers have the job (one from its own admission, one from the command topic).
        async def synced() -> bool:
            now = time.time()
            return all(r.limits.ledger.in_flight(ACCOUNT, now) == len(admitted) for r in replicas)

        await eventually(synced, 10, "both replicas to see every admitted job")

    assert len(admitted) == limit, (admitted, refused)
    assert set(admitted) == {"a", "b"}
    assert refused["a"] > 0 and refused["b"] > 0


async def test_a_model_rollback_reaches_every_replica_within_a_second(
    kafka_bootstrap: str, replicas: list[Replica]
) -> None:
    """`darkroom models rollout` then `rollback` (the CLI's own code, on the real policy topic):
    both replicas route by each change. Prints the time from the rollback command to the
    last replica routing to the previous version (median of five)."""
    model = "darkroom-mini"
    version = f"v{uuid.uuid4().hex[:8]}"
    account = "acct_rollback_probe"

    def routed(to: str) -> bool:
        return all(r.limits.releases.route(model, account) == to for r in replicas)

    async def until(to: str) -> float:
        began = time.monotonic()
        await eventually(lambda: _async(routed(to)), 10, f"every replica routing to {to}")
        return time.monotonic() - began

    await asyncio.to_thread(change, kafka_bootstrap, lambda r: add_change(r, model, version, "builtin", "it"))
    seconds = []
    try:
        for _ in range(5):
            await asyncio.to_thread(change, kafka_bootstrap, lambda r: rollout_change(r, model, version, 100, "it"))
            await until(version)
            began = time.monotonic()
            await asyncio.to_thread(change, kafka_bootstrap, lambda r: rollback_change(r, model, "it", "it"))
            returned = time.monotonic() - began
            seconds.append((returned + await until("base"), returned))
    finally:
        if not routed("base"):
            await asyncio.to_thread(change, kafka_bootstrap, lambda r: rollback_change(r, model, "clean-up", "it"))
    total = statistics.median(s for s, _ in seconds)
    command = statistics.median(c for _, c in seconds)
    print(
        f"\nmodel rollback: median {total:.3f} s from the command to both replicas routing to the previous "
        f"version ({command:.3f} s of it the command itself); max {max(s for s, _ in seconds):.3f} s"
    )


async def _async(value: bool) -> bool:
    return value
