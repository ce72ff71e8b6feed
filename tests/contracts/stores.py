"""The document-store and blob-store contracts, run against both adapters of each."""

from __future__ import annotations

import asyncio
import hashlib
import urllib.request
import uuid

import pytest

from libs.stores.ports import BlobStore, DocumentStore


def _collection() -> str:
    return f"contract_{uuid.uuid4().hex[:12]}"


class DocumentStoreContract:
    """Subclasses supply the `documents` fixture."""

    async def test_put_then_get_returns_the_document(self, documents: DocumentStore) -> None:
        coll = _collection()
        await documents.put(coll, "a", {"name": "first", "n": 1, "tags": ["x"], "nested": {"k": "v"}})
        doc = await documents.get(coll, "a")
        assert doc == {"_id": "a", "name": "first", "n": 1, "tags": ["x"], "nested": {"k": "v"}}
        assert await documents.get(coll, "missing") is None

    async def test_put_replaces_the_whole_document(self, documents: DocumentStore) -> None:
        coll = _collection()
        await documents.put(coll, "a", {"old": True, "n": 1})
        await documents.put(coll, "a", {"n": 2})
        assert await documents.get(coll, "a") == {"_id": "a", "n": 2}

    async def test_put_if_newer_ignores_stale_and_repeated_sequences(self, documents: DocumentStore) -> None:
        coll = _collection()
        assert await documents.put_if_newer(coll, "job", {"status": "queued"}, 1)
        assert await documents.put_if_newer(coll, "job", {"status": "rendering"}, 3)
        assert not await documents.put_if_newer(coll, "job", {"status": "queued"}, 2)
        assert not await documents.put_if_newer(coll, "job", {"status": "rendering"}, 3)
        doc = await documents.get(coll, "job")
        assert doc is not None
        assert (doc["status"], doc["_seq"]) == ("rendering", 3)

    async def test_insert_creates_once(self, documents: DocumentStore) -> None:
        coll = _collection()
        assert await documents.insert(coll, "a", {"n": 1})
        assert not await documents.insert(coll, "a", {"n": 2})
        assert await documents.get(coll, "a") == {"_id": "a", "n": 1}

    async def test_insert_many_creates_only_the_new_ids(self, documents: DocumentStore) -> None:
        coll = _collection()
        assert await documents.insert(coll, "b", {"n": 0})
        created = await documents.insert_many(coll, {"a": {"n": 1}, "b": {"n": 2}, "c": {"n": 3}})
        assert created == {"a", "c"}
        assert await documents.get(coll, "b") == {"_id": "b", "n": 0}
        assert await documents.insert_many(coll, {}) == set()

    async def test_get_many_returns_the_existing_ones(self, documents: DocumentStore) -> None:
        coll = _collection()
        await documents.insert_many(coll, {"a": {"n": 1}, "b": {"n": 2}})
        assert await documents.get_many(coll, ["a", "b", "missing"]) == {
            "a": {"_id": "a", "n": 1},
            "b": {"_id": "b", "n": 2},
        }
        assert await documents.get_many(coll, []) == {}

    async def test_find_filters_sorts_and_limits(self, documents: DocumentStore) -> None:
        coll = _collection()
        for i, owner in enumerate(["ann", "bob", "ann", "ann"]):
            await documents.put(coll, f"d{i}", {"owner": owner, "n": i})
        found = await documents.find(coll, {"owner": "ann"}, sort=[("n", -1)], limit=2)
        assert [d["_id"] for d in found] == ["d3", "d2"]
        assert len(await documents.find(coll)) == 4

    async def test_find_below_pages_after_a_cursor(self, documents: DocumentStore) -> None:
        coll = _collection()
        for i, owner in enumerate(["ann", "bob", "ann", "ann", "ann"]):
            await documents.put(coll, f"img_{i:02d}", {"owner": owner, "n": i})
        await documents.put(coll, "img_99", {"n": 99})  # no owner: never below anything

        # Newest first, two per page, each page below the last id of the one before.
        first = await documents.find(coll, {"owner": "ann"}, sort=[("_id", -1)], limit=2)
        assert [d["_id"] for d in first] == ["img_04", "img_03"]
        after = await documents.find(coll, {"owner": "ann"}, below={"_id": "img_03"}, sort=[("_id", -1)], limit=2)
        assert [d["_id"] for d in after] == ["img_02", "img_00"]
        # Strictly below; numbers compare as numbers; a field and a bound of another type never match.
        assert [d["_id"] for d in await documents.find(coll, below={"n": 2}, sort=[("n", 1)])] == ["img_00", "img_01"]
        assert await documents.find(coll, below={"n": "3"}) == []
        # One field can be both equal to a value and below a bound.
        both = await documents.find(coll, {"owner": "ann"}, below={"owner": "bob", "_id": "img_02"})
        assert [d["_id"] for d in both] == ["img_00"]

    async def test_delete_and_drop(self, documents: DocumentStore) -> None:
        coll = _collection()
        await documents.put(coll, "a", {"n": 1})
        await documents.put(coll, "b", {"n": 2})
        assert await documents.delete(coll, "a")
        assert not await documents.delete(coll, "a")
        await documents.drop(coll)
        assert await documents.find(coll) == []

    async def test_ping_answers(self, documents: DocumentStore) -> None:
        await documents.ping()


class BlobStoreContract:
    """Subclasses supply the `blobs` fixture."""

    async def test_put_then_get_and_stat(self, blobs: BlobStore) -> None:
        key = f"contract/{uuid.uuid4().hex}.png"
        data = b"\x89PNG fake image bytes" * 100
        info = await blobs.put(key, data, "image/png")
        assert (info.size, info.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        assert await blobs.get(key) == data
        stat = await blobs.stat(key)
        assert stat is not None
        assert (stat.size, stat.sha256, stat.content_type) == (len(data), info.sha256, "image/png")

    async def test_writing_a_key_again_overwrites(self, blobs: BlobStore) -> None:
        key = f"contract/{uuid.uuid4().hex}"
        await blobs.put(key, b"one", "application/octet-stream")
        await blobs.put(key, b"two", "application/octet-stream")
        assert await blobs.get(key) == b"two"

    async def test_missing_objects(self, blobs: BlobStore) -> None:
        key = f"contract/{uuid.uuid4().hex}"
        assert await blobs.stat(key) is None
        with pytest.raises(KeyError):
            await blobs.get(key)
        await blobs.delete(key)  # absent is fine

    async def test_delete_removes(self, blobs: BlobStore) -> None:
        key = f"contract/{uuid.uuid4().hex}"
        await blobs.put(key, b"x", "text/plain")
        await blobs.delete(key)
        assert await blobs.stat(key) is None

    async def test_url_names_the_object(self, blobs: BlobStore) -> None:
        key = f"contract/{uuid.uuid4().hex}.txt"
        await blobs.put(key, b"hello", "text/plain")
        url = await blobs.url(key, 3600)
        assert key in url
        if url.startswith("http"):

            def fetch() -> bytes:
                with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback store
                    return bytes(response.read())

            assert await asyncio.to_thread(fetch) == b"hello"
