"""End to end: API traffic has its own lane and decoder pool, so a consumer flood cannot hold it up.

Checked as an ordering property, not a timing one: with a flood of consumer jobs queued
before it, an api job completes while most of the flood still waits for the consumer pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid

import httpx
import openai

from infra.stack import Stack
from libs.cli.accounts import create_account
from libs.settings import DEV_SIGNING_KEY
from tests.e2e.jobs import api, create_async, wait_done
from tests.helpers import eventually

FLOOD_ACCOUNTS = 3
JOBS_PER_ACCOUNT = 6
"""Within the pro tier's 8 concurrent jobs per account."""


async def _key(stack: Stack, tier: str) -> str:
    email = f"lanes-{uuid.uuid4().hex[:10]}@example.com"
    account = await create_account(stack.profile.kafka_bootstrap, email, tier, DEV_SIGNING_KEY)
    return str(account["api_key"])


async def test_a_flood_in_the_consumer_lanes_does_not_hold_up_api_jobs(running: Stack) -> None:
    flood_keys = [await _key(running, "pro") for _ in range(FLOOD_ACCOUNTS)]
    api_key = await _key(running, "api")
    flood: list[tuple[str, str]] = []
    for key in flood_keys:
        async with api(running, key) as http:
            for _ in range(JOBS_PER_ACCOUNT):
                job = await create_async(http, {"prompt": "a green star on grass", "quality": "medium"})
                flood.append((key, job["id"]))

    async with api(running, api_key) as http:
        job = await create_async(http, {"prompt": "a red circle", "quality": "low", "seed": 1})
        done = await wait_done(http, job["id"])
    assert done["status"] == "completed", done

    async def status(key: str, job_id: str) -> str:
        async with api(running, key) as http:
            return str((await http.get(f"/v1/images/jobs/{job_id}")).json()["status"])

    statuses = await asyncio.gather(*(status(key, job_id) for key, job_id in flood))
    unfinished = [s for s in statuses if s not in ("completed", "blocked")]
    assert len(unfinished) >= len(flood) // 3, f"the api job waited behind the consumer flood: {statuses}"

    # The flood itself is only delayed: every job of it is rendered to its end (the built-in
    # model's drawing may still be blocked by the content check: that too is an end).
    for key, job_id in flood:
        async with api(running, key) as http:
            assert (await wait_done(http, job_id))["status"] in ("completed", "blocked")


async def test_the_api_path_has_a_gateway_of_its_own_that_still_serves_any_key(running: Stack) -> None:
    # Phase 1: the api path's gateway (DARKROOM_TRAFFIC=api) beside the stack's, on the API's
    # own address, as `*API_PROCESSES=1` runs it.
    split = Stack(dataclasses.replace(running.profile, api_processes=True))
    split.start_service("gateway", instance="gateway-api")
    try:

        async def listening() -> bool | None:
            with contextlib.suppress(httpx.HTTPError):
                async with httpx.AsyncClient(base_url=split.profile.api_url, timeout=2) as http:
                    return (await http.get("/healthz")).status_code in (200, 503) or None
            return None

        await eventually(listening, 90, "gateway-api listening")
        api_key, pro_key = await _key(running, "api"), await _key(running, "pro")

        # Phase 2: an api job streams its partial images: this gateway reads the api copies
        # of the request events and render progress.
        client = openai.AsyncOpenAI(base_url=f"{split.profile.api_url}/v1", api_key=api_key, max_retries=0)
        stream = await client.images.generate(
            prompt="a red circle", stream=True, partial_images=2, quality="medium", extra_body={"seed": 1}
        )
        events = [event async for event in stream]
        partial, completed = "image_generation.partial_image", "image_generation.completed"
        assert [e.type for e in events] == [partial, partial, completed]

        # Phase 3: a consumer-tier key sent to the API's address is still served: its job's
        # events travel on the consumer topics this gateway does not read, so it follows the
        # job through the read model instead.
        consumer = openai.AsyncOpenAI(base_url=f"{split.profile.api_url}/v1", api_key=pro_key, max_retries=0)
        result = await consumer.images.generate(prompt="a red circle", quality="low", extra_body={"seed": 1})
        assert result.data and result.data[0].b64_json
    finally:
        split.proc("gateway-api").stop()
