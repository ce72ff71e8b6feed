"""`darkroom accounts create | upgrade | revoke`: operators manage accounts through Kafka."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from libs import topics
from libs.apikeys import InvalidApiKey, mint, new_key_id, parse_signing_keys, verify
from libs.bus import EventPublisher
from libs.bus.kafka import KafkaConsumer, KafkaProducer
from libs.events import REGISTRY, Envelope, Event, new_ulid
from libs.events.schemas import (
    AccountCommandFailed,
    AccountCreated,
    AccountRejected,
    ChangeTier,
    CreateAccount,
    KeyRevoked,
    RevokeKeys,
    Tier,
    TierChanged,
)


class AccountError(Exception):
    """The account could not be created; the message is for the operator."""


async def create_account(
    bootstrap: str, email: str, tier: str, signing_key: str, timeout_s: float = 30.0
) -> dict[str, Any]:
    """Create an account and mint its API key.

    Args:
        bootstrap: Kafka bootstrap servers.
        email: The account's email.
        tier: free, plus, pro or api.
        signing_key: DARKROOM_SIGNING_KEY (the gateway's), to mint the key locally.
        timeout_s: How long to wait for the auth service.

    Returns:
        The account as the API shows it: id, email, tier and api_key.

    Raises:
        AccountError: Rejected (duplicate or invalid email) or no answer in time.
    """
    keys = parse_signing_keys(signing_key)
    request_id, account_id = new_ulid(), f"acct_{new_ulid().lower()}"
    normalized = email.strip().lower()
    command = CreateAccount(
        request_id=request_id,
        account_id=account_id,
        email=normalized,
        tier=tier,
        key_id=new_key_id(next(iter(keys))),
        requested_by="cli",
    )
    replies = KafkaConsumer(bootstrap, group=None, topics=[topics.ACCOUNT_EVENTS], auto_offset_reset="latest")
    producer = KafkaProducer(bootstrap, client_id="darkroom-cli")
    await replies.start()
    await producer.start()
    try:
        # Make sure the reader has its position before the command can be answered.
        await replies.getmany(timeout_ms=500)
        await EventPublisher(producer).publish(
            topics.ACCOUNT_COMMANDS, Envelope.wrap(command, aggregate_id=account_id, tier=tier), key=normalized
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for record in await replies.getmany(timeout_ms=500):
                envelope = Envelope.from_bytes(record.value)
                if envelope.payload.get("request_id") != request_id:
                    continue
                event = REGISTRY.decode(envelope)
                if isinstance(event, AccountRejected):
                    raise AccountError(f"{event.code}: {event.message}")
                if isinstance(event, AccountCreated):
                    return {
                        "id": account_id,
                        "object": "account",
                        "email": event.email,
                        "tier": event.tier,
                        "api_key": mint(account_id, event.tier, command.key_id, keys),
                    }
        raise AccountError(f"the auth service did not answer within {timeout_s:.0f}s (is it running?)")
    finally:
        await producer.stop()
        await replies.stop()


def run_create_account(bootstrap: str, email: str, tier: str, signing_key: str) -> dict[str, Any]:
    """Synchronous wrapper for the CLI."""
    return asyncio.run(create_account(bootstrap, email, tier, signing_key))


async def _ask_auth(
    bootstrap: str, command: RevokeKeys | ChangeTier, replies_on: list[str], wanted: int | None, timeout_s: float
) -> list[Event]:
    """Send a command to the auth service and collect its answers (those with its request id).

    Args:
        bootstrap: Kafka bootstrap servers.
        command: The command.
        replies_on: Topics the answers come on (failures come on the account-event topic).
        wanted: How many answers to wait for; None: all that come until a quiet second.
        timeout_s: How long to wait for the first answer.

    Raises:
        AccountError: The auth service refused it or did not answer in time.
    """
    replies = KafkaConsumer(
        bootstrap, group=None, topics=[*replies_on, topics.ACCOUNT_EVENTS], auto_offset_reset="latest"
    )
    producer = KafkaProducer(bootstrap, client_id="darkroom-cli")
    await replies.start()
    await producer.start()
    answers: list[Event] = []
    try:
        while not replies.assignment():
            await replies.getmany(timeout_ms=200)  # its position, before the command can be answered
        await replies.getmany(timeout_ms=300)
        await EventPublisher(producer).publish(
            topics.ACCOUNT_COMMANDS, Envelope.wrap(command, aggregate_id=command.account_id), key=command.account_id
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            fetched = await replies.getmany(timeout_ms=1000 if answers else 500)
            before = len(answers)
            for record in fetched:
                envelope = Envelope.from_bytes(record.value)
                if envelope.payload.get("request_id") != command.request_id:
                    continue
                event = REGISTRY.decode(envelope)
                if isinstance(event, AccountCommandFailed):
                    raise AccountError(f"{event.code}: {event.message}")
                answers.append(event)
            if answers and (len(answers) == before if wanted is None else len(answers) >= wanted):
                return answers
        raise AccountError(f"the auth service did not answer within {timeout_s:.0f}s (is it running?)")
    finally:
        await producer.stop()
        await replies.stop()


def key_id_of(api_key: str, signing_key: str) -> tuple[str, str]:
    """The (account id, key id) of an API key, after checking its signature.

    Raises:
        AccountError: The key is not one of ours.
    """
    try:
        principal = verify(api_key, parse_signing_keys(signing_key))
    except InvalidApiKey as exc:
        raise AccountError(f"not a valid key for this deployment: {exc}") from exc
    return principal.account_id, principal.key_id


async def revoke(
    bootstrap: str, account_id: str, key_id: str | None, reason: str, requested_by: str, timeout_s: float = 30.0
) -> list[str]:
    """Revoke one key of an account (or all of them); returns the revoked key ids."""
    command = RevokeKeys(
        request_id=new_ulid(), account_id=account_id, key_id=key_id, reason=reason, requested_by=requested_by
    )
    # One key: one answer. All keys: as many as the account has (all come within one fetch or two).
    answers = await _ask_auth(
        bootstrap,
        command,
        [topics.REVOCATIONS],
        1 if key_id else 10**6,
        min(timeout_s, 5.0) if not key_id else timeout_s,
    )
    return [a.key_id for a in answers if isinstance(a, KeyRevoked)]


async def change_tier(
    bootstrap: str, account_id: str, tier: str, requested_by: str, timeout_s: float = 30.0
) -> dict[str, Any]:
    """Move an account to another tier; its keys carry the new tier at every gateway."""
    command = ChangeTier(request_id=new_ulid(), account_id=account_id, tier=cast(Tier, tier), requested_by=requested_by)
    [answer] = await _ask_auth(bootstrap, command, [topics.ACCOUNT_TIERS], 1, timeout_s)
    if not isinstance(answer, TierChanged):  # pragma: no cover - auth answers only this or a failure
        raise AccountError("unexpected answer from the auth service")
    return {"id": account_id, "object": "account", "tier": answer.tier, "previous_tier": answer.previous}
