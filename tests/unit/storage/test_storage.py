"""The storage service on the in-memory broker and stores."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest

from libs import topics
from libs.bus.memory import InMemoryBroker
from libs.events import REGISTRY, Envelope
from libs.events.schemas import DeadLetter, ImageStored, StoreImage
from libs.runtime.service import run_service
from libs.settings import StorageSettings
from libs.storage_plan import InvalidImage, plan_storage
from libs.stores.memory import InMemoryBlobStore, InMemoryDocumentStore
from libs.stores.ports import BlobInfo, StoreUnavailable
from services.storage.bootstrap import bootstrap
from tests.helpers import eventually

IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
TOKENS = bytes(512)
CREATED = datetime(2025, 3, 25, 12, 0, 0, 123000, tzinfo=UTC)


def _command(**changes: object) -> StoreImage:
    fields: dict[str, object] = {
        "job_id": "job_01jqabc",
        "index": 1,
        "account_id": "acct_7",
        "prompt": "a red circle",
        "model": "darkroom-mini",
        "seed": 42,
        "size": 256,
        "output_format": "png",
        "content_type": "image/png",
        "data": base64.b64encode(IMAGE).decode(),
        "tokens": base64.b64encode(TOKENS).decode(),
        "created_at": CREATED,
        **changes,
    }
    return StoreImage.model_validate(fields)


class FlakyBlobStore(InMemoryBlobStore):
    """An object store that is unreachable for its first `failures` writes (unit tests only)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.attempts = 0

    async def put(self, key: str, data: bytes, content_type: str) -> BlobInfo:
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("minio: connection refused")
        return await super().put(key, data, content_type)


@asynccontextmanager
async def running(
    broker: InMemoryBroker, documents: InMemoryDocumentStore, blobs: InMemoryBlobStore
) -> AsyncIterator[None]:
    runtime = bootstrap(
        StorageSettings(heartbeat_interval_s=60),
        producer=broker.producer(),
        consumer_factory=broker.consumer,
        documents=documents,
        blobs=blobs,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(runtime, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _send(broker: InMemoryBroker, command: StoreImage) -> Envelope:
    envelope = Envelope.wrap(command, aggregate_id=command.job_id)
    await broker.producer().send(topics.STORAGE_BLOBS, envelope.to_bytes(), key=command.job_id.encode())
    return envelope


def _stored(broker: InMemoryBroker) -> list[tuple[bytes | None, Envelope, ImageStored]]:
    out = []
    for record in broker.records(topics.STORAGE_EVENTS):
        envelope = Envelope.from_bytes(record.value)
        out.append((record.key, envelope, REGISTRY.decode_as(envelope, ImageStored)))
    return out


async def _events(broker: InMemoryBroker, count: int) -> list[tuple[bytes | None, Envelope, ImageStored]]:
    async def enough() -> list[tuple[bytes | None, Envelope, ImageStored]] | None:
        events = _stored(broker)
        return events if len(events) >= count else None

    return await eventually(enough, 10, f"{count} ImageStored")


async def test_an_image_is_stored_with_its_tokens_document_and_event() -> None:
    broker, documents, blobs = InMemoryBroker(), InMemoryDocumentStore(), InMemoryBlobStore()
    async with running(broker, documents, blobs):
        cause = await _send(broker, _command())
        [(key, envelope, stored)] = await _events(broker, 1)

    digest = hashlib.sha256(IMAGE).hexdigest()
    # The objects.
    assert await blobs.get("images/job_01jqabc/1.png") == IMAGE
    assert await blobs.get("tokens/job_01jqabc/1.u16") == TOKENS
    info = await blobs.stat("images/job_01jqabc/1.png")
    assert info is not None and (info.sha256, info.content_type) == (digest, "image/png")
    # The document.
    doc = await documents.get("images", "img_job_01jqabc_1")
    assert doc == {
        "_id": "img_job_01jqabc_1",
        "account_id": "acct_7",
        "job_id": "job_01jqabc",
        "index": 1,
        "prompt": "a red circle",
        "model": "darkroom-mini",
        "version": "base",
        "seed": 42,
        "size": 256,
        "output_format": "png",
        "content_type": "image/png",
        "object_key": "images/job_01jqabc/1.png",
        "tokens_key": "tokens/job_01jqabc/1.u16",
        "size_bytes": len(IMAGE),
        "sha256": digest,
        "created_at": CREATED,
        "parent_image_id": None,
    }
    # The event, keyed and caused as the job's.
    assert stored == ImageStored(
        job_id="job_01jqabc",
        index=1,
        image_id="img_job_01jqabc_1",
        object_key="images/job_01jqabc/1.png",
        tokens_key="tokens/job_01jqabc/1.u16",
        content_type="image/png",
        size_bytes=len(IMAGE),
        sha256=digest,
    )
    assert key == b"job_01jqabc"
    assert (envelope.aggregate_id, envelope.causation_id) == ("job_01jqabc", cause.event_id)


async def test_a_redelivered_command_changes_nothing() -> None:
    broker, documents, blobs = InMemoryBroker(), InMemoryDocumentStore(), InMemoryBlobStore()
    command = _command(index=0, output_format="jpeg", content_type="image/jpeg")
    async with running(broker, documents, blobs):
        await _send(broker, command)
        [first] = await _events(broker, 1)
        doc = await documents.get("images", "img_job_01jqabc_0")
        objects = dict(blobs._objects)
        await _send(broker, command)
        second = (await _events(broker, 2))[1]

    assert second[2] == first[2]  # the same ImageStored content
    assert await documents.get("images", "img_job_01jqabc_0") == doc
    assert await documents.find("images") == [doc]
    assert blobs._objects == objects and sorted(objects) == ["images/job_01jqabc/0.jpeg", "tokens/job_01jqabc/0.u16"]


async def test_a_store_outage_delays_the_image_but_loses_nothing() -> None:
    broker, documents, blobs = InMemoryBroker(), InMemoryDocumentStore(), FlakyBlobStore(failures=2)
    async with running(broker, documents, blobs):
        await _send(broker, _command())
        [(_, _, stored)] = await _events(broker, 1)

    assert blobs.attempts == 4  # two refused, then the image and the tokens
    assert await blobs.get(stored.object_key) == IMAGE
    assert await documents.get("images", stored.image_id) is not None
    assert broker.records(topics.DEAD_LETTERS) == []


async def test_a_command_that_can_never_be_stored_is_dead_lettered() -> None:
    broker, documents, blobs = InMemoryBroker(), InMemoryDocumentStore(), InMemoryBlobStore()
    async with running(broker, documents, blobs):
        await _send(broker, _command(data="not base64!"))

        async def letters() -> list[DeadLetter]:
            return [
                REGISTRY.decode_as(Envelope.from_bytes(r.value), DeadLetter)
                for r in broker.records(topics.DEAD_LETTERS)
            ]

        [letter] = await eventually(letters, 10, "a dead letter")
    assert letter.error_type == "RejectedMessage" and "base64" in letter.reason
    assert _stored(broker) == [] and await documents.find("images") == []


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"job_id": "../etc"}, "job id"),
        ({"index": -1}, "index"),
        ({"output_format": "p/ng"}, "output format"),
        ({"tokens": "%%%"}, "tokens"),
        ({"data": ""}, "empty"),
    ],
)
def test_unstorable_commands(changes: dict[str, object], problem: str) -> None:
    with pytest.raises(InvalidImage, match=problem):
        plan_storage(_command(**changes))


def test_the_plan_is_a_function_of_the_command() -> None:
    assert plan_storage(_command()) == plan_storage(_command())


async def test_a_tweaked_image_records_its_parent() -> None:
    plan = plan_storage(_command(parent_image_id="img_job_01jqpar_0"))
    assert plan.document["parent_image_id"] == "img_job_01jqpar_0"
