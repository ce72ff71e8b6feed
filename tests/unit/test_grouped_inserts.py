"""Group commit: concurrent inserts go out in one insert_many, each caller learns its own outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from libs.stores.grouped import GroupedInserts
from libs.stores.memory import InMemoryDocumentStore
from libs.stores.ports import StoreUnavailable


class CountingStore(InMemoryDocumentStore):
    """The in-memory store, counting insert_many calls and able to be away or slow."""

    def __init__(self) -> None:
        super().__init__()
        self.groups: list[list[str]] = []
        self.away = False
        self.gate: asyncio.Event | None = None

    async def insert_many(self, collection: str, docs: Mapping[str, Mapping[str, Any]]) -> set[str]:
        self.groups.append(list(docs))
        if self.gate is not None:
            await self.gate.wait()
        if self.away:
            raise StoreUnavailable("connection refused")
        return await super().insert_many(collection, docs)


async def test_a_lone_insert_is_written_at_once_and_a_burst_waits_for_one_write() -> None:
    store = CountingStore()
    grouped = GroupedInserts(store)
    assert await grouped.insert("c", "a", {"v": 1})
    assert store.groups == [["a"]]

    store.gate = asyncio.Event()
    first = asyncio.create_task(grouped.insert("c", "b", {"v": 2}))
    await asyncio.sleep(0.01)  # "b" is being written: the next ones queue
    burst = [asyncio.create_task(grouped.insert("c", f"x{i}", {"v": i})) for i in range(5)]
    await asyncio.sleep(0.01)
    store.gate.set()
    assert await first and all(await asyncio.gather(*burst))
    assert store.groups[1:] == [["b"], [f"x{i}" for i in range(5)]]
    assert (await store.get("c", "x3") or {})["v"] == 3


async def test_each_caller_learns_whether_its_own_id_was_taken() -> None:
    store = CountingStore()
    grouped = GroupedInserts(store)
    await store.insert("c", "taken", {"v": 0})
    results = await asyncio.gather(
        grouped.insert("c", "taken", {"v": 1}),
        grouped.insert("c", "new", {"v": 2}),
        grouped.insert("c", "new", {"v": 3}),  # the same id twice in one group: the first wins
    )
    assert list(results) == [False, True, False]
    assert (await store.get("c", "new") or {})["v"] == 2
    assert len(store.groups) == 1


async def test_a_store_that_is_away_fails_every_insert_of_the_group() -> None:
    store = CountingStore()
    store.away = True
    grouped = GroupedInserts(store)
    outcomes = await asyncio.gather(grouped.insert("c", "a", {}), grouped.insert("c", "b", {}), return_exceptions=True)
    assert all(isinstance(o, StoreUnavailable) for o in outcomes)
    store.away = False
    assert await grouped.insert("c", "a", {})  # nothing was half-written


async def test_groups_are_per_collection_and_bounded() -> None:
    store = CountingStore()
    grouped = GroupedInserts(store, max_group=2)
    await asyncio.gather(*(grouped.insert("c" if i % 2 else "d", str(i), {}) for i in range(6)))
    assert sorted(len(g) for g in store.groups) == [1, 1, 2, 2]


@pytest.mark.parametrize("method", ["get", "delete"])
async def test_reads_and_other_writes_go_straight_through(method: str) -> None:
    store = CountingStore()
    grouped = GroupedInserts(store)
    await grouped.put("c", "a", {"v": 1})
    result = await getattr(grouped, method)("c", "a")
    assert result
    assert store.groups == []
