"""Abuse detection: an account's metered images against what its tier's policy admits."""

from __future__ import annotations

from libs import topics
from libs.access import DEFAULT_POLICIES, AccessState
from libs.bus import EventPublisher
from libs.bus.memory import InMemoryBroker
from libs.events import REGISTRY, Envelope
from libs.events.schemas import AccountFlagged, RevokeKeys, TierChanged
from services.metering.abuse import AbuseWatch, judge

FREE = DEFAULT_POLICIES["free"]  # 5 requests a minute, n at most 1, 25 images a day
MINUTE, DAY = "2026-12-05T12:00:00+00:00", "2026-12-05"


def test_an_account_within_its_tier_is_never_flagged() -> None:
    assert judge(FREE, MINUTE, 5, DAY, 25, tolerance=1.0) is None
    # The tolerance leaves room for the gateways' error bound.
    assert judge(FREE, MINUTE, 7, DAY, 37, tolerance=1.5) is None


def test_more_images_in_a_minute_or_a_day_than_the_tier_admits_is_an_excess() -> None:
    minute = judge(FREE, MINUTE, 8, DAY, 8, tolerance=1.5)
    assert minute is not None and (minute.reason, minute.window, minute.images, minute.admissible) == (
        "per_minute",
        MINUTE,
        8,
        7,
    )
    day = judge(FREE, MINUTE, 1, DAY, 38, tolerance=1.5)
    assert day is not None and (day.reason, day.window, day.admissible) == ("per_day", DAY, 37)


def _events(broker: InMemoryBroker, topic: str) -> list[object]:
    return [REGISTRY.decode(Envelope.from_bytes(r.value)) for r in broker.records(topic)]


async def test_an_excess_is_flagged_once_per_window_and_suspends_when_the_operator_says_so() -> None:
    broker = InMemoryBroker()
    watch = AbuseWatch(AccessState(), EventPublisher(broker.producer()), action="suspend", tolerance=1.5)
    for images in range(1, 12):
        await watch.counted("acct_bypass", "free", MINUTE, images, DAY, images)
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
    await watch.counted("acct_upgraded", "free", MINUTE, 8, DAY, 8)
    assert _events(broker, topics.ACCOUNT_FLAGS) == []
    await watch.counted("acct_free", "free", MINUTE, 8, DAY, 8)
    [flag] = _events(broker, topics.ACCOUNT_FLAGS)
    assert isinstance(flag, AccountFlagged) and flag.action == "flagged"
    assert _events(broker, topics.ACCOUNT_COMMANDS) == []
