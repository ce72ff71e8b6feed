"""`darkroom rebuild`: drop the MongoDB read models and rebuild them from the topics.

The read models are projections of event streams, written only by idempotent, keyed
writes, so replaying the streams from the beginning through the same code gives the
same documents:

- `gateway_jobs` (gateway) from `darkroom.requests.events`, kept forever: each job's
  revision 0 as the gateway seeded it from `JobAccepted`, then a revision per request
  event that changes what the job shows (`libs.readmodels.jobs.JobProjection`, the
  gateway's own projection), and with it the gateway's image catalog (`gateway_images`,
  `gateway_image_hashes`) from each completed job;
- `gateway_idempotency` (gateway) from the `idempotency_key` each `JobAccepted` records
  (`libs.readmodels.idempotency`, the claims the gateway writes);
- `images` (storage) from `darkroom.storage.blobs` (`libs.storage_plan.plan_storage`, the
  function the storage service stores by).

The image metadata can only come back for the images still retained on the blobs topic
(7 days by default); the objects themselves stay in MinIO. Services may keep running:
every write is keyed by id and revision, so what a live consumer and the rebuild both
write is written once. The requests service's `request_jobs` is not a read model but
its process manager's store (state, handled ids, outbox): it is not dropped.
"""

from __future__ import annotations

from collections import Counter

from libs import topics
from libs.bus.logreader import KafkaLogReader, read_to_end
from libs.bus.ports import Record
from libs.events import REGISTRY, DecodeError, Envelope
from libs.events.schemas import JobAccepted, StoreImage
from libs.readmodels.catalog import IMAGE_HASHES
from libs.readmodels.catalog import IMAGES as CATALOG_IMAGES
from libs.readmodels.idempotency import KEYS, claim_document, claim_id, request_fingerprint
from libs.readmodels.jobs import JOBS, JobProjection
from libs.readmodels.view import accepted_seed
from libs.storage_plan import IMAGES, InvalidImage, plan_storage
from libs.stores.mongo import MongoDocumentStore
from libs.stores.ports import DocumentStore

CLIENT_ID = "darkroom-rebuild"
READ_TIMEOUT_S = 600.0
READ_MODELS = (JOBS, KEYS, IMAGES, CATALOG_IMAGES, IMAGE_HASHES)


class Rebuilder:
    """Applies replayed records to the read models (the same writes the services make)."""

    def __init__(self, documents: DocumentStore) -> None:
        self._docs = documents
        self._jobs = JobProjection(documents)
        self.counts: Counter[str] = Counter()

    async def drop(self) -> None:
        """Drops every read model."""
        for collection in READ_MODELS:
            await self._docs.drop(collection)

    async def __call__(self, record: Record) -> None:
        try:
            envelope = Envelope.from_bytes(record.value)
            if REGISTRY.get(envelope.type) is None:
                return
            event = REGISTRY.decode(envelope)
        except DecodeError:
            return  # what the services dead-lettered, the rebuild skips too
        if record.topic in (topics.REQUEST_EVENTS, topics.REQUEST_EVENTS_API):
            if isinstance(event, JobAccepted):
                await self._accepted(event)
            await self._jobs(envelope, record)
            self.counts[JOBS] += 1
        elif record.topic in (topics.STORAGE_BLOBS, topics.STORAGE_BLOBS_API) and isinstance(event, StoreImage):
            try:
                plan = plan_storage(event)
            except InvalidImage:
                return
            await self._docs.put(IMAGES, plan.image_id, plan.document)
            self.counts[IMAGES] += 1

    async def _accepted(self, accepted: JobAccepted) -> None:
        spec = accepted.spec
        await self._jobs.seed(accepted_seed(accepted))
        if spec.idempotency_key is not None:
            doc_id = claim_id(spec.account_id, spec.idempotency_key)
            claim = claim_document(spec.account_id, accepted.job_id, accepted.created_at, request_fingerprint(spec))
            await self._docs.put(KEYS, doc_id, claim)
            self.counts[KEYS] += 1


async def rebuild(bootstrap: str, mongo_url: str, database: str, timeout_s: float = READ_TIMEOUT_S) -> dict[str, int]:
    """Drops the read models and replays the topics into them.

    Returns:
        Records applied per collection.

    Raises:
        TimeoutError: The topics were not read to their end in time.
    """
    documents = MongoDocumentStore(mongo_url, database)
    rebuilder = Rebuilder(documents)
    replayed = topics.with_api_copies([topics.REQUEST_EVENTS, topics.STORAGE_BLOBS])
    reader = KafkaLogReader(bootstrap, replayed, client_id=CLIENT_ID)
    try:
        await rebuilder.drop()
        await reader.start()
        try:
            await read_to_end(reader, rebuilder, timeout_s=timeout_s)
        finally:
            await reader.stop()
    finally:
        await documents.close()
    return {collection: rebuilder.counts[collection] for collection in READ_MODELS}
