"""Sign-ups decided a batch at a time, key revocations and tier changes in the auth service."""

from __future__ import annotations

from libs import topics
from libs.bus.memory import InMemoryBroker
from libs.events import REGISTRY, Envelope, Event
from libs.events.schemas import (
    AccountCommandFailed,
    AccountCreated,
    AccountRejected,
    ChangeTier,
    CreateAccount,
    KeyRevoked,
    RevokeKeys,
    TierChanged,
)
from libs.stores.memory import InMemoryDocumentStore
from tests.helpers import eventually
from tests.unit.auth.test_auth import _answers, _send, running


def _signup(i: int, email: str) -> CreateAccount:
    return CreateAccount(request_id=f"req_{i}", account_id=f"acct_{i}", email=email, tier="free", key_id=f"k1:{i}")


async def _command(broker: InMemoryBroker, command: RevokeKeys | ChangeTier) -> None:
    envelope = Envelope.wrap(command, aggregate_id=command.account_id)
    await broker.producer().send(topics.ACCOUNT_COMMANDS, envelope.to_bytes(), key=command.account_id.encode())


async def _on(broker: InMemoryBroker, topic: str, count: int) -> list[Event]:
    async def enough() -> list[Event] | None:
        events = [REGISTRY.decode(Envelope.from_bytes(r.value)) for r in broker.records(topic)]
        return events if len(events) >= count else None

    return await eventually(enough, 10, f"{count} events on {topic}")


async def test_a_batch_gives_the_same_answers_as_one_by_one() -> None:
    broker, documents = InMemoryBroker(), InMemoryDocumentStore()
    # All queued before the service starts, so one fetch takes them as one batch.
    emails = [f"user{i}@example.com" for i in range(40)] + ["user3@example.com", "not-an-email"]
    for i, email in enumerate(emails):
        await _send(broker, _signup(i, email))
    async with running(broker, documents):
        answers = [event for _, _, event in await _answers(broker, len(emails))]

    created = [a for a in answers if isinstance(a, AccountCreated)]
    rejected = {a.request_id: a.code for a in answers if isinstance(a, AccountRejected)}
    assert len(created) == 40
    assert rejected == {"req_40": "duplicate_email", "req_41": "invalid_email"}
    assert len(await documents.find("accounts")) == 40
    assert (await documents.get("account_emails", "user3@example.com") or {})["account_id"] == "acct_3"


async def test_revoking_publishes_each_key_on_the_revocation_topic() -> None:
    broker, documents = InMemoryBroker(), InMemoryDocumentStore()
    async with running(broker, documents):
        await _send(broker, _signup(1, "ada@example.com"))
        await _answers(broker, 1)
        await _command(broker, RevokeKeys(request_id="r1", account_id="acct_1", reason="leaked"))
        [revoked] = await _on(broker, topics.REVOCATIONS, 1)
        await _command(broker, RevokeKeys(request_id="r2", account_id="acct_1", key_id="k1:nope"))
        await _command(broker, RevokeKeys(request_id="r3", account_id="acct_missing"))
        events = await _on(broker, topics.ACCOUNT_EVENTS, 3)

    assert revoked == KeyRevoked(request_id="r1", key_id="k1:1", account_id="acct_1", reason="leaked")
    assert broker.records(topics.REVOCATIONS)[0].key == b"k1:1"
    failures = {e.request_id: e.code for e in events if isinstance(e, AccountCommandFailed)}
    assert failures == {"r2": "unknown_key", "r3": "unknown_account"}


async def test_a_tier_change_is_recorded_and_published_once_per_request() -> None:
    broker, documents = InMemoryBroker(), InMemoryDocumentStore()
    async with running(broker, documents):
        await _send(broker, _signup(1, "ada@example.com"))
        await _answers(broker, 1)
        upgrade = ChangeTier(request_id="t1", account_id="acct_1", tier="pro")
        await _command(broker, upgrade)
        await _command(broker, upgrade)  # redelivered
        first, again = await _on(broker, topics.ACCOUNT_TIERS, 2)

    assert first == again == TierChanged(request_id="t1", account_id="acct_1", tier="pro", previous="free")
    assert (await documents.get("accounts", "acct_1") or {})["tier"] == "pro"
