"""Abuse detection: an account that used more than its tier's policy could have admitted.

The gateways enforce each tier's limits (requests per minute, `n` per request, images per
day) before a job exists. Metering counts what really completed. When an account's images
in one minute exceed what the policy admits in a minute (requests per minute x largest
`n`), or its images in a UTC day exceed images per day, both times `abuse_tolerance` (the
gateways' own error bound leaves room), something let jobs past the limits: a bypass of
the gateways, a bug in one, or a stolen key. The $2.1M bypass of the seed was this.

Then an `AccountFlagged` event goes to `darkroom.accounts.flags` (once per account and
window), the `darkroom_accounts_flagged_total` metric counts it (an alert rule watches it),
and with `abuse_action=suspend` every key of the account is revoked: a `RevokeKeys` command
to the auth service, whose revocations every gateway applies within a second.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass

from prometheus_client import Counter

from libs import topics
from libs.access import AccessState
from libs.bus import EventPublisher
from libs.events import Envelope
from libs.events.schemas import AccountFlagged, RevokeKeys, TierPolicy

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


def judge(
    policy: TierPolicy, minute: str, minute_images: int, day: str, day_images: int, tolerance: float
) -> Excess | None:
    """Whether an account's metered images in a minute and a day exceed its policy.

    Args:
        policy: The account's tier policy in force.
        minute: The minute's label (its start); `minute_images` completed in it.
        day: The UTC day; `day_images` completed that day.
        tolerance: The factor over the policy allowed before flagging (>= 1).
    """
    per_minute = math.floor(policy.requests_per_minute * policy.max_n * tolerance)
    if minute_images > per_minute:
        return Excess("per_minute", minute, minute_images, per_minute)
    per_day = math.floor(policy.images_per_day * tolerance)
    if day_images > per_day:
        return Excess("per_day", day, day_images, per_day)
    return None


class AbuseWatch:
    """Judges every counted job's account and acts on an excess (see the module docstring).

    Args:
        access: The tier policies and account tiers in force (folded from their topics).
        publisher: Publishes flags, and revocations when suspending.
        action: `flag` or `suspend`.
        tolerance: Factor over the policy before an account is flagged.
    """

    def __init__(self, access: AccessState, publisher: EventPublisher, action: str, tolerance: float) -> None:
        self.access = access
        self._publisher = publisher
        self._action = action
        self._tolerance = tolerance
        self._flagged: set[tuple[str, str, str]] = set()

    async def counted(
        self, account_id: str, tier: str, minute: str, minute_images: int, day: str, day_images: int
    ) -> None:
        """After a completed job was counted: flag (and suspend) the account if it is over."""
        tier = self.access.tier_of(account_id, tier)
        excess = judge(self.access.policy(tier), minute, minute_images, day, day_images, self._tolerance)
        if excess is None or (account_id, excess.reason, excess.window) in self._flagged:
            return
        self._flagged.add((account_id, excess.reason, excess.window))
        action = "suspended" if self._action == "suspend" else "flagged"
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
        if action == "suspended":
            what = f"{excess.images} images {excess.reason} ({excess.window}), admissible {excess.admissible}"
            revoke = RevokeKeys(
                request_id=f"abuse-{uuid.uuid4().hex}",
                account_id=account_id,
                reason=f"abuse detection: {what}",
                requested_by="metering",
            )
            envelope = Envelope.wrap(revoke, aggregate_id=account_id)
            await self._publisher.publish(topics.ACCOUNT_COMMANDS, envelope, key=account_id)
