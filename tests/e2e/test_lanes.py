"""End to end: API traffic has its own lane and decoder pool, so a consumer flood cannot hold it up.

Checked as an ordering property, not a timing one: with a flood of consumer jobs queued
before it, an api job completes while most of the flood still waits for the consumer pool.
"""

from __future__ import annotations

import asyncio
import uuid

from infra.stack import Stack
from libs.cli.accounts import create_account
from libs.settings import DEV_SIGNING_KEY
from tests.e2e.jobs import api, create_async, wait_done

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
