"""The whole stack on a three-node Kafka cluster (`DARKROOM_KAFKA_BROKERS=3`): replicated
topics; a broker killed with -9 while records are produced loses none of them; and one
killed while jobs are in flight loses no accepted job and completes none twice.

The stack is this module's own (the test profile's ports moved by CLUSTER_OFFSET, a
folder of its own), started and stopped by the module as `make up` starts one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from infra.stack import KAFKA_WATCH, Stack, load_profile
from infra.topics import TopicSpec, create_topics
from libs import topics
from libs.bus import TransientError
from libs.bus.kafka import KafkaProducer
from libs.cli.accounts import create_account
from libs.settings import DEV_SIGNING_KEY
from tests.e2e.jobs import api, exactly_once, wait_done, watching

CLUSTER_OFFSET = 1500
RECORDS = 3000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = load_profile("test")
    profile = dataclasses.replace(
        base,
        name="cluster",
        run_dir=Path(tmp_path_factory.mktemp("kafka-cluster")),
        kafka_port=base.kafka_port + CLUSTER_OFFSET,
        controller_port=base.controller_port + CLUSTER_OFFSET,
        minio_port=base.minio_port + CLUSTER_OFFSET,
        minio_console_port=base.minio_console_port + CLUSTER_OFFSET,
        ferretdb_port=base.ferretdb_port + CLUSTER_OFFSET,
        gateway_port=base.gateway_port + CLUSTER_OFFSET,
        health_port_base=base.health_port_base + CLUSTER_OFFSET,
        kafka_brokers=3,
    )
    stack = Stack(profile, say=print)
    try:
        stack.up_infra()
        stack.up_services()
        yield stack
    finally:
        stack.down()


async def _partitions(bootstrap: str, name: str) -> list[dict[str, object]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([name])
        return list(described["partitions"])
    finally:
        await admin.close()


async def _min_insync(bootstrap: str, name: str) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        [(_, _, _, _, entries)] = response.resources
        return str(next(value for key, value, *_ in entries if key == "min.insync.replicas"))
    finally:
        await admin.close()


def test_every_declared_topic_has_three_replicas_and_needs_two(cluster: Stack) -> None:
    bootstrap = cluster.profile.kafka_bootstrap
    assert len(bootstrap.split(",")) == 3
    for name in (topics.IMAGE_COMMANDS, topics.REQUEST_EVENTS, topics.USAGE):
        partitions = asyncio.run(_partitions(bootstrap, name))
        assert partitions and all(len(p["replicas"]) == 3 for p in partitions), name  # type: ignore[arg-type]
        assert asyncio.run(_min_insync(bootstrap, name)) == "2", name


def _kill_leader(stack: Stack, topic: str) -> str:
    """Kill -9 the node that leads partition 0 of `topic` (its supervisor restarts it); its name.

    `kafka-watch` hears the exit and has the survivors unregister the node, so its partitions
    move without waiting for its session to time out: checked here, from its log."""
    node = stack.kafka_leader(topic)
    pid = stack.proc(node.name).pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    heard = f"{node.name} (node {node.node_id}) exited (pid {pid}): unregistered"
    deadline = time.monotonic() + 30
    while heard not in stack.proc(KAFKA_WATCH).log_file.read_text():
        assert time.monotonic() < deadline, (
            f"kafka-watch did not unregister {node.name}: {stack.proc(KAFKA_WATCH).tail()}"
        )
        time.sleep(0.1)
    return node.name


async def _produce_through_a_kill(stack: Stack, topic: str) -> tuple[list[bytes], int, str]:
    """Sends RECORDS records (acks=all), killing the leader of partition 0 with -9 a third of
    the way; a send the producer gave up on is sent again, as services retry. Returns the
    values, how many were sent again, and the node killed."""
    bootstrap = stack.profile.kafka_bootstrap
    producer = KafkaProducer(bootstrap, client_id="cluster-test")
    await producer.start()
    values = [f"record-{i}".encode() for i in range(RECORDS)]
    resent = 0
    killed = ""
    try:
        for i, value in enumerate(values):
            if i == RECORDS // 3:
                killed = await asyncio.to_thread(_kill_leader, stack, topic)
            while True:
                try:
                    await producer.send(topic, value, key=str(i % 12).encode())
                    break
                except TransientError:
                    resent += 1
                    await asyncio.sleep(0.2)
    finally:
        await producer.stop()
    return values, resent, killed


async def _read_all(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"cluster-test-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    seen: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while len(seen) < expected and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                seen += [r.value for r in records if r.value is not None]
    finally:
        await consumer.stop()
    return seen


def test_a_broker_killed_mid_stream_loses_no_acknowledged_record(cluster: Stack) -> None:
    bootstrap = cluster.profile.kafka_bootstrap
    topic = f"cluster-test.{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topics(bootstrap, [TopicSpec(topic, 6, 3, {"min.insync.replicas": "2"})], replicas=3))
    values, resent, killed = asyncio.run(_produce_through_a_kill(cluster, topic))
    seen = asyncio.run(_read_all(bootstrap, topic, len(values)))
    assert set(seen) == set(values), f"lost {len(set(values) - set(seen))} records after {killed} was killed"
    assert len(seen) - len(values) <= resent  # a duplicate only where a send was given up on and sent again

    # The supervisor restarts the killed node; it catches up and every replica is in sync again.
    deadline = time.monotonic() + 120
    while True:
        partitions = asyncio.run(_partitions(bootstrap, topic))
        if all(len(p["isr"]) == 3 for p in partitions):  # type: ignore[arg-type]
            break
        assert time.monotonic() < deadline, f"{killed} never rejoined the in-sync replicas: {partitions}"
        time.sleep(1)


async def _jobs_through_a_kill(stack: Stack, key: str) -> tuple[list[str], int, str]:
    """Six jobs made, the leader of the api request events' partition 0 killed, six more made
    (a 5xx while the cluster elects new leaders is retried; it accepted nothing). Every
    accepted job must complete, exactly once. Returns the jobs, the refusals, the node."""
    async with api(stack, key) as http, watching(stack) as watch:
        body = {"prompt": "a red circle", "quality": "low", "size": "256x256"}
        jobs = []
        for i in range(6):
            created = await http.post(
                "/v1/images/generations", json=body | {"seed": i}, headers={"prefer": "respond-async"}
            )
            assert created.status_code == 202, created.text
            jobs.append(created.json()["id"])
        killed = await asyncio.to_thread(_kill_leader, stack, topics.REQUEST_EVENTS_API)
        refused = 0
        for i in range(6, 12):
            deadline = time.monotonic() + 60
            while True:
                created = await http.post(
                    "/v1/images/generations", json=body | {"seed": i}, headers={"prefer": "respond-async"}
                )
                if created.status_code == 202:
                    jobs.append(created.json()["id"])
                    break
                assert created.status_code >= 500 and time.monotonic() < deadline, created.text
                refused += 1
                await asyncio.sleep(0.5)
        for job_id in jobs:
            done = await wait_done(http, job_id)
            assert done["status"] == "completed", done
        # The watch reads every job topic: give it the last events of the last jobs.
        await watch.until("every completion", lambda: all(watch.of(j, "images.job_completed") for j in jobs))
        for job_id in jobs:
            exactly_once(stack, watch, job_id, 1)
    return jobs, refused, killed


def test_a_broker_killed_with_jobs_in_flight_loses_none_and_completes_none_twice(cluster: Stack) -> None:
    account = asyncio.run(
        create_account(
            cluster.profile.kafka_bootstrap, f"cluster-{uuid.uuid4().hex[:8]}@example.com", "api", DEV_SIGNING_KEY
        )
    )
    jobs, refused, killed = asyncio.run(_jobs_through_a_kill(cluster, str(account["api_key"])))
    print(f"{len(jobs)} jobs completed once each; {refused} requests refused while {killed} was down")
