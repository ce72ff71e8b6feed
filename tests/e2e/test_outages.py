"""End to end: outages of MinIO, FerretDB and Kafka, a storage crash, redeliveries,
dead letters and rebuilt projections. After each, nothing is lost and nothing duplicated:
every job completes once, with one object and one document per image.

The outages are real: the tests stop and start the infrastructure processes of the e2e
stack (and SIGKILL a service). The waits here are the outages' lengths, not assertions.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from typing import Any

import httpx
import pytest
from aiokafka import TopicPartition as AIOTopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pymongo import MongoClient

from infra.stack import Stack
from libs import topics
from libs.bus.kafka import KafkaConsumer, KafkaProducer
from libs.cli.__main__ import main as cli
from tests.e2e.jobs import JOB_TOPICS, Watch, api, create_async, exactly_once, wait_done, watching

QUICK = {"prompt": "a red circle in the centre", "quality": "low"}
INPUT_TOPICS = [t for t in JOB_TOPICS if t != topics.REQUEST_EVENTS]
"""Every topic a service consumes job messages from."""


async def _batch(http: httpx.AsyncClient, count: int, first_seed: int) -> list[str]:
    return [(await create_async(http, QUICK | {"seed": first_seed + i}))["id"] for i in range(count)]


async def _all_completed_once(stack: Stack, http: httpx.AsyncClient, watch: Watch, job_ids: list[str]) -> None:
    for job_id in job_ids:
        done = await wait_done(http, job_id)
        assert done["status"] == "completed", done
    for job_id in job_ids:
        exactly_once(stack, watch, job_id, 1)


async def _settled(bootstrap: str, group: str, topic_names: list[str]) -> None:
    """Waits until the consumer group has committed every record of the topics."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    reader = KafkaConsumer(bootstrap, group=None, topics=topic_names)
    await admin.start()
    await reader.start()
    try:
        client = reader._consumer  # partitions and end offsets are not on the bus port
        for _ in range(600):
            tps = [AIOTopicPartition(t, p) for t in topic_names for p in sorted(client.partitions_for_topic(t) or ())]
            committed = await admin.list_consumer_group_offsets(group)
            ends = await client.end_offsets(tps) if tps else {}
            if tps and all((committed[tp].offset if tp in committed else 0) >= ends[tp] for tp in tps):
                return
            await asyncio.sleep(0.1)
        pytest.fail(f"group {group} did not catch up with {topic_names}")
    finally:
        await reader.stop()
        await admin.close()


def _collection(stack: Stack, name: str) -> list[dict[str, Any]]:
    client: MongoClient[dict[str, Any]] = MongoClient(stack.profile.mongo_url, tz_aware=True)
    try:
        return sorted(client["darkroom"][name].find({}), key=lambda doc: str(doc["_id"]))
    finally:
        client.close()


async def test_every_message_of_a_job_delivered_twice_changes_nothing(running: Stack, api_key: str) -> None:
    bootstrap = running.profile.kafka_bootstrap
    async with api(running, api_key) as http, watching(running) as watch:
        [job_id] = await _batch(http, 1, 300)
        before = await wait_done(http, job_id)
        assert before["status"] == "completed"
        await _settled(bootstrap, "requests", [topics.STORAGE_EVENTS, topics.RENDER_PROGRESS, topics.SAFETY_VERDICTS])
        request_events = (
            len(watch.of(job_id, "images.job_completed")),
            len([e for _, topic, _, e in watch.seen if topic == topics.REQUEST_EVENTS and e.aggregate_id == job_id]),
        )

        # Every message any service consumed for the job, delivered a second time, unchanged.
        again = [
            (topic, e) for _, topic, _, e in list(watch.seen) if topic in INPUT_TOPICS and e.aggregate_id == job_id
        ]
        producer = KafkaProducer(bootstrap)
        await producer.start()
        try:
            for topic, envelope in again:
                await producer.send(topic, envelope.to_bytes(), key=job_id.encode())
        finally:
            await producer.stop()
        # The redelivered render job renders again: wait for its images to reach storage and back.
        await watch.until("the redelivered render stored", lambda: len(watch.of(job_id, "storage.image_stored")) >= 3)
        await _settled(bootstrap, "requests", [topics.IMAGE_COMMANDS, topics.STORAGE_EVENTS, topics.RENDER_PROGRESS])

        after = (await http.get(f"/v1/images/jobs/{job_id}")).json()
        assert after == before
        assert request_events == (
            len(watch.of(job_id, "images.job_completed")),
            len([e for _, topic, _, e in watch.seen if topic == topics.REQUEST_EVENTS and e.aggregate_id == job_id]),
        )
        exactly_once(running, watch, job_id, 1)


async def test_minio_down_for_20_seconds_delays_a_batch_and_loses_nothing(running: Stack, api_key: str) -> None:
    async with api(running, api_key) as http, watching(running) as watch:
        job_ids = await _batch(http, 4, 400)
        running.proc("minio").stop()
        await asyncio.sleep(20)
        pending = [j for j in job_ids if not watch.of(j, "images.job_completed")]
        await asyncio.to_thread(running.up_infra)
        assert pending, "every job completed before MinIO stopped: the outage tested nothing"
        await _all_completed_once(running, http, watch, job_ids)


async def test_storage_killed_while_writing_stores_each_image_once(running: Stack, api_key: str) -> None:
    async with api(running, api_key) as http, watching(running) as watch:
        running.proc("minio").stop()  # storage takes the image and keeps retrying its write
        [job_id] = await _batch(http, 1, 500)
        await watch.until("the image handed to storage", lambda: watch.of(job_id, "storage.store_image"))
        running.proc("storage").stop(timeout_s=0, sig=signal.SIGKILL)
        await asyncio.to_thread(running.up_infra)
        await asyncio.to_thread(running.up_services)
        await _all_completed_once(running, http, watch, [job_id])


async def test_ferretdb_down_delays_a_batch_and_loses_nothing(running: Stack, api_key: str) -> None:
    async with api(running, api_key) as http, watching(running) as watch:
        job_ids = await _batch(http, 3, 600)
        running.proc("ferretdb").stop()
        await asyncio.sleep(10)
        await asyncio.to_thread(running.up_infra)
        await _all_completed_once(running, http, watch, job_ids)


async def test_a_kafka_restart_during_a_batch_is_survived_by_every_service(running: Stack, api_key: str) -> None:
    async with api(running, api_key) as http:
        async with watching(running) as watch:
            job_ids = await _batch(http, 4, 700)
            await watch.until("the batch rendering", lambda: watch.of(job_ids[0], "render.render_progressed"))
        running.proc("kafka").stop()
        await asyncio.to_thread(running.up_infra)
        for job_id in job_ids:
            done = await wait_done(http, job_id)
            assert done["status"] == "completed", done
        # Each job's whole trail, read back from the beginning of the topics.
        trail = Watch(running.profile.kafka_bootstrap, from_beginning=True)
        await trail.start()
        try:
            await trail.until("every job's trail", lambda: all(trail.of(j, "images.job_completed") for j in job_ids))
            await trail.until(
                "every job's stored image", lambda: all(trail.of(j, "storage.image_stored") for j in job_ids)
            )
            for job_id in job_ids:
                exactly_once(running, trail, job_id, 1)
        finally:
            await trail.stop()
        # A new job goes through every service after the restart.
        [after] = await _batch(http, 1, 800)
        assert (await wait_done(http, after))["status"] == "completed"


async def test_dead_letters_are_listed_and_replayed(
    running: Stack, api_key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = running.profile.kafka_bootstrap
    marker = uuid.uuid4().hex
    producer = KafkaProducer(bootstrap)
    await producer.start()
    try:
        await producer.send(topics.IMAGE_COMMANDS, f"not json {marker}".encode(), key=marker.encode())
    finally:
        await producer.stop()

    async def letters_with_marker() -> list[str]:
        capsys.readouterr()
        assert await asyncio.to_thread(cli, ["dlq", "list", "--service", "requests", "--bootstrap", bootstrap]) == 0
        listing = capsys.readouterr().out
        return [line for line in listing.splitlines() if marker in line]

    for _ in range(100):
        if await letters_with_marker():
            break
        await asyncio.sleep(0.2)
    [line] = await letters_with_marker()
    assert "requests" in line and f"{topics.IMAGE_COMMANDS}/" in line and "not valid JSON" in line
    offset = line.split()[0]

    assert await asyncio.to_thread(cli, ["dlq", "replay", offset, "--bootstrap", bootstrap]) == 0
    assert "replayed 1 dead letter" in capsys.readouterr().out
    # Put back unchanged, the message fails the same way and is parked again.
    for _ in range(100):
        if len(await letters_with_marker()) == 2:
            break
        await asyncio.sleep(0.2)
    assert len(await letters_with_marker()) == 2
    assert await asyncio.to_thread(cli, ["dlq", "replay", "999999999", "--bootstrap", bootstrap]) == 1
    assert "no dead letter at offset 999999999" in capsys.readouterr().err


async def test_rebuilt_projections_equal_the_originals(running: Stack, api_key: str) -> None:
    bootstrap = running.profile.kafka_bootstrap
    async with api(running, api_key) as http:
        key = uuid.uuid4().hex
        job = await create_async(http, QUICK | {"seed": 900}, **{"idempotency-key": key})
        assert (await wait_done(http, job["id"]))["status"] == "completed"
    await _settled(bootstrap, "gateway-jobs", [topics.REQUEST_EVENTS])
    await _settled(bootstrap, "storage", [topics.STORAGE_BLOBS])
    names = ["gateway_jobs", "gateway_idempotency", "images"]
    originals = {name: _collection(running, name) for name in names}
    assert all(originals.values())

    mongo = running.profile.mongo_url
    args = ["rebuild", "--bootstrap", bootstrap, "--mongo-url", mongo, "--mongo-database", "darkroom"]
    assert await asyncio.to_thread(cli, args) == 0

    for name in names:
        assert _collection(running, name) == originals[name], name
