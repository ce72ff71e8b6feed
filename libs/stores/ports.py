"""Ports for the document store (MongoDB) and the blob store (MinIO / S3).

Both are small on purpose: darkroom's collections are projections of event streams,
so the store needs idempotent writes keyed by id (and a sequence guard), point
reads, simple queries (equality, and "below" for cursor paging) and a drop for rebuilds. The in-memory adapters back
unit tests; tests/contracts/ runs one suite against both adapters of each port.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Document = dict[str, Any]


class StoreUnavailable(Exception):
    """The store cannot be reached; the caller should retry later."""


class DocumentStore(Protocol):
    """Documents by `_id` in named collections."""

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""
        ...

    async def put(self, collection: str, doc_id: str, doc: Mapping[str, Any]) -> None:
        """Insert or replace the document with this id (idempotent)."""
        ...

    async def put_if_newer(self, collection: str, doc_id: str, doc: Mapping[str, Any], sequence: int) -> bool:
        """Write the document only if `sequence` is above the stored one's `_seq`.

        Projections use this so that replays and redeliveries change nothing.

        Returns:
            True if written, False if the stored document is as new or newer.
        """
        ...

    async def insert(self, collection: str, doc_id: str, doc: Mapping[str, Any]) -> bool:
        """Create the document only if no document has this id.

        Returns:
            True if created, False if the id was taken (the store is unchanged).
        """
        ...

    async def insert_many(self, collection: str, docs: Mapping[str, Mapping[str, Any]]) -> set[str]:
        """Create each document (by id) that does not exist yet, in one round trip.

        Returns:
            The ids created; an id that was taken leaves its stored document unchanged.
        """
        ...

    async def get(self, collection: str, doc_id: str) -> Document | None:
        """The document with this id, or None."""
        ...

    async def get_many(self, collection: str, doc_ids: Sequence[str]) -> dict[str, Document]:
        """The documents with these ids that exist, by id, in one round trip."""
        ...

    async def find(
        self,
        collection: str,
        equals: Mapping[str, Any] | None = None,
        *,
        below: Mapping[str, Any] | None = None,
        sort: Sequence[tuple[str, int]] = (),
        limit: int = 0,
    ) -> list[Document]:
        """Documents whose fields equal the `equals` values, optionally sorted and limited.

        Args:
            collection: The collection.
            equals: Field (dotted path) -> the value it must equal.
            below: Field -> a value it must be strictly less than (a page after a cursor:
                `{"_id": last_id}` with `sort=[("_id", -1)]`); a document without the
                field, or with a value of another type, does not match.
            sort: (field, 1 or -1) pairs, the first the major key.
            limit: At most this many documents; 0: all.
        """
        ...

    async def delete(self, collection: str, doc_id: str) -> bool:
        """Delete a document; True if it existed."""
        ...

    async def drop(self, collection: str) -> None:
        """Drop a whole collection (projection rebuilds)."""
        ...


@dataclass(frozen=True)
class BlobInfo:
    """What was stored: the key, its size and content hash."""

    key: str
    size: int
    sha256: str
    content_type: str


class BlobStore(Protocol):
    """Objects by key in one bucket."""

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""
        ...

    async def put(self, key: str, data: bytes, content_type: str) -> BlobInfo:
        """Write an object; writing the same key again overwrites (idempotent)."""
        ...

    async def get(self, key: str) -> bytes:
        """Read an object; KeyError if absent."""
        ...

    async def stat(self, key: str) -> BlobInfo | None:
        """Size and hash of an object, or None if absent."""
        ...

    async def delete(self, key: str) -> None:
        """Remove an object (absent is fine)."""
        ...

    async def url(self, key: str, expires_s: int) -> str:
        """A link that reads the object until it expires."""
        ...
