"""`darkroom accounts create`: an operator creates an account of any tier through Kafka."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from libs import topics
from libs.apikeys import mint, new_key_id, parse_signing_keys
from libs.bus import EventPublisher
from libs.bus.kafka import KafkaConsumer, KafkaProducer
from libs.events import REGISTRY, Envelope, new_ulid
from libs.events.schemas import AccountCreated, AccountRejected, CreateAccount


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
