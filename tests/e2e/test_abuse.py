"""End to end: a bypass of the gateways' limits is caught by metering and the account suspended.

The injected bypass is the seed's $2.1M incident in miniature: jobs of a free account
published straight to the image-command topic, past every gateway limit (the free tier
admits 5 requests of one image a minute). The requests service and the decoders render
them as they would any job; the metering service counts what completed, finds the account
over its tier within the minute, publishes `AccountFlagged` and, with
`DARKROOM_ABUSE_ACTION=suspend` (set for this module), revokes the account's keys: its next
request through the official SDK is refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import openai
import pytest

from infra.stack import Stack
from libs import topics
from libs.bus import EventPublisher
from libs.bus.kafka import KafkaProducer
from libs.bus.logreader import KafkaLogReader, read_to_end
from libs.bus.ports import Record
from libs.cli.accounts import create_account
from libs.events import REGISTRY, Envelope
from libs.events.ids import new_ulid
from libs.events.schemas import AccountFlagged, GenerateImage
from libs.settings import DEV_SIGNING_KEY
from tests.helpers import job_spec

INJECTED_JOBS = 12


@pytest.fixture(scope="module")
def suspending(stack: Stack) -> Iterator[Stack]:
    """The stack with metering suspending the accounts it flags; as before after the module."""
    stack.up_infra()
    stack.up_services()
    profile = dataclasses.replace(
        stack.profile, process_env=(*stack.profile.process_env, ("metering", "DARKROOM_ABUSE_ACTION", "suspend"))
    )
    with_suspension = Stack(profile, say=lambda line: print(line))
    stack.proc("metering").stop()
    with_suspension.up_services()
    yield with_suspension
    stack.proc("metering").stop()
    stack.up_services()


async def _inject(bootstrap: str, account_id: str) -> list[str]:
    """Jobs of the account straight onto the command topic, as a compromised gateway would."""
    producer = KafkaProducer(bootstrap, client_id="e2e-bypass")
    await producer.start()
    jobs = []
    try:
        publisher = EventPublisher(producer)
        for i in range(INJECTED_JOBS):
            job_id = f"job_{new_ulid().lower()}"
            spec = job_spec(account_id=account_id, tier="free", seed=100 + i, prompt="a red circle")
            command = GenerateImage(job_id=job_id, spec=spec, created_at=datetime.now(UTC))
            await publisher.publish(topics.IMAGE_COMMANDS, Envelope.wrap(command, aggregate_id=job_id, tier="free"))
            jobs.append(job_id)
    finally:
        await producer.stop()
    return jobs


async def _flags(bootstrap: str, account_id: str) -> list[AccountFlagged]:
    found: list[AccountFlagged] = []
    reader = KafkaLogReader(bootstrap, [topics.ACCOUNT_FLAGS], client_id="e2e-flags")

    async def keep(record: Record) -> None:
        event = REGISTRY.decode(Envelope.from_bytes(record.value))
        if isinstance(event, AccountFlagged) and event.account_id == account_id:
            found.append(event)

    await reader.start()
    try:
        await read_to_end(reader, keep, timeout_s=30)
    finally:
        await reader.stop()
    return found


def test_an_injected_bypass_is_flagged_within_its_minute_and_the_account_suspended(suspending: Stack) -> None:
    bootstrap = suspending.profile.kafka_bootstrap
    email = f"bypass-{uuid.uuid4().hex[:10]}@example.com"
    account: dict[str, Any] = asyncio.run(create_account(bootstrap, email, "free", DEV_SIGNING_KEY))
    client = openai.OpenAI(base_url=f"{suspending.profile.gateway_url}/v1", api_key=account["api_key"], max_retries=0)
    assert client.models.list().data  # the key works before

    injected_at = time.monotonic()
    asyncio.run(_inject(bootstrap, account["id"]))
    deadline = injected_at + 120
    flags: list[AccountFlagged] = []
    while not flags:
        assert time.monotonic() < deadline, "the bypass was not flagged within two minutes"
        time.sleep(1)
        flags = asyncio.run(_flags(bootstrap, account["id"]))
    flagged_after = time.monotonic() - injected_at
    [flag] = flags
    assert (flag.tier, flag.reason, flag.action) == ("free", "per_minute", "suspended")
    assert flag.images > flag.admissible == 7  # 5 requests x 1 image x tolerance 1.5

    while True:  # the revocation reaches the gateway within a second or so
        try:
            client.models.list()
        except openai.AuthenticationError as refused:
            assert refused.code == "invalid_api_key"
            break
        assert time.monotonic() - injected_at < flagged_after + 10, "the account's key still works"
        time.sleep(0.2)
    print(f"\nFIGURES bypass of {INJECTED_JOBS} jobs flagged {flagged_after:.1f}s after injection; key refused after")
