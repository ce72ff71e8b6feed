"""DocumentStore on PyMongo's AsyncMongoClient (MongoDB, or FerretDB locally).

Only the subset FerretDB v1 supports is used: replace/update with upsert, equality
and `$lt` finds, unique `_id`. The sequence guard of `put_if_newer` relies on the unique `_id`:
an upsert whose filter excludes the newer stored document tries to insert a second
document with the same id and fails with a duplicate-key error, which means "stale".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from libs.stores.ports import Document, StoreUnavailable

DUPLICATE_KEY = 11000


class MongoDocumentStore:
    """A DocumentStore over one MongoDB database."""

    def __init__(self, url: str, database: str, *, timeout_ms: int = 5000) -> None:
        self._client: AsyncMongoClient[Document] = AsyncMongoClient(
            url, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms, tz_aware=True
        )
        self._db = self._client[database]

    async def close(self) -> None:
        """Close the client's connections."""
        await self._client.close()

    async def ping(self) -> None:
        try:
            await self._db.command("ping")
        except PyMongoError as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def put(self, collection: str, doc_id: str, doc: Mapping[str, Any]) -> None:
        try:
            await self._db[collection].replace_one({"_id": doc_id}, {**doc, "_id": doc_id}, upsert=True)
        except PyMongoError as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def put_if_newer(self, collection: str, doc_id: str, doc: Mapping[str, Any], sequence: int) -> bool:
        try:
            result = await self._db[collection].replace_one(
                {"_id": doc_id, "$or": [{"_seq": {"$lt": sequence}}, {"_seq": {"$exists": False}}]},
                {**doc, "_id": doc_id, "_seq": sequence},
                upsert=True,
            )
        except DuplicateKeyError:
            return False
        except PyMongoError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return result.modified_count > 0 or result.upserted_id is not None

    async def insert(self, collection: str, doc_id: str, doc: Mapping[str, Any]) -> bool:
        try:
            await self._db[collection].insert_one({**doc, "_id": doc_id})
        except DuplicateKeyError:
            return False
        except PyMongoError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return True

    async def insert_many(self, collection: str, docs: Mapping[str, Mapping[str, Any]]) -> set[str]:
        if not docs:
            return set()
        try:
            batch = [{**doc, "_id": doc_id} for doc_id, doc in docs.items()]
            await self._db[collection].insert_many(batch, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(error.get("code") != DUPLICATE_KEY for error in errors):
                raise StoreUnavailable(str(exc)) from exc
            ids = list(docs)
            return set(ids) - {ids[error["index"]] for error in errors}
        except PyMongoError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return set(docs)

    async def get_many(self, collection: str, doc_ids: Sequence[str]) -> dict[str, Document]:
        if not doc_ids:
            return {}
        try:
            return {doc["_id"]: doc async for doc in self._db[collection].find({"_id": {"$in": list(doc_ids)}})}
        except PyMongoError as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def get(self, collection: str, doc_id: str) -> Document | None:
        try:
            return await self._db[collection].find_one({"_id": doc_id})
        except PyMongoError as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def find(
        self,
        collection: str,
        equals: Mapping[str, Any] | None = None,
        *,
        below: Mapping[str, Any] | None = None,
        sort: Sequence[tuple[str, int]] = (),
        limit: int = 0,
    ) -> list[Document]:
        query: dict[str, Any] = dict(equals or {})
        for field, bound in (below or {}).items():
            query[field] = {"$eq": query[field], "$lt": bound} if field in query else {"$lt": bound}
        try:
            cursor = self._db[collection].find(query)
            if sort:
                cursor = cursor.sort(list(sort))
            if limit:
                cursor = cursor.limit(limit)
            return [doc async for doc in cursor]
        except PyMongoError as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def delete(self, collection: str, doc_id: str) -> bool:
        try:
            result = await self._db[collection].delete_one({"_id": doc_id})
        except PyMongoError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return result.deleted_count > 0

    async def drop(self, collection: str) -> None:
        try:
            await self._db.drop_collection(collection)
        except PyMongoError as exc:
            raise StoreUnavailable(str(exc)) from exc
