"""Group commit for inserts: many callers' inserts written by one `insert_many`.

Why: on FerretDB (and MongoDB) a write's cost is mostly per request (the wire round
trip, the transaction, the fsync), not per document. A service that handles many jobs
at once (the requests service's revisions, the gateway's read model) inserts one small
document per input; grouped, a burst of inputs costs one write instead of one each.

How: the first insert starts a write at once, so a lone caller waits no longer than
before; inserts that arrive while a write is in flight queue up and go together in the
next one. Nothing waits on a timer. Each caller still learns whether its own document
was written (False: its id was taken, as `DocumentStore.insert` says), and a store that
is away fails every insert of the group with `StoreUnavailable`, as it would have alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from libs.stores.ports import Document, DocumentStore, StoreUnavailable

MAX_GROUP = 500
"""Documents per write at most (a bigger burst goes in several writes)."""


@dataclass(eq=False)
class _Pending:
    doc_id: str
    doc: Mapping[str, Any]
    future: asyncio.Future[bool]


class GroupedInserts:
    """A DocumentStore whose `insert` calls are grouped; every other call goes straight through.

    Args:
        store: The store written to.
        max_group: Documents per `insert_many` at most.
    """

    def __init__(self, store: DocumentStore, max_group: int = MAX_GROUP) -> None:
        self._store = store
        self._max_group = max_group
        self._queued: dict[str, list[_Pending]] = {}
        self._writer: asyncio.Task[None] | None = None

    async def insert(self, collection: str, doc_id: str, doc: Mapping[str, Any]) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queued.setdefault(collection, []).append(_Pending(doc_id, doc, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queued())
        return await future

    async def _write_queued(self) -> None:
        while self._queued:
            collection, pending = next(iter(self._queued.items()))
            group, rest = pending[: self._max_group], pending[self._max_group :]
            if rest:
                self._queued[collection] = rest
            else:
                del self._queued[collection]
            await self._write(collection, group)

    async def _write(self, collection: str, group: list[_Pending]) -> None:
        # The first of two inserts of one id in a group is the one written, as it would be
        # had they come one after the other.
        first: dict[str, _Pending] = {}
        for item in group:
            first.setdefault(item.doc_id, item)
        try:
            written = await self._store.insert_many(collection, {i: p.doc for i, p in first.items()})
        except StoreUnavailable as exc:
            for item in group:
                if not item.future.done():
                    item.future.set_exception(StoreUnavailable(str(exc)))
            return
        except BaseException as exc:  # a bug or a cancellation: every caller learns of it
            for item in group:
                if not item.future.done():
                    item.future.set_exception(exc)
            raise
        for item in group:
            if not item.future.done():
                item.future.set_result(first[item.doc_id] is item and item.doc_id in written)

    # -- everything else goes straight to the store -----------------------------------------------

    async def ping(self) -> None:
        await self._store.ping()

    async def put(self, collection: str, doc_id: str, doc: Mapping[str, Any]) -> None:
        await self._store.put(collection, doc_id, doc)

    async def put_if_newer(self, collection: str, doc_id: str, doc: Mapping[str, Any], sequence: int) -> bool:
        return await self._store.put_if_newer(collection, doc_id, doc, sequence)

    async def insert_many(self, collection: str, docs: Mapping[str, Mapping[str, Any]]) -> set[str]:
        return await self._store.insert_many(collection, docs)

    async def get(self, collection: str, doc_id: str) -> Document | None:
        return await self._store.get(collection, doc_id)

    async def get_many(self, collection: str, doc_ids: Sequence[str]) -> dict[str, Document]:
        return await self._store.get_many(collection, doc_ids)

    async def find(
        self,
        collection: str,
        equals: Mapping[str, Any] | None = None,
        *,
        below: Mapping[str, Any] | None = None,
        sort: Sequence[tuple[str, int]] = (),
        limit: int = 0,
    ) -> list[Document]:
        return await self._store.find(collection, equals, below=below, sort=sort, limit=limit)

    async def delete(self, collection: str, doc_id: str) -> bool:
        return await self._store.delete(collection, doc_id)

    async def drop(self, collection: str) -> None:
        await self._store.drop(collection)
