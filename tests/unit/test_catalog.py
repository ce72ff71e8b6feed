"""The image catalog: each image written once per process, however many callers record it."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from libs.readmodels.catalog import IMAGE_HASHES, IMAGES, CatalogImage, ImageCatalog
from libs.stores.memory import InMemoryDocumentStore
from libs.stores.ports import StoreUnavailable


class CountedStore(InMemoryDocumentStore):
    """Counts insert attempts; slow, or away, when told to be."""

    def __init__(self) -> None:
        super().__init__()
        self.inserts: list[str] = []
        self.away = False
        self.delay_s = 0.0

    async def insert(self, collection: str, doc_id: str, doc: Mapping[str, Any]) -> bool:
        self.inserts.append(collection)
        await asyncio.sleep(self.delay_s)
        if self.away:
            raise StoreUnavailable("away")
        return await super().insert(collection, doc_id, doc)


def _image(index: int = 0) -> CatalogImage:
    return CatalogImage(
        image_id=f"img_job_1_{index}",
        account_id="acct_1",
        job_id="job_1",
        index=index,
        prompt="a cat",
        size=256,
        output_format="png",
        object_key=f"images/job_1/{index}.png",
        tokens_key=f"tokens/job_1/{index}.u16",
        sha256=f"{index:064d}",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        parent_image_id=None,
    )


async def test_an_image_recorded_twice_or_at_once_by_two_callers_is_written_once() -> None:
    store = CountedStore()
    catalog = ImageCatalog(store)
    store.delay_s = 0.01
    # The answer and the read model's fold of one job, at the same moment, then again.
    await asyncio.gather(catalog.record([_image(0), _image(1)]), catalog.record([_image(0), _image(1)]))
    await catalog.record([_image(0)])
    assert store.inserts == [IMAGES, IMAGE_HASHES] * 2
    assert await catalog.get("img_job_1_1") == _image(1)
    # Another process's catalog (nothing remembered) finds them there and changes nothing.
    await ImageCatalog(store).record([_image(0)])
    assert await catalog.get("img_job_1_0") == _image(0)


async def test_a_failed_write_fails_every_caller_waiting_on_it_and_is_written_again_later() -> None:
    store = CountedStore()
    catalog = ImageCatalog(store)
    store.away, store.delay_s = True, 0.01
    results = await asyncio.gather(catalog.record([_image()]), catalog.record([_image()]), return_exceptions=True)
    assert all(isinstance(result, StoreUnavailable) for result in results)
    assert store.inserts == [IMAGES]
    store.away = False
    await catalog.record([_image()])
    assert await catalog.get("img_job_1_0") == _image()


async def test_a_caller_cancelled_while_it_waits_leaves_the_write_to_the_others() -> None:
    store = CountedStore()
    catalog = ImageCatalog(store)
    store.delay_s = 0.05
    first = asyncio.create_task(catalog.record([_image()]))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(catalog.record([_image()]))
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert await catalog.get("img_job_1_0") == _image()
    assert store.inserts == [IMAGES, IMAGE_HASHES]
