"""`darkroom usage --account ID`: any account's metered usage per UTC day (operators).

Reads the compacted `darkroom.usage` topic the metering service publishes (the latest record
per account-day is the day's usage so far) and prints the account's days as YAML.
"""

from __future__ import annotations

import asyncio
from typing import Any

import yaml

from libs import topics
from libs.bus.logreader import fold_topics
from libs.events import Event
from libs.events.schemas import AccountUsage

CLIENT_ID = "darkroom-cli"


async def read_usage(bootstrap: str, account_id: str, timeout_s: float = 30.0) -> list[AccountUsage]:
    """The account's usage per day, oldest first."""
    days: dict[str, AccountUsage] = {}

    def keep(event: Event) -> None:
        if isinstance(event, AccountUsage) and event.account_id == account_id:
            days[event.day] = event

    await fold_topics(bootstrap, [topics.USAGE], keep, client_id=CLIENT_ID, timeout_s=timeout_s)
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
