"""Helpers for end-to-end tests that follow jobs through every topic and store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
import pytest
from minio import Minio
from pymongo import MongoClient

from infra.stack import DEV_MINIO_PASSWORD, DEV_MINIO_USER, Stack
from libs import topics
from libs.bus.kafka import KafkaConsumer
from libs.bus.ports import Record
from libs.events import DecodeError, Envelope
from libs.jobs import TERMINAL, reported_passes
from libs.model.interface import unpack_tokens
from libs.runtime.wiring import minio_store
from libs.settings import MinioSettings
from libs.storage_plan import tokens_key

JOB_TOPICS = topics.with_api_copies(
    [
        topics.IMAGE_COMMANDS,
        topics.REQUEST_EVENTS,
        topics.RENDER_CONSUMER,
        topics.RENDER_API,
        topics.RENDER_CONTROL,
        topics.RENDER_PROGRESS,
        topics.SAFETY_CHECKS,
        topics.SAFETY_VERDICTS,
        topics.STORAGE_BLOBS,
        topics.STORAGE_EVENTS,
    ]
)
SLOW = {"prompt": "a blue square on grass", "n": 4, "size": "512x512", "quality": "high"}
"""A render slow enough to kill mid-way."""
JOB_TIMEOUT_S = 180.0


class Watch:
    """Every envelope on the job topics since the watch started, with when it was read."""

    def __init__(self, bootstrap: str, *, from_beginning: bool = False) -> None:
        reset = "earliest" if from_beginning else "latest"
        self._reader = KafkaConsumer(bootstrap, group=None, topics=JOB_TOPICS, auto_offset_reset=reset)
        self.seen: list[tuple[float, str, int, Envelope]] = []
        """(monotonic time read, topic, record size, envelope)."""
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._reader.start()
        # The first fetches fix the starting offsets, before the test makes any job.
        for _ in range(3):
            self._keep(await self._reader.getmany(timeout_ms=300))
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._reader.stop()

    async def _run(self) -> None:
        while True:
            self._keep(await self._reader.getmany(timeout_ms=200))

    def _keep(self, records: list[Record]) -> None:
        for record in records:
            try:
                envelope = Envelope.from_bytes(record.value)
            except DecodeError:
                continue  # garbage a test sent on purpose
            self.seen.append((time.monotonic(), record.topic, len(record.value), envelope))

    def of(self, job_id: str, event_type: str | None = None) -> list[Envelope]:
        return [e for _, _, _, e in self.seen if e.aggregate_id == job_id and event_type in (None, e.type)]

    def of_type(self, event_type: str) -> list[Envelope]:
        return [e for _, _, _, e in self.seen if e.type == event_type]

    def payloads(self, job_id: str, event_type: str) -> list[dict[str, Any]]:
        return [e.payload for e in self.of(job_id, event_type)]

    def reported_passes(self, job_id: str) -> list[int]:
        """The passes the job's decoders report (libs.jobs.reported_passes), by its first
        render job: the even ones, the last, those with previews or content checks."""
        job = self.payloads(job_id, "render.render_job")[0]
        return reported_passes(job["passes"], [*job["preview_passes"], *job["content_check_passes"]])

    def first_time(self, job_id: str, event_type: str, **fields: object) -> float:
        for at, _, _, e in self.seen:
            if (
                e.aggregate_id == job_id
                and e.type == event_type
                and all(e.payload.get(k) == v for k, v in fields.items())
            ):
                return at
        raise AssertionError(f"no {event_type} {fields} for {job_id}")

    async def until(self, what: str, check: Any, timeout_s: float = JOB_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)


@asynccontextmanager
async def watching(stack: Stack) -> AsyncIterator[Watch]:
    watch = Watch(stack.profile.kafka_bootstrap)
    await watch.start()
    try:
        yield watch
    finally:
        await watch.stop()


@asynccontextmanager
async def api(stack: Stack, key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=stack.profile.gateway_url, headers={"authorization": f"Bearer {key}"}, timeout=JOB_TIMEOUT_S
    ) as client:
        yield client


async def create_async(http: httpx.AsyncClient, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    created = await http.post("/v1/images/generations", json=body, headers={"prefer": "respond-async", **headers})
    assert created.status_code == 202, created.text
    job: dict[str, Any] = created.json()
    return job


async def wait_done(http: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        job: dict[str, Any] = (await http.get(f"/v1/images/jobs/{job_id}")).json()
        if job["status"] in TERMINAL:
            return job
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} still {job['status']} after {JOB_TIMEOUT_S}s")
        await asyncio.sleep(0.2)


def image_id_of(item: object) -> str:
    """The `image_id` of a response's data item: darkroom's extra field, which the SDK's
    `Image` type keeps as an extra attribute."""
    image_id = getattr(item, "image_id", None)
    assert isinstance(image_id, str), item
    return image_id


def stored_objects(stack: Stack, job_id: str) -> list[str]:
    client = Minio(stack.profile.minio_endpoint, DEV_MINIO_USER, DEV_MINIO_PASSWORD, secure=False)
    return sorted(str(o.object_name) for o in client.list_objects("darkroom-images", prefix=f"images/{job_id}/"))


def stored_tokens(stack: Stack, job_id: str, index: int = 0) -> np.ndarray:
    """The token grid storage kept for a job's image, read as the gateway reads it."""
    store = minio_store(MinioSettings(minio_endpoint=stack.profile.minio_endpoint))

    async def read() -> bytes:
        try:
            return await store.get(tokens_key(job_id, index))
        finally:
            await store.close()

    return unpack_tokens(asyncio.run(read()))


def image_documents(stack: Stack, job_id: str) -> int:
    client: MongoClient[dict[str, Any]] = MongoClient(stack.profile.mongo_url)
    try:
        return int(client["darkroom"]["images"].count_documents({"job_id": job_id}))
    finally:
        client.close()


def exactly_once(stack: Stack, watch: Watch, job_id: str, n: int) -> None:
    """The job completed once, with one stored image (object and document) per index."""
    [completed] = watch.payloads(job_id, "images.job_completed")
    assert sorted(ref["index"] for ref in completed["images"]) == list(range(n))
    # Each image's storing recorded once: by an event of its own, or (the image that completed
    # the job, when the content had been cleared before it) by the completion alone.
    stored = [p["image"]["index"] for p in watch.payloads(job_id, "images.job_image_stored")]
    assert len(stored) == len(set(stored)) and set(stored) <= set(range(n)) and len(stored) >= n - 1
    assert len(stored_objects(stack, job_id)) == n
    assert image_documents(stack, job_id) == n
