"""End to end: nothing lost, nothing duplicated, when decoders die and clients cancel.

These tests kill and restart real service processes of the e2e stack. A watcher reads
every job topic from the moment it starts, so each test can check the whole event trail
of its job: which attempts ran, from which pass, what was stored, and how often.

The renders here are slow on purpose (4 images of 512x512, 12 passes: about half a
second per pass on a CPU), so a decoder can be killed between two passes.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from minio import Minio
from pymongo import MongoClient

from infra.stack import DEV_MINIO_PASSWORD, DEV_MINIO_USER, Stack
from libs import topics
from libs.bus.kafka import KafkaConsumer
from libs.cli.accounts import create_account
from libs.events import Envelope
from libs.settings import DEV_SIGNING_KEY

JOB_TOPICS = [
    topics.IMAGE_COMMANDS,
    topics.REQUEST_EVENTS,
    topics.RENDER_CONSUMER,
    topics.RENDER_CONTROL,
    topics.RENDER_PROGRESS,
    topics.SAFETY_CHECKS,
    topics.SAFETY_VERDICTS,
    topics.STORAGE_BLOBS,
    topics.STORAGE_EVENTS,
]
SLOW = {"prompt": "a blue square on grass", "n": 4, "size": "512x512", "quality": "high"}
"""A render slow enough to kill mid-way."""
JOB_TIMEOUT_S = 180.0


class Watch:
    """Every envelope on the job topics since the watch started, with when it was read."""

    def __init__(self, bootstrap: str) -> None:
        self._reader = KafkaConsumer(bootstrap, group=None, topics=JOB_TOPICS, auto_offset_reset="latest")
        self.seen: list[tuple[float, str, int, Envelope]] = []
        """(monotonic time read, topic, record size, envelope)."""
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._reader.start()
        # The first fetches fix the starting offsets, before the test makes any job.
        for _ in range(3):
            await self._reader.getmany(timeout_ms=300)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._reader.stop()

    async def _run(self) -> None:
        while True:
            for record in await self._reader.getmany(timeout_ms=200):
                envelope = Envelope.from_bytes(record.value)
                self.seen.append((time.monotonic(), record.topic, len(record.value), envelope))

    def of(self, job_id: str, event_type: str | None = None) -> list[Envelope]:
        return [e for _, _, _, e in self.seen if e.aggregate_id == job_id and event_type in (None, e.type)]

    def payloads(self, job_id: str, event_type: str) -> list[dict[str, Any]]:
        return [e.payload for e in self.of(job_id, event_type)]

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


@pytest.fixture(scope="module")
def api_key(stack: Stack) -> str:
    stack.up_infra()
    stack.up_services()
    email = f"durable-{uuid.uuid4().hex[:10]}@example.com"
    account = asyncio.run(create_account(stack.profile.kafka_bootstrap, email, "pro", DEV_SIGNING_KEY))
    return str(account["api_key"])


@asynccontextmanager
async def api(stack: Stack, key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=stack.profile.gateway_url, headers={"authorization": f"Bearer {key}"}, timeout=JOB_TIMEOUT_S
    ) as client:
        yield client


async def _create_async(http: httpx.AsyncClient, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    created = await http.post("/v1/images/generations", json=body, headers={"prefer": "respond-async", **headers})
    assert created.status_code == 202, created.text
    job: dict[str, Any] = created.json()
    return job


async def _wait_done(http: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        job: dict[str, Any] = (await http.get(f"/v1/images/jobs/{job_id}")).json()
        if job["status"] in ("completed", "failed", "blocked", "cancelled"):
            return job
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} still {job['status']} after {JOB_TIMEOUT_S}s")
        await asyncio.sleep(0.2)


def _stored_objects(stack: Stack, job_id: str) -> list[str]:
    client = Minio(stack.profile.minio_endpoint, DEV_MINIO_USER, DEV_MINIO_PASSWORD, secure=False)
    return sorted(str(o.object_name) for o in client.list_objects("darkroom-images", prefix=f"images/{job_id}/"))


def _image_documents(stack: Stack, job_id: str) -> int:
    client: MongoClient[dict[str, Any]] = MongoClient(stack.profile.mongo_url)
    try:
        return int(client["darkroom"]["images"].count_documents({"job_id": job_id}))
    finally:
        client.close()


def _exactly_once(stack: Stack, watch: Watch, job_id: str, n: int) -> None:
    """The job completed once, with one stored image (object and document) per index."""
    assert len(watch.of(job_id, "images.job_completed")) == 1
    stored = [p["image"]["index"] for p in watch.payloads(job_id, "images.job_image_stored")]
    assert sorted(stored) == list(range(n))
    assert len(_stored_objects(stack, job_id)) == n
    assert _image_documents(stack, job_id) == n


async def test_a_decoder_killed_mid_render_resumes_from_its_last_checkpoint(running: Stack, api_key: str) -> None:
    seed = 11
    async with api(running, api_key) as http, watching(running) as watch:
        # The uninterrupted render, for comparison.
        reference = await _create_async(http, SLOW | {"seed": seed})
        reference = await _wait_done(http, reference["id"])
        assert reference["status"] == "completed", reference

        job = await _create_async(http, SLOW | {"seed": seed})
        job_id = job["id"]

        def passes() -> list[int]:
            return [p["pass_index"] for p in watch.payloads(job_id, "render.render_progressed")]

        await watch.until("pass 3 of the render", lambda: max(passes(), default=0) >= 3)
        running.proc("decoder").stop(timeout_s=0, sig=signal.SIGKILL)
        killed_at = time.monotonic()
        last_before_kill = max(passes())
        assert last_before_kill < 12, "the render ended before the decoder was killed"
        await asyncio.to_thread(running.up_services)

        done = await _wait_done(http, job_id)
        assert done["status"] == "completed", done

        # The job was dispatched again once, and resumed from the last pass reported.
        starts = watch.payloads(job_id, "render.render_started")
        assert [(s["attempt"], s["pass_index"]) for s in starts] == [(0, 0), (1, last_before_kill)]
        [requeued] = watch.payloads(job_id, "images.job_requeued")
        assert (requeued["attempt"], requeued["resume_pass"]) == (1, last_before_kill)
        assert sorted(set(passes())) == list(range(1, 13))
        assert all(p > last_before_kill for p in passes()[passes().index(last_before_kill) + 1 :])

        # The same images as the uninterrupted render, each stored exactly once.
        assert [d["b64_json"] for d in done["data"]] == [d["b64_json"] for d in reference["data"]]
        _exactly_once(running, watch, job_id, 4)

        resumed_at = watch.first_time(job_id, "render.render_started", attempt=1)
        checkpoints = [
            size for _, _, size, e in watch.seen if e.aggregate_id == job_id and e.type == "render.render_progressed"
        ]
        median = sorted(checkpoints)[len(checkpoints) // 2]
        per_topic = Counter(topic for _, topic, _, e in watch.seen if e.aggregate_id == job_id)
        print(
            f"\nFIGURES decoder killed after pass {last_before_kill}/12: resumed {resumed_at - killed_at:.1f}s later"
            f"\nFIGURES events of the resumed job: {sum(per_topic.values())} ({dict(per_topic)})"
            f"\nFIGURES events of the uninterrupted job: {len(watch.of(reference['id']))}"
            f"\nFIGURES checkpoint message (4 images, no preview): median {median} bytes;"
            " token grid 512 bytes packed, 684 in base64, per image"
        )


async def test_a_cancelled_render_stops_at_the_next_pass_and_a_queued_one_never_starts(
    running: Stack, api_key: str
) -> None:
    async with api(running, api_key) as http, watching(running) as watch:
        rendering = await _create_async(http, SLOW | {"seed": 21})
        queued = await _create_async(http, SLOW | {"seed": 22})
        await watch.until(
            "the first job rendering",
            lambda: len(watch.of(rendering["id"], "render.render_progressed")) >= 2,
        )
        # The decoder renders one job at a time: the second waits in its lane.
        assert watch.of(queued["id"], "render.render_started") == []

        cancelled = await http.delete(f"/v1/images/jobs/{queued['id']}")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        stopped = await http.post(f"/v1/images/jobs/{rendering['id']}/cancel")
        assert stopped.status_code == 200, stopped.text
        body = stopped.json()
        assert body["status"] == "cancelled" and body["error"]["code"] == "job_cancelled"

        for job_id in (rendering["id"], queued["id"]):
            await watch.until(f"{job_id} stopped", lambda j=job_id: watch.of(j, "render.render_stopped"))  # type: ignore[misc]
        [stop] = watch.payloads(rendering["id"], "render.render_stopped")
        assert stop["reason"] == "aborted" and 0 < stop["pass_index"] < 12
        [never] = watch.payloads(queued["id"], "render.render_stopped")
        assert (never["reason"], never["pass_index"]) == ("aborted", 0)
        assert watch.of(queued["id"], "render.render_started") == []
        assert watch.of(queued["id"], "render.render_progressed") == []
        for job_id in (rendering["id"], queued["id"]):
            assert watch.of(job_id, "storage.store_image") == []
            assert (await http.get(f"/v1/images/jobs/{job_id}")).json()["status"] == "cancelled"

        # Cancelling again answers the cancelled job; an unknown job is a 404.
        again = await http.post(f"/v1/images/jobs/{rendering['id']}/cancel")
        assert again.status_code == 200 and again.json()["status"] == "cancelled"
        unknown = await http.post("/v1/images/jobs/job_nope/cancel")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


async def test_an_idempotency_key_returns_the_same_job_for_the_same_account(running: Stack, api_key: str) -> None:
    key = uuid.uuid4().hex
    body = {"prompt": "a purple heart", "quality": "low", "seed": 5}
    other = await create_account(running.profile.kafka_bootstrap, f"idem-{key[:8]}@example.com", "pro", DEV_SIGNING_KEY)
    async with (
        api(running, api_key) as http,
        api(running, str(other["api_key"])) as other_http,
        watching(running) as watch,
    ):
        first = await _create_async(http, body, **{"idempotency-key": key})
        second = await _create_async(http, body, **{"idempotency-key": key})
        assert second["id"] == first["id"]
        elsewhere = await _create_async(other_http, body, **{"idempotency-key": key})
        assert elsewhere["id"] != first["id"]
        # A synchronous retry with the key answers with the same job's images.
        sync = await http.post("/v1/images/generations", json=body, headers={"idempotency-key": key})
        assert sync.status_code == 200, sync.text
        done = await _wait_done(http, first["id"])
        assert sync.json()["data"][0]["b64_json"] == done["data"][0]["b64_json"]
        # One command and one job for the three requests with the key.
        assert len(watch.of(first["id"], "images.generate_image")) == 1
        assert len(watch.of(first["id"], "images.job_accepted")) == 1
