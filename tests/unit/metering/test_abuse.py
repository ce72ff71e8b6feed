"""Abuse detection: an account's metered images against what its tier's policy admits."""

from __future__ import annotations

from libs import topics
from libs.access import DEFAULT_POLICIES, AccessState
from libs.bus import EventPublisher
from libs.bus.memory import InMemoryBroker
from libs.events import REGISTRY, Envelope
from libs.events.schemas import AccountFlagged, ChangeTier, RevokeKeys, TierChanged
from services.metering.abuse import AbuseWatch, judge
from services.metering.domain import Tally

FREE = DEFAULT_POLICIES["free"]  # 5 requests a minute, n at most 1, 25 images a day
MINUTE, HOUR, DAY = "2026-12-05T12:00:00+00:00", "2026-12-05T12:00:00+00:00", "2026-12-05"


def _tally(
    minute_images: int,
    day_images: int,
    *,
    account: str = "acct_a",
    tier: str = "free",
    hour_images: int | None = None,
    baseline: float = 0.0,
) -> Tally:
    return Tally(
        account_id=account,
        tier=tier,
        minute=MINUTE,
        minute_images=minute_images,
        hour=HOUR,
        hour_images=minute_images if hour_images is None else hour_images,
        hourly_baseline=baseline,
        day=DAY,
        day_images=day_images,
    )


def test_an_account_within_its_tier_is_never_flagged() -> None:
    assert judge(FREE, _tally(5, 25), tolerance=1.0) is None
    # The tolerance leaves room for the gateways' error bound.
    assert judge(FREE, _tally(7, 37), tolerance=1.5) is None


def test_more_images_in_a_minute_or_a_day_than_the_tier_admits_is_an_excess() -> None:
    minute = judge(FREE, _tally(8, 8), tolerance=1.5)
    assert minute is not None and (minute.reason, minute.window, minute.images, minute.admissible) == (
        "per_minute",
        MINUTE,
        8,
        7,
    )
    day = judge(FREE, _tally(1, 38), tolerance=1.5)
    assert day is not None and (day.reason, day.window, day.admissible) == ("per_day", DAY, 37)


def _events(broker: InMemoryBroker, topic: str) -> list[object]:
    return [REGISTRY.decode(Envelope.from_bytes(r.value)) for r in broker.records(topic)]


async def test_an_excess_is_flagged_once_per_window_and_suspends_when_the_operator_says_so() -> None:
    broker = InMemoryBroker()
    watch = AbuseWatch(AccessState(), EventPublisher(broker.producer()), action="suspend", tolerance=1.5)
    for images in range(1, 12):
        await watch.counted(_tally(images, images, account="acct_bypass"))
    [flag] = _events(broker, topics.ACCOUNT_FLAGS)
    assert isinstance(flag, AccountFlagged)
    assert (flag.account_id, flag.reason, flag.images, flag.admissible, flag.action) == (
        "acct_bypass",
        "per_minute",
        8,
        7,
        "suspended",
    )
    [revoke] = _events(broker, topics.ACCOUNT_COMMANDS)
    assert isinstance(revoke, RevokeKeys) and revoke.account_id == "acct_bypass" and revoke.key_id is None
    assert revoke.requested_by == "metering"


async def test_flag_only_and_the_accounts_current_tier_decides() -> None:
    broker = InMemoryBroker()
    access = AccessState()
    access.apply(TierChanged(request_id="r1", account_id="acct_upgraded", tier="pro", previous="free"))
    watch = AbuseWatch(access, EventPublisher(broker.producer()), action="flag", tolerance=1.0)
    # 8 images in a minute is too many for free, but this account is pro now (60 x 4).
    await watch.counted(_tally(8, 8, account="acct_upgraded"))
    assert _events(broker, topics.ACCOUNT_FLAGS) == []
    await watch.counted(_tally(8, 8, account="acct_free"))
    [flag] = _events(broker, topics.ACCOUNT_FLAGS)
    assert isinstance(flag, AccountFlagged) and flag.action == "flagged"
    assert _events(broker, topics.ACCOUNT_COMMANDS) == []


def test_an_hour_far_over_the_accounts_own_baseline_is_an_excess() -> None:
    # Within the policy (a minute of 4, a day of 20), but 20 in an hour for an account that
    # averaged 0.5 an hour over the day before: 10 x 0.5 = 5, and past a quarter of 25 (6).
    jump = judge(FREE, _tally(4, 20, hour_images=20, baseline=0.5), tolerance=1.5)
    assert jump is not None and (jump.reason, jump.window, jump.images, jump.admissible) == ("baseline", HOUR, 20, 6)
    # The same hour for an account that averaged 2 an hour (10 x 2 = 20) is its habit.
    assert judge(FREE, _tally(4, 20, hour_images=20, baseline=2.0), tolerance=1.5) is None
    # A light user's busy hour stays under the floor: 6 in an hour, a quarter of 25 is 6.
    assert judge(FREE, _tally(4, 6, hour_images=6, baseline=0.1), tolerance=1.5) is None
    # No usage in the 24 hours before: no baseline, the policy alone judges.
    assert judge(FREE, _tally(4, 20, hour_images=20, baseline=0.0), tolerance=1.5) is None


async def test_a_jump_over_the_baseline_is_flagged_but_never_suspended() -> None:
    broker = InMemoryBroker()
    watch = AbuseWatch(AccessState(), EventPublisher(broker.producer()), action="suspend", tolerance=1.5)
    await watch.counted(_tally(4, 20, account="acct_jump", hour_images=20, baseline=0.5))
    [flag] = _events(broker, topics.ACCOUNT_FLAGS)
    assert isinstance(flag, AccountFlagged) and (flag.reason, flag.action) == ("baseline", "flagged")
    assert _events(broker, topics.ACCOUNT_COMMANDS) == []


async def test_throttling_moves_an_account_over_its_policy_to_the_free_tier() -> None:
    broker = InMemoryBroker()
    access = AccessState()
    watch = AbuseWatch(access, EventPublisher(broker.producer()), action="throttle", tolerance=1.0)
    pro = DEFAULT_POLICIES["pro"]
    over = pro.requests_per_minute * pro.max_n + 1
    await watch.counted(_tally(over, over, account="acct_pro", tier="pro"))
    [flag] = _events(broker, topics.ACCOUNT_FLAGS)
    assert isinstance(flag, AccountFlagged) and (flag.reason, flag.action) == ("per_minute", "throttled")
    [command] = _events(broker, topics.ACCOUNT_COMMANDS)
    assert isinstance(command, ChangeTier)
    assert (command.account_id, command.tier, command.requested_by) == ("acct_pro", "free", "metering")
    # A free account has no lower tier: it is flagged, nothing more.
    await watch.counted(_tally(8, 8, account="acct_free"))
    assert [e.action for e in _events(broker, topics.ACCOUNT_FLAGS) if isinstance(e, AccountFlagged)] == [
        "throttled",
        "flagged",
    ]
    assert len(_events(broker, topics.ACCOUNT_COMMANDS)) == 1
