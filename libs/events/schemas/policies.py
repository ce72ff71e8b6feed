"""Policies: per-tier limits and gradual-rollout flags (compacted policy topic).

Every record is a change event: who changed what, the value before and after (the
envelope carries when). On the compacted topic the latest record per key is the
value in force; the same events are kept whole on the policy history topic.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from libs.events.envelope import Event
from libs.events.registry import REGISTRY
from libs.events.schemas.accounts import Tier

Quality = Literal["low", "medium", "high"]
QUALITY_ORDER: dict[str, int] = {"low": 0, "medium": 1, "high": 2}
FEATURES: tuple[str, ...] = ("image_generation",)
"""Features that a rollout flag can gate."""


class TierPolicy(BaseModel):
    """What a tier may do."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests_per_minute: int = Field(ge=0)
    """Generation requests per minute per account (a token bucket of this size)."""
    tier_requests_per_minute: int = Field(default=0, ge=0)
    """Generation requests per minute for the whole tier; 0 = no tier-wide limit."""
    images_per_day: int = Field(ge=0)
    """Images per account per UTC day."""
    concurrent_jobs: int = Field(ge=0)
    """Jobs an account may have in flight at once."""
    max_n: int = Field(ge=1, le=4)
    """The largest `n` in one request."""
    max_quality: Quality
    """The highest quality the tier may ask for."""
    lane: str
    """The render lane (infra/topics.yaml) that serves the tier's jobs."""


@REGISTRY.register
class TierPolicyChanged(Event):
    """Operator: a tier's policy (key "tier:<tier>")."""

    TYPE = "policies.tier_policy_changed"

    tier: Tier
    policy: TierPolicy
    previous: TierPolicy | None = None
    changed_by: str = "operator"


@REGISTRY.register
class RolloutChanged(Event):
    """Operator: the share of a tier's accounts that get a feature (key "rollout:<feature>:<tier>")."""

    TYPE = "policies.rollout_changed"

    feature: str
    tier: Tier
    percent: float = Field(ge=0, le=100)
    previous: float | None = None
    changed_by: str = "operator"
