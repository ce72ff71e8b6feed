"""The auth service's sign-up handling on the in-memory broker and document store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

from libs import topics
from libs.bus.memory import InMemoryBroker
from libs.events import REGISTRY, Envelope, Event
from libs.events.schemas import AccountCreated, AccountRejected, CreateAccount
from libs.runtime.service import run_service
from libs.settings import AuthSettings
from libs.stores.memory import InMemoryDocumentStore
from libs.stores.ports import StoreUnavailable
from services.auth.bootstrap import bootstrap
from services.auth.domain import email_problem, normalize_email
from tests.helpers import eventually

NOW = datetime(2025, 3, 27, 9, 30, 15, 123456, tzinfo=UTC)
STORED_NOW = NOW.replace(microsecond=123000)  # as a MongoDB date keeps it


@pytest.mark.parametrize(
    "email",
    ["ada@example.com", "a.b+tag@mail.example.co.uk", "x@y.io", "o'brien@example.ie", f"{'a' * 64}@example.com"],
)
def test_acceptable_emails(email: str) -> None:
    assert email_problem(email) is None


@pytest.mark.parametrize(
    "email",
    [
        "",
        "ada",
        "ada@",
        "@example.com",
        "ada@example",
        "ada@@example.com",
        "a@b@example.com",
        "ada lovelace@example.com",
        "ada@exa mple.com",
        "ada@example..com",
        "ada@.example.com",
        "ada@example.com.",
        "ada\x00@example.com",
        f"{'a' * 65}@example.com",
        f"ada@{'a' * 250}.com",
    ],
)
def test_unacceptable_emails(email: str) -> None:
    assert email_problem(email) is not None


def test_normalization_strips_and_lowers() -> None:
    assert normalize_email("  Ada@Example.COM \n") == "ada@example.com"


class FlakyDocuments(InMemoryDocumentStore):
    """A document store that is unreachable for its first `failures` calls (unit tests only)."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.failures = failures

    def _maybe_fail(self) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("ferretdb: connection refused")

    async def get(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        self._maybe_fail()
        return await super().get(collection, doc_id)

    async def put(self, collection: str, doc_id: str, doc: Mapping[str, Any]) -> None:
        self._maybe_fail()
        await super().put(collection, doc_id, doc)

    async def get_many(self, collection: str, doc_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        self._maybe_fail()
        return await super().get_many(collection, doc_ids)

    async def insert_many(self, collection: str, docs: Mapping[str, Mapping[str, Any]]) -> set[str]:
        self._maybe_fail()
        return await super().insert_many(collection, docs)


@asynccontextmanager
async def running(broker: InMemoryBroker, documents: InMemoryDocumentStore) -> AsyncIterator[None]:
    runtime = bootstrap(
        AuthSettings(heartbeat_interval_s=60),
        producer=broker.producer(),
        consumer_factory=broker.consumer,
        documents=documents,
        clock=lambda: NOW,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(runtime, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def _create(request_id: str = "req_1", account_id: str = "acct_1", email: str = "Ada@Example.com ") -> CreateAccount:
    return CreateAccount(request_id=request_id, account_id=account_id, email=email, tier="plus", key_id="k1:abc")


async def _send(broker: InMemoryBroker, command: CreateAccount) -> None:
    envelope = Envelope.wrap(command, aggregate_id=command.account_id)
    await broker.producer().send(
        topics.ACCOUNT_COMMANDS, envelope.to_bytes(), key=normalize_email(command.email).encode()
    )


async def _answers(broker: InMemoryBroker, count: int) -> list[tuple[bytes | None, Envelope, Event]]:
    async def enough() -> list[tuple[bytes | None, Envelope, Event]] | None:
        out = []
        for record in broker.records(topics.ACCOUNT_EVENTS):
            envelope = Envelope.from_bytes(record.value)
            out.append((record.key, envelope, REGISTRY.decode(envelope)))
        # Partition order is per key; sort by event id (increasing within a process).
        out.sort(key=lambda item: item[1].event_id)
        return out if len(out) >= count else None

    return await eventually(enough, 10, f"{count} account events")


async def test_an_account_is_created() -> None:
    broker, documents = InMemoryBroker(), InMemoryDocumentStore()
    async with running(broker, documents):
        await _send(broker, _create())
        [(key, envelope, event)] = await _answers(broker, 1)

    # created_at is the clock's time to the millisecond, as the document store keeps it.
    assert event == AccountCreated(
        request_id="req_1",
        account_id="acct_1",
        email="ada@example.com",
        tier="plus",
        key_id="k1:abc",
        created_at=STORED_NOW,
    )
    assert key == b"acct_1" and envelope.aggregate_id == "acct_1"
    assert await documents.get("accounts", "acct_1") == {
        "_id": "acct_1",
        "email": "ada@example.com",
        "tier": "plus",
        "key_ids": ["k1:abc"],
        "request_id": "req_1",
        "requested_by": "api",
        "created_at": STORED_NOW,
    }
    assert await documents.get("account_emails", "ada@example.com") == {
        "_id": "ada@example.com",
        "account_id": "acct_1",
        "request_id": "req_1",
        "created_at": STORED_NOW,
    }


async def test_a_second_account_for_the_same_email_is_refused() -> None:
    broker, documents = InMemoryBroker(), InMemoryDocumentStore()
    async with running(broker, documents):
        await _send(broker, _create())
        await _send(broker, _create(request_id="req_2", account_id="acct_2", email="ADA@example.com"))
        [_, (key, envelope, event)] = await _answers(broker, 2)

    assert event == AccountRejected(
        request_id="req_2",
        email="ada@example.com",
        code="duplicate_email",
        message="an account with this email already exists",
    )
    assert key == b"ada@example.com" and envelope.aggregate_id == "acct_2"
    assert await documents.get("accounts", "acct_2") is None
    assert (await documents.get("account_emails", "ada@example.com") or {})["account_id"] == "acct_1"


async def test_an_invalid_email_is_refused() -> None:
    broker, documents = InMemoryBroker(), InMemoryDocumentStore()
    async with running(broker, documents):
        await _send(broker, _create(email=" Not An Email "))
        [(key, _, event)] = await _answers(broker, 1)

    assert isinstance(event, AccountRejected)
    assert (event.code, event.email, event.request_id) == ("invalid_email", "not an email", "req_1")
    assert key == b"not an email"
    assert await documents.find("accounts") == [] and await documents.find("account_emails") == []


async def test_a_redelivered_command_gets_the_same_answer_and_changes_nothing() -> None:
    broker, documents = InMemoryBroker(), InMemoryDocumentStore()
    async with running(broker, documents):
        await _send(broker, _create())
        [(_, first_envelope, first)] = await _answers(broker, 1)
        account = await documents.get("accounts", "acct_1")
        await _send(broker, _create())
        [_, (key, envelope, again)] = await _answers(broker, 2)

    assert again == first and key == b"acct_1"
    assert envelope.event_id != first_envelope.event_id
    assert await documents.get("accounts", "acct_1") == account
    assert len(await documents.find("accounts")) == 1


async def test_a_redelivery_repairs_an_account_document_lost_in_a_crash() -> None:
    broker, documents = InMemoryBroker(), InMemoryDocumentStore()
    # A first attempt stored the claim and crashed before the account document.
    await documents.put(
        "account_emails", "ada@example.com", {"account_id": "acct_1", "request_id": "req_1", "created_at": STORED_NOW}
    )
    async with running(broker, documents):
        await _send(broker, _create())
        [(_, _, event)] = await _answers(broker, 1)

    assert isinstance(event, AccountCreated) and event.created_at == STORED_NOW
    assert (await documents.get("accounts", "acct_1") or {})["created_at"] == STORED_NOW


async def test_a_document_store_outage_delays_the_sign_up_but_loses_nothing() -> None:
    broker, documents = InMemoryBroker(), FlakyDocuments(failures=2)
    async with running(broker, documents):
        await _send(broker, _create())
        [(_, _, event)] = await _answers(broker, 1)

    assert isinstance(event, AccountCreated)
    assert await documents.get("accounts", "acct_1") is not None
    assert broker.records(topics.DEAD_LETTERS) == []
