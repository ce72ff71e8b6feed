"""Metered usage: what each account used on each UTC day (compacted topic `darkroom.usage`).

The metering service (services/metering, a faust app) folds the request events into usage
tables and publishes each account-day's totals here after every completed job; the latest
record per key ("<account>|<YYYY-MM-DD>") is the day's usage so far.
"""

from __future__ import annotations

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
