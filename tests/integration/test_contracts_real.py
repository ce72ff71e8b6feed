"""The bus and store contracts against real Kafka, FerretDB and MinIO."""

from __future__ import annotations

import pytest

from libs.stores.minio import MinioBlobStore
from libs.stores.mongo import MongoDocumentStore
from tests.contracts.bus import BusContract
from tests.contracts.stores import BlobStoreContract, DocumentStoreContract
from tests.integration.conftest import KafkaBus


class TestKafkaBus(BusContract):
    @pytest.fixture
    def bus(self, kafka_bus: KafkaBus) -> KafkaBus:
        return kafka_bus


class TestFerretDocumentStore(DocumentStoreContract):
    @pytest.fixture
    def documents(self, mongo_store: MongoDocumentStore) -> MongoDocumentStore:
        return mongo_store


class TestMinioBlobStore(BlobStoreContract):
    @pytest.fixture
    def blobs(self, minio_store: MinioBlobStore) -> MinioBlobStore:
        return minio_store
