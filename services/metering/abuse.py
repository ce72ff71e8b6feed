"""Abuse detection: an account that used more than its tier's policy could have admitted.

The gateways enforce each tier's limits (requests per minute, `n` per request, images per
day) before a job exists. Metering counts what really completed. When an account's images
in one minute exceed what the policy admits in a minute (requests per minute x largest
`n`), or its images in a UTC day exceed images per day, both times `abuse_tolerance` (the
gateways' own error bound leaves room), something let jobs past the limits: a bypass of
the gateways, a bug in one, or a stolen key. The $2.1M bypass of the seed was this.

An account is also compared with its own recent baseline: when it renders more in an hour
than `abuse_baseline_factor` times its mean images per hour over the 24 hours before (and
more than a quarter of its tier's images per day, so a light user's busy hour is not news),
its usage changed character: a stolen key, a runaway integration. An account with no usage
in those 24 hours has no baseline and is judged by its policy alone.

Then an `AccountFlagged` event goes to `darkroom.accounts.flags` (once per account and
window), the `darkroom_accounts_flagged_total` metric counts it (an alert rule watches it),
and, for an excess over the policy only, with `abuse_action=suspend` every key of the
account is revoked (a `RevokeKeys` command to the auth service, whose revocations every
gateway applies within a second), and with `abuse_action=throttle` the account is moved to
the free tier (a `ChangeTier` command: the free tier's limits, applied by every gateway
within a second, its keys intact; an account already on the free tier is flagged). A jump
over the baseline is flagged, never throttled or suspended: it is within the policy.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass
from typing import Final

from prometheus_client import Counter

from libs import topics
from libs.access import AccessState
from libs.bus import EventPublisher
from libs.events import Envelope
from libs.events.schemas import AccountFlagged, ChangeTier, RevokeKeys, TierPolicy
from services.metering.domain import Tally

log = logging.getLogger(__name__)

FLAGGED = Counter(
    "darkroom_accounts_flagged",
    "Accounts the metering service found over their tier's limits, by tier, reason and action.",
    ["tier", "reason", "action"],
)


@dataclass(frozen=True)
class Excess:
    """An account over what its tier admits in a window."""

    reason: str
    window: str
    images: int
    admissible: int


THROTTLED_TIER: Final = "free"
"""Where `abuse_action=throttle` moves an account: the lowest tier's limits, applied by every
gateway within a second, keys intact (an operator moves it back: `darkroom accounts upgrade`)."""

BASELINE_FLOOR_SHARE: Final = 0.25
"""An hour is compared with the account's baseline only past this share of its tier's images
per day."""


def judge(policy: TierPolicy, tally: Tally, tolerance: float, baseline_factor: float = 10.0) -> Excess | None:
    """Whether an account's metered images exceed its policy (in the minute, in the day) or
    its own baseline (in the hour).

    Args:
        policy: The account's tier policy in force.
        tally: The account's counts after its latest completions.
        tolerance: The factor over the policy allowed before flagging (>= 1).
        baseline_factor: The factor over the account's mean images per hour allowed in an hour.
    """
    per_minute = math.floor(policy.requests_per_minute * policy.max_n * tolerance)
    if tally.minute_images > per_minute:
        return Excess("per_minute", tally.minute, tally.minute_images, per_minute)
    per_day = math.floor(policy.images_per_day * tolerance)
    if tally.day_images > per_day:
        return Excess("per_day", tally.day, tally.day_images, per_day)
    if tally.hourly_baseline > 0:
        per_hour = max(
            math.floor(tally.hourly_baseline * baseline_factor),
            math.floor(policy.images_per_day * BASELINE_FLOOR_SHARE),
        )
        if tally.hour_images > per_hour:
            return Excess("baseline", tally.hour, tally.hour_images, per_hour)
    return None


class AbuseWatch:
    """Judges every counted job's account and acts on an excess (see the module docstring).

    Args:
        access: The tier policies and account tiers in force (folded from their topics).
        publisher: Publishes flags, and revocations when suspending.
        action: `flag`, `throttle` or `suspend` (an excess over the policy; a baseline jump is
            flagged).
        tolerance: Factor over the policy before an account is flagged.
        baseline_factor: Factor over the account's mean images per hour before it is flagged.
    """

    def __init__(
        self,
        access: AccessState,
        publisher: EventPublisher,
        action: str,
        tolerance: float,
        baseline_factor: float = 10.0,
    ) -> None:
        self.access = access
        self._publisher = publisher
        self._action = action
        self._tolerance = tolerance
        self._baseline_factor = baseline_factor
        self._flagged: set[tuple[str, str, str]] = set()

    async def counted(self, tally: Tally) -> None:
        """After an account's completions were counted: flag (and throttle or suspend) it if it is over."""
        account_id = tally.account_id
        tier = self.access.tier_of(account_id, tally.tier)
        excess = judge(self.access.policy(tier), tally, self._tolerance, self._baseline_factor)
        if excess is None or (account_id, excess.reason, excess.window) in self._flagged:
            return
        self._flagged.add((account_id, excess.reason, excess.window))
        action = self._act_on(excess, tier)
        flag = AccountFlagged(
            account_id=account_id,
            tier=tier,
            reason=excess.reason,
            window=excess.window,
            images=excess.images,
            admissible=excess.admissible,
            action=action,
        )
        log.warning(
            "account %s (%s) over its limits: %d images %s (%s), admissible %d: %s",
            account_id,
            tier,
            excess.images,
            excess.reason,
            excess.window,
            excess.admissible,
            action,
        )
        FLAGGED.labels(tier, excess.reason, action).inc()
        await self._publisher.publish(
            topics.ACCOUNT_FLAGS, Envelope.wrap(flag, aggregate_id=account_id), key=account_id
        )
        command: RevokeKeys | ChangeTier | None = None
        if action == "suspended":
            what = f"{excess.images} images {excess.reason} ({excess.window}), admissible {excess.admissible}"
            command = RevokeKeys(
                request_id=f"abuse-{uuid.uuid4().hex}",
                account_id=account_id,
                reason=f"abuse detection: {what}",
                requested_by="metering",
            )
        elif action == "throttled":
            command = ChangeTier(
                request_id=f"abuse-{uuid.uuid4().hex}",
                account_id=account_id,
                tier=THROTTLED_TIER,
                requested_by="metering",
            )
        if command is not None:
            envelope = Envelope.wrap(command, aggregate_id=account_id)
            await self._publisher.publish(topics.ACCOUNT_COMMANDS, envelope, key=account_id)

    def _act_on(self, excess: Excess, tier: str) -> str:
        """What is done about an excess: a jump over the baseline is only flagged (it is within
        the policy), as is an account to throttle that is on the lowest tier already."""
        if excess.reason == "baseline" or self._action == "flag":
            return "flagged"
        if self._action == "throttle":
            return "throttled" if tier != THROTTLED_TIER else "flagged"
        return "suspended"
