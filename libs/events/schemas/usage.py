"""Metered usage: what each account used on each UTC day (compacted topic `darkroom.usage`).

The metering service (services/metering, a faust app) folds the request events into usage
tables and publishes each account-day's totals here after every completed job; the latest
record per key ("<account>|<YYYY-MM-DD>") is the day's usage so far.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from libs.events.envelope import Event
from libs.events.registry import REGISTRY


class ModelUsage(BaseModel):
    """One model's share of a day's usage."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    jobs: int = Field(default=0, ge=0)
    images: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)


@REGISTRY.register
class AccountUsage(Event):
    """Metering: an account's completed jobs, images and output tokens on one UTC day."""

    TYPE = "usage.account_usage"

    account_id: str
    day: str
    """The UTC day the jobs were accepted, YYYY-MM-DD."""
    tier: str
    """The tier of the account's latest metered job that day."""
    jobs: int = Field(ge=0)
    images: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    by_model: dict[str, ModelUsage] = {}
    completed_through: datetime | None = None
    """The time (its `JobCompleted` envelope's) of the latest completion counted here; the
    gateways count a completion themselves until it is reached. None in records from
    before it was kept."""


@REGISTRY.register
class AccountFlagged(Event):
    """Metering: an account used more than its tier's policy could have admitted (topic
    `darkroom.accounts.flags`, keyed by account): a bypass of the gateways' limits, a bug in
    a gateway, or a stolen key. `action` says what was done about it."""

    TYPE = "usage.account_flagged"

    account_id: str
    tier: str
    reason: str
    """`per_minute` (images in a minute) or `per_day` (images in a UTC day)."""
    window: str
    """The minute (ISO time of its start) or the day (YYYY-MM-DD) that went over."""
    images: int = Field(ge=0)
    admissible: int = Field(ge=0)
    """What the tier's policy admits in that window (times the tolerance, rounded down)."""
    action: str = "flagged"
    """`flagged`, or `suspended` (every key of the account revoked)."""
