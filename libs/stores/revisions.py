"""Documents kept as an append-only chain of revisions: `<id>:<revision>` by insert only.

Why: a revision written by insert is a compare-and-set for free (a second writer of
the same revision gets "id taken"), and inserts and reads by id stay constant-time
on every MongoDB-compatible store. FerretDB v1 on SQLite, which runs darkroom
locally, scans the whole collection on every update, so state rewritten on each
event got slower as collections grew (see docs/operations.md).

The latest revision is found by reading upwards from the last one this process saw
(usually one read); a process that never saw the document starts from revision 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from libs.recent import RecentMap
from libs.stores.ports import Document, DocumentStore

_MEMORY = 100_000


def revision_id(doc_id: str, revision: int) -> str:
    """The stored id of one revision (zero-padded so ids sort by revision)."""
    return f"{doc_id}:{revision:010d}"


class RevisionLog:
    """Append-only revisions of documents in one collection."""

    def __init__(self, documents: DocumentStore, collection: str) -> None:
        self._docs = documents
        self._collection = collection
        self._known: RecentMap[str, int] = RecentMap(_MEMORY)

    async def latest(self, doc_id: str) -> tuple[int, Document | None]:
        """The latest revision number and its document ((0, None) when there is none)."""
        revision = self._known.get(doc_id) or 0
        current = await self._docs.get(self._collection, revision_id(doc_id, revision))
        while True:
            following = await self._docs.get(self._collection, revision_id(doc_id, revision + 1))
            if following is None:
                break
            revision, current = revision + 1, following
        if current is not None:
            self._known.put(doc_id, revision)
        return revision, _strip(current)

    async def append(self, doc_id: str, revision: int, doc: Mapping[str, Any]) -> bool:
        """Write revision `revision` (the latest plus one); False if another writer took it."""
        written = await self._docs.insert(self._collection, revision_id(doc_id, revision), doc)
        if written:
            self._known.put(doc_id, revision)
        return written


def _strip(doc: Document | None) -> Document | None:
    return None if doc is None else {k: v for k, v in doc.items() if not k.startswith("_")}
