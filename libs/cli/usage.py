"""`darkroom usage --account ID`: any account's metered usage per UTC day (operators).

Reads the compacted `darkroom.usage` topic the metering service publishes (the latest record
per account-day is the day's usage so far) and prints the account's days as YAML.
"""

from __future__ import annotations

import asyncio
from typing import Any

import yaml

from libs import topics
from libs.bus.logreader import KafkaLogReader, read_to_end
from libs.bus.ports import Record
from libs.events import REGISTRY, DecodeError, Envelope
from libs.events.schemas import AccountUsage

CLIENT_ID = "darkroom-cli"


async def read_usage(bootstrap: str, account_id: str, timeout_s: float = 30.0) -> list[AccountUsage]:
    """The account's usage per day, oldest first."""
    days: dict[str, AccountUsage] = {}
    reader = KafkaLogReader(bootstrap, [topics.USAGE], client_id=CLIENT_ID)

    async def keep(record: Record) -> None:
        try:
            envelope = Envelope.from_bytes(record.value)
            if envelope.type != AccountUsage.TYPE:
                return
            usage = REGISTRY.decode_as(envelope, AccountUsage)
        except DecodeError:
            return
        if usage.account_id == account_id:
            days[usage.day] = usage

    await reader.start()
    try:
        await read_to_end(reader, keep, timeout_s=timeout_s)
    finally:
        await reader.stop()
    return [days[day] for day in sorted(days)]


def format_usage(account_id: str, days: list[AccountUsage]) -> str:
    """What the command prints."""
    body: dict[str, Any] = {
        "account_id": account_id,
        "days": [
            {
                "date": u.day,
                "tier": u.tier,
                "jobs": u.jobs,
                "images": u.images,
                "output_tokens": u.output_tokens,
                "by_model": {model: part.model_dump() for model, part in sorted(u.by_model.items())},
            }
            for u in days
        ],
    }
    return yaml.safe_dump(body, sort_keys=False)


def show_usage(bootstrap: str, account_id: str) -> str:
    """`darkroom usage --account ID`."""
    return format_usage(account_id, asyncio.run(read_usage(bootstrap, account_id)))
