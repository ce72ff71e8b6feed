"""Small helpers for tests: polling instead of sleeping, a valid job spec, a scratch topic."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from infra.topics import TopicSpec, create_topics
from libs.bus.ports import Consumer, Record
from libs.events.schemas import JobSpec

T = TypeVar("T")


async def consume(consumer: Consumer, count: int, timeout_s: float = 30.0) -> list[Record]:
    """Fetch until `count` records arrived (or fail after `timeout_s`)."""
    records: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"got {len(records)} of {count} records within {timeout_s}s")
        records += await consumer.getmany(timeout_ms=200)
    return records


async def eventually(check: Callable[[], Awaitable[T | None]], timeout_s: float = 30.0, what: str = "") -> T:
    """Await `check` until it returns something truthy (or fail after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or check.__name__}")
        await asyncio.sleep(0.1)


def job_spec(**changes: Any) -> JobSpec:
    """A valid job spec: one low-quality 256x256 PNG of a pro account; `changes` override fields."""
    fields: dict[str, Any] = {
        "account_id": "acct",
        "tier": "pro",
        "prompt": "a red circle",
        "model": "darkroom-mini",
        "n": 1,
        "size": 256,
        "quality": "low",
        "passes": 4,
        "output_format": "png",
        "output_compression": 100,
        "background": "auto",
        "moderation": "auto",
        "seed": 1,
    }
    return JobSpec.model_validate(fields | changes)


async def scratch_topic(bootstrap: str, prefix: str, partitions: int) -> str:
    """Create a topic of its own on a real broker (`prefix` plus a random suffix); its name."""
    name = f"{prefix}.{uuid.uuid4().hex[:8]}"
    await create_topics(bootstrap, [TopicSpec(name, partitions, 1, {})])
    return name
