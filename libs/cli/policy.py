"""`darkroom policy show|set`: tier limits and rollout flags on the compacted policy topic.

Every gateway replica reads the policy topic from the beginning at start and follows
it, so a `set` applies within about a second everywhere, without restart. Each `set`
is a change event naming who made it and the value before and after (the envelope
has the time); it goes to the policy topic (latest per key wins) and to the policy
history topic (kept whole).
"""

from __future__ import annotations

import asyncio
from typing import Any

import yaml
from pydantic import ValidationError

from libs import topics
from libs.access import AccessState, policy_key, rollout_key
from libs.bus import EventPublisher
from libs.bus.kafka import KafkaProducer
from libs.bus.logreader import fold_topics
from libs.bus.publisher import publish_in_force
from libs.events import Event
from libs.events.schemas import FEATURES, TIERS, RolloutChanged, TierPolicy, TierPolicyChanged
from libs.lanes import base_lanes

CLIENT_ID = "darkroom-cli"
READ_TIMEOUT_S = 30.0


class PolicyError(Exception):
    """The change is not valid; the message is for the operator.

    Attributes:
        param: What is wrong ("tier", "feature", "percent", or a policy field), for an
            API that names the offending parameter; None when it is the change as a whole.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


async def read_access(bootstrap: str, timeout_s: float = READ_TIMEOUT_S) -> AccessState:
    """The policies and rollouts in force, read from the policy topic."""
    state = AccessState()
    await fold_topics(bootstrap, [topics.POLICIES], state.apply, client_id=CLIENT_ID, timeout_s=timeout_s)
    return state


def format_access(state: AccessState) -> str:
    """What `show` prints: every tier's policy and every rollout flag, as YAML."""
    return yaml.safe_dump(state.snapshot(), sort_keys=False)


def tier_change(state: AccessState, tier: str, changes: dict[str, Any], changed_by: str) -> TierPolicyChanged:
    """The event that sets some fields of a tier's policy.

    Raises:
        PolicyError: Unknown tier, an invalid value, or a lane that does not exist.
    """
    if tier not in TIERS:
        raise PolicyError(f"unknown tier {tier!r} (tiers: {', '.join(TIERS)})", "tier")
    if not changes:
        raise PolicyError("nothing to change: name at least one limit")
    previous = state.policy(tier)
    try:
        policy = TierPolicy.model_validate(previous.model_dump() | changes)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise PolicyError(f"{field}: {first['msg']}", field or None) from exc
    if policy.lane not in base_lanes():
        raise PolicyError(f"unknown lane {policy.lane!r} (lanes: {', '.join(sorted(base_lanes()))})", "lane")
    return TierPolicyChanged(tier=tier, policy=policy, previous=previous, changed_by=changed_by)


def rollout_change(state: AccessState, feature: str, tier: str, percent: float, changed_by: str) -> RolloutChanged:
    """The event that sets a rollout flag.

    Raises:
        PolicyError: Unknown feature or tier, or a percentage outside 0-100.
    """
    if feature not in FEATURES:
        raise PolicyError(f"unknown feature {feature!r} (features: {', '.join(FEATURES)})", "feature")
    if tier not in TIERS:
        raise PolicyError(f"unknown tier {tier!r} (tiers: {', '.join(TIERS)})", "tier")
    if not 0 <= percent <= 100:
        raise PolicyError("the percentage must be between 0 and 100", "percent")
    previous = state.rollout_percent(feature, tier)
    return RolloutChanged(feature=feature, tier=tier, percent=percent, previous=previous, changed_by=changed_by)


async def publish_change(publisher: EventPublisher, change: TierPolicyChanged | RolloutChanged) -> None:
    """Publish a change on the policy topic (in force) and the history topic (kept)."""
    key = policy_key(change.tier) if isinstance(change, TierPolicyChanged) else rollout_key(change.feature, change.tier)
    await publish_in_force(publisher, change, key)


def show(bootstrap: str) -> str:
    """`darkroom policy show`."""
    return format_access(asyncio.run(read_access(bootstrap)))


def set_policy(
    bootstrap: str,
    *,
    changed_by: str,
    tier: str,
    changes: dict[str, Any] | None = None,
    rollout: str | None = None,
    percent: float | None = None,
) -> Event:
    """`darkroom policy set`: change a tier's limits, or a rollout flag when `rollout` names a feature.

    Returns:
        The change event as published.

    Raises:
        PolicyError: The change is not valid (nothing is published).
        TimeoutError: The current policy could not be read in time.
    """

    def decide(state: AccessState) -> TierPolicyChanged | RolloutChanged:
        if rollout is not None:
            if percent is None:
                raise PolicyError("a rollout needs --percent")
            return rollout_change(state, rollout, tier, percent, changed_by)
        return tier_change(state, tier, changes or {}, changed_by)

    decide(AccessState())  # fail on a bad value before connecting

    async def run() -> Event:
        change = decide(await read_access(bootstrap))
        producer = KafkaProducer(bootstrap, client_id=CLIENT_ID)
        await producer.start()
        try:
            await publish_change(EventPublisher(producer), change)
        finally:
            await producer.stop()
        return change

    return asyncio.run(run())
