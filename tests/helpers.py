"""Small helpers for tests: polling instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from libs.bus.ports import Consumer, Record

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
