"""The usage ledger's token buckets, daily quotas and in-flight jobs, and the header durations."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from libs.access import DEFAULT_POLICIES
from libs.ratelimit import UsageLedger, format_duration

POLICY = DEFAULT_POLICIES["free"].model_copy(
    update={"requests_per_minute": 6, "images_per_day": 10, "concurrent_jobs": 100}
)
T0 = datetime(2026, 3, 25, 12, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.02, "20ms"), (1, "1s"), (1.5, "1.5s"), (59.9, "59.9s"), (360, "6m0s"), (3723, "1h2m3s")],
)
def test_durations_read_like_openais(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_a_bucket_refills_at_its_rate() -> None:
    ledger = UsageLedger()
    decisions = [ledger.admit(f"j{i}", "a", "free", POLICY, 1, T0) for i in range(7)]
    assert [d.allowed for d in decisions] == [True] * 6 + [False]
    assert [d.remaining for d in decisions[:6]] == [5, 4, 3, 2, 1, 0]
    refused = decisions[-1]
    assert refused.code == "rate_limit_exceeded" and refused.retry_after_s == pytest.approx(10)
    assert refused.headers()["retry-after"] == "10" and refused.headers()["x-ratelimit-reset-requests"] == "1m0s"
    assert ledger.admit("j7", "a", "free", POLICY, 1, T0 + 10).allowed  # one token every 10 s
    assert not ledger.admit("j8", "a", "free", POLICY, 1, T0 + 10).allowed


def test_commands_admitted_elsewhere_spend_the_same_bucket() -> None:
    here, there = UsageLedger(), UsageLedger()
    for i in range(4):
        assert there.admit(f"j{i}", "a", "free", POLICY, 1, T0).allowed
        here.record_command(f"j{i}", "a", "free", POLICY, 1, T0, T0)
    assert [here.admit(f"k{i}", "a", "free", POLICY, 1, T0).allowed for i in range(3)] == [True, True, False]


def test_own_commands_read_back_are_not_charged_twice() -> None:
    ledger = UsageLedger()
    assert ledger.admit("j1", "a", "free", POLICY, 2, T0).allowed
    ledger.record_command("j1", "a", "free", POLICY, 2, T0, T0)
    assert ledger.images_today("a", T0) == 2
    assert ledger.admit("j2", "a", "free", POLICY, 1, T0).remaining == 4


def test_the_days_metered_images_count_toward_the_quota_but_not_the_bucket() -> None:
    ledger = UsageLedger()
    ledger.record_metered("a", "2026-03-25", 9, T0 - 3600, T0)  # earlier today, as metering counted it
    assert ledger.images_today("a", T0) == 9
    decision = ledger.admit("j", "a", "free", POLICY, 2, T0)
    assert (decision.allowed, decision.code) == (False, "insufficient_quota")
    assert decision.headers()["x-should-retry"] == "false"
    assert ledger.admit("j", "a", "free", POLICY, 1, T0).remaining == 5
    # Other days' usage is not today's, and yesterday's images do not count today.
    ledger.record_metered("a", "2026-03-24", 50, T0 - 86400, T0)
    assert ledger.images_today("a", T0) == 10
    assert ledger.images_today("a", T0 + 12 * 3600) == 0


def test_a_completion_counts_once_before_and_after_metering_reaches_it() -> None:
    ledger = UsageLedger()
    assert ledger.admit("j1", "a", "free", POLICY, 2, T0).allowed
    ledger.record_command("j2", "a", "free", POLICY, 3, T0, T0)  # admitted by another replica
    assert ledger.images_today("a", T0) == 5
    ledger.record_end("j1", T0 + 5, completed=T0 + 4)
    ledger.record_end("j2", T0 + 6, completed=T0 + 6)
    assert (ledger.images_today("a", T0 + 6), ledger.in_flight("a", T0 + 6)) == (5, 0)
    ledger.record_metered("a", "2026-03-25", 2, T0 + 4, T0 + 7)  # j1 metered, j2 not yet
    assert ledger.images_today("a", T0 + 7) == 5
    ledger.record_metered("a", "2026-03-25", 5, T0 + 6, T0 + 8)
    assert ledger.images_today("a", T0 + 8) == 5
    assert "a" not in ledger.jobs  # both forgotten: metering holds them


def test_a_job_that_does_not_complete_gives_its_images_back() -> None:
    ledger = UsageLedger()
    assert ledger.admit("j1", "a", "free", POLICY, 4, T0).allowed
    assert ledger.admit("j2", "a", "free", POLICY, 4, T0).allowed
    assert ledger.admit("j3", "a", "free", POLICY, 4, T0).code == "insufficient_quota"
    ledger.record_end("j1", T0 + 1)  # blocked, failed or cancelled
    assert ledger.images_today("a", T0 + 1) == 4
    assert ledger.admit("j3", "a", "free", POLICY, 4, T0 + 1).allowed


def test_a_replica_starting_late_counts_the_metered_day_and_one_hold_of_traffic() -> None:
    """What a gateway reads at start: the metered usage, then commands and ends of the last
    hold, in any order (the end of j2 before its command, metering after both)."""
    ledger = UsageLedger(job_hold_s=600)
    ledger.record_end("j2", T0, completed=T0 - 10)
    ledger.record_command("j1", "a", "free", POLICY, 1, T0 - 100, T0)  # still in flight
    ledger.record_command("j2", "a", "free", POLICY, 2, T0 - 200, T0)  # completed, not yet metered
    ledger.record_command("j3", "a", "free", POLICY, 3, T0 - 300, T0)
    ledger.record_end("j3", T0, completed=T0 - 250)  # completed and metered below
    ledger.record_metered("a", "2026-03-25", 3 + 4, T0 - 250, T0)  # j3 and 4 images from the morning
    assert ledger.images_today("a", T0) == 1 + 2 + 7
    assert ledger.in_flight("a", T0) == 1
    assert ledger.admit("j4", "a", "free", POLICY, 1, T0).code == "insufficient_quota"


def test_jobs_in_flight_end_by_event_or_after_the_hold() -> None:
    ledger = UsageLedger(job_hold_s=600)
    policy = POLICY.model_copy(update={"concurrent_jobs": 2})
    assert ledger.admit("j1", "a", "free", policy, 1, T0).allowed
    ledger.record_command("j2", "a", "free", policy, 1, T0, T0)  # admitted by another replica
    refused = ledger.admit("j3", "a", "free", policy, 1, T0)
    assert (refused.allowed, refused.code) == (False, "rate_limit_exceeded")
    ledger.record_end("j2", T0 + 1)
    assert ledger.in_flight("a", T0 + 1) == 1
    assert ledger.in_flight("a", T0 + 600) == 0  # j1's end was never seen: released after the hold


def test_an_end_read_before_its_command_still_ends_the_job() -> None:
    ledger = UsageLedger()
    ledger.record_end("j1", T0)
    ledger.record_command("j1", "a", "free", POLICY, 1, T0, T0)
    assert ledger.in_flight("a", T0) == 0


def test_raising_a_limit_grants_the_difference_at_once() -> None:
    ledger = UsageLedger()
    for i in range(6):
        ledger.admit(f"j{i}", "a", "free", POLICY, 1, T0)
    raised = POLICY.model_copy(update={"requests_per_minute": 10})
    decision = ledger.admit("j6", "a", "free", raised, 1, T0)
    assert (decision.allowed, decision.limit, decision.remaining) == (True, 10, 3)


def test_a_tier_wide_bucket_holds_every_account_of_the_tier() -> None:
    ledger = UsageLedger()
    policy = POLICY.model_copy(update={"tier_requests_per_minute": 2})
    assert ledger.admit("j1", "a", "free", policy, 1, T0).allowed
    assert ledger.admit("j2", "b", "free", policy, 1, T0).allowed
    refused = ledger.admit("j3", "c", "free", policy, 1, T0)
    assert not refused.allowed and "at capacity" in refused.message
