"""Fixtures for tests against the real Kafka, MinIO and FerretDB of the test stack.

`make test` starts them (infra/testrun.py). When one is missing these fixtures
fail the test with the reason; they never skip it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from infra.stack import DEV_MINIO_PASSWORD, DEV_MINIO_USER, Profile, ferretdb_ok, kafka_ok, load_profile, minio_ok
from libs.bus.kafka import KafkaConsumer, KafkaProducer
from libs.stores.minio import MinioBlobStore
from libs.stores.mongo import MongoDocumentStore
from tests.helpers import scratch_topic

HINT = "run the tests with `make test`, which starts the test stack"


@pytest.fixture(scope="session")
def profile() -> Profile:
    return load_profile("test")


@pytest.fixture(scope="session")
def kafka_bootstrap(profile: Profile) -> str:
    if not kafka_ok(profile):
        pytest.fail(f"Kafka is not reachable at {profile.kafka_bootstrap}: {HINT}")
    return profile.kafka_bootstrap


@pytest.fixture(scope="session")
def mongo_url(profile: Profile) -> str:
    if not ferretdb_ok(profile):
        pytest.fail(f"FerretDB is not reachable at {profile.mongo_url}: {HINT}")
    return profile.mongo_url


@pytest.fixture(scope="session")
def minio_endpoint(profile: Profile) -> str:
    if not minio_ok(profile):
        pytest.fail(f"MinIO is not reachable at {profile.minio_endpoint}: {HINT}")
    return profile.minio_endpoint


class KafkaBus:
    """Real-Kafka adapters for the bus contract, with throwaway topics."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.run = uuid.uuid4().hex[:8]

    async def new_topic(self, partitions: int) -> str:
        return await scratch_topic(self.bootstrap, f"test.{self.run}", partitions)

    def producer(self) -> KafkaProducer:
        return KafkaProducer(self.bootstrap)

    def consumer(self, group: str, topics: list[str]) -> KafkaConsumer:
        return KafkaConsumer(self.bootstrap, group=f"{group}-{self.run}", topics=topics)


@pytest.fixture
def kafka_bus(kafka_bootstrap: str) -> KafkaBus:
    return KafkaBus(kafka_bootstrap)


@pytest.fixture
async def mongo_store(mongo_url: str) -> AsyncIterator[MongoDocumentStore]:
    store = MongoDocumentStore(mongo_url, "darkroom_contract")
    yield store
    await store.close()


@pytest.fixture
async def minio_store(minio_endpoint: str) -> AsyncIterator[MinioBlobStore]:
    store = MinioBlobStore(minio_endpoint, DEV_MINIO_USER, DEV_MINIO_PASSWORD, "darkroom-contract")
    yield store
    await store.close()
