"""In-memory document and blob stores for unit tests."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from libs.stores.ports import BlobInfo, Document


class InMemoryDocumentStore:
    """Dict-backed DocumentStore."""

    def __init__(self) -> None:
        self._collections: dict[str, dict[str, Document]] = {}

    async def ping(self) -> None:
        return None

    async def put(self, collection: str, doc_id: str, doc: Mapping[str, Any]) -> None:
        self._collections.setdefault(collection, {})[doc_id] = {**copy.deepcopy(dict(doc)), "_id": doc_id}

    async def put_if_newer(self, collection: str, doc_id: str, doc: Mapping[str, Any], sequence: int) -> bool:
        current = self._collections.get(collection, {}).get(doc_id)
        if current is not None and current.get("_seq", -1) >= sequence:
            return False
        await self.put(collection, doc_id, {**doc, "_seq": sequence})
        return True

    async def insert(self, collection: str, doc_id: str, doc: Mapping[str, Any]) -> bool:
        if doc_id in self._collections.get(collection, {}):
            return False
        await self.put(collection, doc_id, doc)
        return True

    async def insert_many(self, collection: str, docs: Mapping[str, Mapping[str, Any]]) -> set[str]:
        return {doc_id for doc_id, doc in docs.items() if await self.insert(collection, doc_id, doc)}

    async def get_many(self, collection: str, doc_ids: Sequence[str]) -> dict[str, Document]:
        found = {doc_id: await self.get(collection, doc_id) for doc_id in doc_ids}
        return {doc_id: doc for doc_id, doc in found.items() if doc is not None}

    async def get(self, collection: str, doc_id: str) -> Document | None:
        doc = self._collections.get(collection, {}).get(doc_id)
        return copy.deepcopy(doc) if doc is not None else None

    async def find(
        self,
        collection: str,
        equals: Mapping[str, Any] | None = None,
        *,
        below: Mapping[str, Any] | None = None,
        sort: Sequence[tuple[str, int]] = (),
        limit: int = 0,
    ) -> list[Document]:
        docs = [
            copy.deepcopy(d)
            for d in self._collections.get(collection, {}).values()
            if all(_field(d, k) == v for k, v in (equals or {}).items())
            and all(_less(_field(d, k), v) for k, v in (below or {}).items())
        ]
        for field, direction in reversed(list(sort)):
            docs.sort(key=lambda d: d.get(field), reverse=direction < 0)  # type: ignore[arg-type,return-value]
        return docs[:limit] if limit else docs

    async def delete(self, collection: str, doc_id: str) -> bool:
        return self._collections.get(collection, {}).pop(doc_id, None) is not None

    async def drop(self, collection: str) -> None:
        self._collections.pop(collection, None)


class InMemoryBlobStore:
    """Dict-backed BlobStore."""

    def __init__(self) -> None:
        self._objects: dict[str, tuple[bytes, str]] = {}

    async def ping(self) -> None:
        return None

    async def put(self, key: str, data: bytes, content_type: str) -> BlobInfo:
        self._objects[key] = (bytes(data), content_type)
        return BlobInfo(key, len(data), hashlib.sha256(data).hexdigest(), content_type)

    async def get(self, key: str) -> bytes:
        return self._objects[key][0]

    async def stat(self, key: str) -> BlobInfo | None:
        if key not in self._objects:
            return None
        data, content_type = self._objects[key]
        return BlobInfo(key, len(data), hashlib.sha256(data).hexdigest(), content_type)

    async def delete(self, key: str) -> None:
        self._objects.pop(key, None)

    async def url(self, key: str, expires_s: int) -> str:
        return f"memory://{key}?expires={expires_s}"


def _less(value: Any, bound: Any) -> bool:
    """`value < bound` as MongoDB's `$lt` decides it: values of different types (or none) never match."""
    if value is None or isinstance(value, bool) != isinstance(bound, bool):
        return False
    try:
        return bool(value < bound)
    except TypeError:
        return False


def _field(doc: Mapping[str, Any], path: str) -> Any:
    """A field by dotted path ("state.status"), as MongoDB reads it; None when absent."""
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value
