"""The bus and store contracts against the in-memory adapters."""

from __future__ import annotations

import uuid

import pytest

from libs.bus.memory import InMemoryBroker, InMemoryConsumer, InMemoryProducer
from libs.stores.memory import InMemoryBlobStore, InMemoryDocumentStore
from tests.contracts.bus import BusContract
from tests.contracts.stores import BlobStoreContract, DocumentStoreContract


class MemoryBus:
    def __init__(self) -> None:
        self.broker = InMemoryBroker()

    async def new_topic(self, partitions: int) -> str:
        name = f"test.{uuid.uuid4().hex[:8]}"
        self.broker.create_topic(name, partitions)
        return name

    def producer(self) -> InMemoryProducer:
        return self.broker.producer()

    def consumer(self, group: str, topics: list[str]) -> InMemoryConsumer:
        return self.broker.consumer(group, topics)


class TestInMemoryBus(BusContract):
    @pytest.fixture
    def bus(self) -> MemoryBus:
        return MemoryBus()


class TestInMemoryDocumentStore(DocumentStoreContract):
    @pytest.fixture
    def documents(self) -> InMemoryDocumentStore:
        return InMemoryDocumentStore()


class TestInMemoryBlobStore(BlobStoreContract):
    @pytest.fixture
    def blobs(self) -> InMemoryBlobStore:
        return InMemoryBlobStore()
