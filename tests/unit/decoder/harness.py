"""What the decoder's service tests share: running a wired decoder, and checks for `eventually`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from libs.bus.memory import InMemoryBroker
from libs.lanes import lanes
from libs.runtime.service import ServiceRuntime, run_service
from tests.helpers import eventually

T = TypeVar("T")


def now(probe: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    """An async check for `eventually` from a plain function."""

    async def check() -> T:
        return probe()

    return check


def lane_broker() -> InMemoryBroker:
    """An in-memory broker whose render topics have every lane's partitions (infra/topics.yaml)."""
    counts: dict[str, int] = {}
    for lane in lanes().values():
        counts[lane.topic] = max(counts.get(lane.topic, 0), max(lane.partitions) + 1)
    return InMemoryBroker(counts)


@asynccontextmanager
async def serving(runtime: ServiceRuntime) -> AsyncIterator[ServiceRuntime]:
    """Runs a wired decoder until the block ends; yields once both its consumers are up."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(runtime, stop))
    try:
        # Started once both subscriptions have their consumer (the model loads before them).
        await eventually(now(lambda: len(runtime.consumers) == 2), 10, "the decoder started")
        yield runtime
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
