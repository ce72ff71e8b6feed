"""The gateway's read model of finished images: who owns each, and its lineage.

Folded from the request events (a completed job lists its images, and its spec says
whose they are and what they were tweaked from), so the gateway answers
`GET /v1/images/{id}` and recognizes an uploaded darkroom image without asking
another service. Two collections, both written by insert (a redelivery changes
nothing) and read by id:

- `gateway_images`: one document per image id; an account's images are also listed
  from it, newest first by id (`img_<job id>_<index>`, and job ids are ULIDs);
- `gateway_image_hashes`: `<account id>:<sha256 of the file>` -> image id, so an
  upload of one's own darkroom image is recognized by its bytes.

A completed job's images are recorded twice in the gateway that answered it: by the answer
(the client may tweak them at once) and by the read model's fold. One `ImageCatalog` per
process remembers the images it recorded, and a second caller waits for a write under way,
so the store sees each image once per process instead of a second pair of inserts that fail.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from libs.events.schemas import BASE_VERSION
from libs.lanes import DEFAULT_MODEL
from libs.recent import RecentMap
from libs.stores.ports import DocumentStore

if TYPE_CHECKING:
    from libs.readmodels.view import JobView

IMAGES: Final = "gateway_images"
IMAGE_HASHES: Final = "gateway_image_hashes"
RECORDED_MEMORY: Final = 10_000
"""How many recorded images a process remembers, so recording one again costs no write."""


@dataclass(frozen=True)
class CatalogImage:
    """One finished image as the gateway knows it."""

    image_id: str
    account_id: str
    job_id: str
    index: int
    prompt: str
    size: int
    output_format: str
    object_key: str
    tokens_key: str
    sha256: str
    created_at: datetime
    parent_image_id: str | None
    model: str = DEFAULT_MODEL
    """The model that drew it (its token grid means something to that model only)."""
    version: str = BASE_VERSION
    """The version of the model that drew it."""

    def to_document(self) -> dict[str, Any]:
        """The stored document (the id is the document's key)."""
        return {k: v for k, v in self.__dict__.items() if k != "image_id"}

    @classmethod
    def from_document(cls, image_id: str, doc: dict[str, Any]) -> CatalogImage:
        """Read a stored document back."""
        # Documents written before images recorded their model lack it: the default drew them.
        fields = {k: doc[k] for k in cls.__dataclass_fields__ if k != "image_id" and k in doc}
        return cls(image_id=image_id, **fields)


def catalog_entries(state: JobView) -> list[CatalogImage]:
    """The images a completed job adds to the catalog (pure; none before it completed).

    Image i of a tweak was made from the job's edit source i % len(sources).
    """
    spec, sources = state.spec, state.spec.edits
    return [
        CatalogImage(
            image_id=ref.image_id,
            account_id=spec.account_id,
            job_id=state.job_id,
            index=ref.index,
            prompt=spec.prompt,
            size=spec.size,
            output_format=spec.output_format,
            object_key=ref.object_key,
            tokens_key=ref.tokens_key,
            sha256=ref.sha256,
            created_at=state.created_at,
            parent_image_id=sources[ref.index % len(sources)].parent_image_id if sources else None,
            model=spec.model,
            version=state.version or spec.version,
        )
        for ref in (state.images if state.status == "completed" else [])
    ]


class ImageCatalog:
    """Reads and writes the catalog collections."""

    def __init__(self, documents: DocumentStore) -> None:
        self._docs = documents
        self._recorded: RecentMap[str, bool] = RecentMap(RECORDED_MEMORY)
        self._writing: dict[str, asyncio.Future[None]] = {}

    async def record_job(self, state: JobView) -> None:
        """Add a job's images once it completed (nothing before): the one writer of both
        collections, for the read model's fold and the gateway that answered the job."""
        await self.record(catalog_entries(state))

    async def record(self, images: list[CatalogImage]) -> None:
        """Add images (idempotent: an image already recorded is left as it is).

        Returns once each is stored, whoever in this process wrote it; a write that failed
        (the store away) raises here for every caller that waited on it, and the next call
        writes it again.
        """
        for image in images:
            if image.image_id in self._recorded:
                continue
            write = self._writing.get(image.image_id)
            if write is None:
                write = asyncio.ensure_future(self._write(image))
                self._writing[image.image_id] = write
                write.add_done_callback(functools.partial(self._written, image.image_id))
            # Shielded: a caller cancelled meanwhile leaves the write to the others.
            await asyncio.shield(write)

    async def _write(self, image: CatalogImage) -> None:
        await self._docs.insert(IMAGES, image.image_id, image.to_document())
        await self._docs.insert(IMAGE_HASHES, f"{image.account_id}:{image.sha256}", {"image_id": image.image_id})

    def _written(self, image_id: str, write: asyncio.Future[None]) -> None:
        del self._writing[image_id]
        if not write.cancelled() and write.exception() is None:
            self._recorded.put(image_id, True)

    async def get(self, image_id: str) -> CatalogImage | None:
        """An image by id, whoever owns it (callers check ownership)."""
        doc = await self._docs.get(IMAGES, image_id)
        return None if doc is None else CatalogImage.from_document(image_id, doc)

    async def owned(self, account_id: str, limit: int, after: str | None = None) -> list[CatalogImage]:
        """The account's images, newest first (by id), starting after the image id `after`."""
        docs = await self._docs.find(
            IMAGES,
            {"account_id": account_id},
            below={"_id": after} if after is not None else None,
            sort=[("_id", -1)],
            limit=limit,
        )
        return [CatalogImage.from_document(str(doc["_id"]), doc) for doc in docs]

    async def children(self, account_id: str, image_id: str) -> list[CatalogImage]:
        """The account's images tweaked from `image_id`, newest first."""
        docs = await self._docs.find(
            IMAGES, {"account_id": account_id, "parent_image_id": image_id}, sort=[("_id", -1)]
        )
        return [CatalogImage.from_document(str(doc["_id"]), doc) for doc in docs]

    async def find_by_content(self, account_id: str, sha256: str) -> CatalogImage | None:
        """The account's own image whose file has this sha256, if any."""
        doc = await self._docs.get(IMAGE_HASHES, f"{account_id}:{sha256}")
        return None if doc is None else await self.get(str(doc["image_id"]))
