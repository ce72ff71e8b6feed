"""Small helpers for tests: polling instead of sleeping, a valid job spec and render job,
a scratch topic, a render job sent to its lane."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import openai

from infra.topics import TopicSpec, create_topics
from libs.bus.ports import Consumer, Producer, Record
from libs.events import Envelope
from libs.events.schemas import JobSpec, RenderJob
from libs.lanes import lane_for
from libs.stores.memory import InMemoryDocumentStore

T = TypeVar("T")


async def consume(consumer: Consumer, count: int, timeout_s: float = 30.0) -> list[Record]:
    """Fetch until `count` records arrived (or fail after `timeout_s`)."""
    records: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"got {len(records)} of {count} records within {timeout_s}s")
        records += await consumer.getmany(timeout_ms=200)
    return records


async def eventually(check: Callable[[], Awaitable[T | None]], timeout_s: float = 30.0, what: str = "") -> T:
    """Await `check` until it returns something truthy (or fail after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or check.__name__}")
        await asyncio.sleep(0.1)


def job_spec(**changes: Any) -> JobSpec:
    """A valid job spec: one low-quality 256x256 PNG of a pro account; `changes` override fields."""
    fields: dict[str, Any] = {
        "account_id": "acct",
        "tier": "pro",
        "prompt": "a red circle",
        "model": "darkroom-mini",
        "n": 1,
        "size": 256,
        "quality": "low",
        "passes": 4,
        "output_format": "png",
        "output_compression": 100,
        "background": "auto",
        "moderation": "auto",
        "seed": 1,
    }
    return JobSpec.model_validate(fields | changes)


async def scratch_topic(bootstrap: str, prefix: str, partitions: int) -> str:
    """Create a topic of its own on a real broker (`prefix` plus a random suffix); its name."""
    name = f"{prefix}.{uuid.uuid4().hex[:8]}"
    await create_topics(bootstrap, [TopicSpec(name, partitions, 1, {})])
    return name


def render_job(job_id: str, tier: str = "pro", **changes: Any) -> RenderJob:
    """A valid render job for the no-op model: one 64x64 PNG in 4 passes, its prompt its id;
    `changes` override fields."""
    fields: dict[str, Any] = {
        "job_id": job_id,
        "tier": tier,
        "account_id": f"acct-{tier}",
        "prompt": job_id,
        "model": "noop",
        "seed": 11,
        "n": 1,
        "passes": 4,
        "size": 64,
        "output_format": "png",
        "output_compression": 100,
        "background": "auto",
    }
    return RenderJob.model_validate(fields | changes)


async def send_to_lane(producer: Producer, job: RenderJob, partition: int | None = None) -> None:
    """Puts a render job on its tier's lane, as the requests service does (keyed by job id).

    Args:
        producer: Any producer (Kafka's or the in-memory broker's).
        job: The job.
        partition: A partition of the lane; the lane's own choice for the job when None.
    """
    lane = lane_for(job.tier)
    envelope = Envelope.wrap(job, aggregate_id=job.job_id, tier=job.tier)
    where = lane.partition_for(job.job_id) if partition is None else partition
    await producer.send(lane.topic, envelope.to_bytes(), key=job.job_id.encode(), partition=where)


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A Prometheus text page, parsed with prometheus-client's own parser:
    (sample name, its labels) -> value. A page that does not parse fails the test."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    """The value of the sample with this name and these labels (all of them), if any."""
    return samples.get((name, frozenset(labels.items())))


def count_reads(docs: InMemoryDocumentStore) -> list[str]:
    """The ids the store is asked for from now on (a list the test reads)."""
    reads: list[str] = []
    original_get = docs.get

    async def counting_get(collection: str, doc_id: str):  # type: ignore[no-untyped-def]
        reads.append(doc_id)
        return await original_get(collection, doc_id)

    docs.get = counting_get  # type: ignore[method-assign]
    return reads


def sdk_client(http: httpx.AsyncClient, api_key: str) -> openai.AsyncOpenAI:
    """The official SDK sending through `http` (an in-process gateway's ASGI transport), to
    its `/v1` API, without retries. The SDK annotates `http_client` as its own httpx2 client
    and takes httpx's as well (`openai._httpx2`)."""
    return openai.AsyncOpenAI(
        base_url=str(http.base_url.join("/v1")),
        api_key=api_key,
        http_client=http,  # type: ignore[arg-type]
        max_retries=0,
    )
