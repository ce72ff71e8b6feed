"""The storage service's handler: a StoreImage in, objects and a document written, ImageStored out."""

from __future__ import annotations

import asyncio
import logging

from libs import topics
from libs.bus import EventPublisher, RejectedMessage, TransientError
from libs.events import Envelope
from libs.events.schemas import StoreImage
from libs.storage_plan import IMAGES, TOKENS_CONTENT_TYPE, InvalidImage, plan_storage
from libs.stores.ports import BlobStore, DocumentStore, StoreUnavailable

log = logging.getLogger(__name__)


class StorageHandlers:
    """Stores rendered images idempotently (deterministic keys, overwrite on retry)."""

    def __init__(self, publisher: EventPublisher, documents: DocumentStore, blobs: BlobStore) -> None:
        """Wires the handler.

        Args:
            publisher: Publishes ImageStored.
            documents: The metadata store (collection "images").
            blobs: The object store.
        """
        self._publisher = publisher
        self._documents = documents
        self._blobs = blobs

    async def on_store_image(self, command: StoreImage, envelope: Envelope) -> None:
        """Write the image, its token grid and its document, then announce them.

        Raises:
            RejectedMessage: The command can never be stored (dead-lettered).
            TransientError: A store is unreachable (retried until it is back).
        """
        try:
            plan = plan_storage(command)
        except InvalidImage as exc:
            raise RejectedMessage(f"cannot store image {command.index} of {command.job_id}: {exc}") from exc
        try:
            # Objects before the document, the document before the event: whoever sees the
            # event (or the document) can read everything it points to.
            await asyncio.gather(
                self._blobs.put(plan.object_key, plan.image, command.content_type),
                self._blobs.put(plan.tokens_key, plan.tokens, TOKENS_CONTENT_TYPE),
            )
            # By insert (grouped with other jobs' in one write, see the bootstrap): an update
            # costs FerretDB a scan of the collection. A document already there (a redelivery,
            # or the same image rendered again after a lost decoder) is replaced.
            if not await self._documents.insert(IMAGES, plan.image_id, plan.document):
                await self._documents.put(IMAGES, plan.image_id, plan.document)
        except StoreUnavailable as exc:
            raise TransientError(f"storing {plan.object_key}: {exc}") from exc
        log.debug("stored %s (%d bytes)", plan.object_key, plan.stored.size_bytes)
        await self._publisher.publish(
            topics.STORAGE_EVENTS, Envelope.wrap(plan.stored, aggregate_id=command.job_id, caused_by=envelope)
        )
