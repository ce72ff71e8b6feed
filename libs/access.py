"""What an account may do right now: tier policies, rollout flags, revoked keys, tiers.

`AccessState` is a fold over the records of three compacted topics (policies,
revocations, account tiers). Every gateway replica reads them from the beginning at
start and follows them, so an operator's change reaches every replica in about one
Kafka fetch. No I/O here: the gateway's feed hands the decoded events in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final

from libs.events import Event
from libs.events.schemas import (
    FEATURES,
    TIERS,
    KeyRevoked,
    RolloutChanged,
    TierChanged,
    TierPolicy,
    TierPolicyChanged,
)

DEFAULT_POLICIES: Final[dict[str, TierPolicy]] = {
    "free": TierPolicy(
        requests_per_minute=5, images_per_day=25, concurrent_jobs=1, max_n=1, max_quality="medium", lane="free"
    ),
    "plus": TierPolicy(
        requests_per_minute=20, images_per_day=200, concurrent_jobs=2, max_n=4, max_quality="high", lane="plus"
    ),
    "pro": TierPolicy(
        requests_per_minute=60, images_per_day=2000, concurrent_jobs=8, max_n=4, max_quality="high", lane="pro"
    ),
    "api": TierPolicy(
        requests_per_minute=300, images_per_day=20000, concurrent_jobs=16, max_n=4, max_quality="high", lane="api"
    ),
}
"""The policy of each tier until an operator sets one."""

DEFAULT_ROLLOUT_PERCENT: Final = 100.0
"""A feature without a rollout flag is on for everyone."""


def policy_key(tier: str) -> str:
    """The compacted-topic key of a tier's policy."""
    return f"tier:{tier}"


def rollout_key(feature: str, tier: str) -> str:
    """The compacted-topic key of a rollout flag."""
    return f"rollout:{feature}:{tier}"


def rollout_position(account_id: str, feature: str) -> float:
    """Where an account falls in a feature's rollout, in [0, 100).

    A hash of the feature and the account id: stable across replicas and restarts, and
    independent between features. An account is in a rollout of p percent when its
    position is below p, so raising p only ever adds accounts.
    """
    digest = hashlib.sha256(f"{feature}:{account_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


@dataclass
class AccessState:
    """The policies, rollouts, revoked keys and tier changes in force."""

    policies: dict[str, TierPolicy] = field(default_factory=lambda: dict(DEFAULT_POLICIES))
    rollouts: dict[tuple[str, str], float] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    tiers: dict[str, str] = field(default_factory=dict)
    changes: int = 0
    """How many records were applied (tests and tools wait on it)."""

    def apply(self, event: Event) -> bool:
        """Fold one record in; returns whether it was one of ours."""
        if isinstance(event, TierPolicyChanged):
            self.policies[event.tier] = event.policy
        elif isinstance(event, RolloutChanged):
            self.rollouts[(event.feature, event.tier)] = event.percent
        elif isinstance(event, KeyRevoked):
            self.revoked.add(event.key_id)
        elif isinstance(event, TierChanged):
            self.tiers[event.account_id] = event.tier
        else:
            return False
        self.changes += 1
        return True

    def policy(self, tier: str) -> TierPolicy:
        """The policy of a tier (the default when none was set)."""
        return self.policies.get(tier) or DEFAULT_POLICIES[tier]

    def tier_of(self, account_id: str, issued_tier: str) -> str:
        """An account's tier: the latest change, else the tier its key was issued with."""
        return self.tiers.get(account_id, issued_tier)

    def rollout_percent(self, feature: str, tier: str) -> float:
        """The share of the tier's accounts that have the feature."""
        return self.rollouts.get((feature, tier), DEFAULT_ROLLOUT_PERCENT)

    def has_feature(self, account_id: str, tier: str, feature: str) -> bool:
        """Whether the feature's rollout includes this account."""
        percent = self.rollout_percent(feature, tier)
        return percent >= 100 or rollout_position(account_id, feature) < percent

    def snapshot(self) -> dict[str, object]:
        """Every tier's policy and every rollout flag, as `darkroom policy show` prints them."""
        return {
            "tiers": {tier: self.policy(tier).model_dump() for tier in TIERS},
            "rollouts": {
                feature: {tier: self.rollout_percent(feature, tier) for tier in TIERS} for feature in FEATURES
            },
        }
