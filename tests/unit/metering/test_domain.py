"""What the metering service counts (pure decisions; the faust app only stores and forwards)."""

from __future__ import annotations

from datetime import UTC, datetime

from libs.events.schemas import ImageRef, JobAccepted, JobBlocked, JobCompleted, JobQueued, Usage
from services.metering.domain import (
    METERED_TYPES,
    JobFacts,
    add_completed,
    completion,
    on_request_event,
    usage_from_table,
    usage_key,
)
from tests.helpers import job_spec

ACCEPTED_AT = datetime(2026, 12, 5, 23, 59, tzinfo=UTC)


def _accepted(job_id: str = "job_1", account: str = "acct_a", model: str = "darkroom-mini") -> JobAccepted:
    return JobAccepted(job_id=job_id, spec=job_spec(account_id=account, model=model, n=2), created_at=ACCEPTED_AT)


def _completed(
    job_id: str = "job_1",
    images: int = 2,
    account: str = "acct_a",
    model: str = "darkroom-mini",
    *,
    carried: bool = True,
) -> JobCompleted:
    refs = [
        ImageRef(
            index=i,
            image_id=f"img_{i}",
            object_key="k",
            tokens_key="t",
            content_type="image/png",
            size_bytes=1,
            sha256="s",
        )
        for i in range(images)
    ]
    usage = Usage(input_tokens=5, text_tokens=5, image_tokens=0, output_tokens=256 * images)
    if not carried:  # as published before completions carried their job's facts
        return JobCompleted(job_id=job_id, images=refs, usage=usage)
    facts = {"account_id": account, "tier": "plus", "model": model, "created_at": ACCEPTED_AT}
    return JobCompleted(job_id=job_id, images=refs, usage=usage, **facts)


def test_a_completed_job_is_counted_for_its_owner_on_the_day_it_was_accepted() -> None:
    ended, done = on_request_event(None, _completed())
    assert ended and done is not None
    counted = (done.account_id, done.tier, done.day, done.images, done.output_tokens)
    assert counted == ("acct_a", "plus", "2026-12-05", 2, 512)


def test_a_completion_without_its_facts_is_counted_by_the_facts_kept_of_its_job() -> None:
    kept = JobFacts(account_id="acct_b", tier="pro", model="darkroom-mini", day="2026-12-04")
    ended, done = on_request_event(kept, _completed(carried=False))
    assert ended and done is not None and (done.account_id, done.tier, done.day) == ("acct_b", "pro", "2026-12-04")
    # Accepted before metering began, nothing kept: nothing to count it by.
    assert on_request_event(None, _completed(carried=False)) == (True, None)
    assert completion(_completed(carried=False)) is None


def test_a_job_that_ends_without_images_counts_nothing() -> None:
    blocked = JobBlocked(job_id="job_1", stage="prompt", category="violence", message="no")
    assert on_request_event(None, blocked) == (True, None)


def test_a_days_usage_adds_jobs_images_and_tokens_per_model() -> None:
    first = completion(_completed("j1"))
    second = completion(_completed("j2", 1, model="amused-256"))
    assert first is not None and second is not None
    usage = add_completed(add_completed(None, first), second)
    assert (usage.jobs, usage.images, usage.output_tokens) == (2, 3, 768)
    assert {m: (u.jobs, u.images) for m, u in usage.by_model.items()} == {"darkroom-mini": (1, 2), "amused-256": (1, 1)}
    assert usage_from_table(usage.model_dump(mode="json")) == usage
    assert usage_key("acct_a", "2026-12-05") == "acct_a|2026-12-05"


def test_the_events_skipped_before_decoding_are_those_that_change_nothing() -> None:
    queued = JobQueued(job_id="job_1", lane="pro", topic="t", partition=0)
    assert {queued.TYPE, _accepted().TYPE} & METERED_TYPES == set()
    assert on_request_event(None, queued) == (False, None)
    assert on_request_event(None, _accepted()) == (False, None)
    assert {_completed().TYPE, JobBlocked.TYPE} <= METERED_TYPES


def test_a_days_usage_says_up_to_which_completion_it_counts() -> None:
    """`completed_through` is the latest completion time folded, whatever order they came in
    (the gateways count a completion themselves until it is reached)."""
    late, early = ACCEPTED_AT.replace(second=30), ACCEPTED_AT.replace(second=10)
    first = completion(_completed("j1"), at=late)
    second = completion(_completed("j2"), at=early)
    assert first is not None and second is not None and first.completed_at == late
    usage = add_completed(add_completed(None, first), second)
    assert usage.completed_through == late
    assert usage_from_table(usage.model_dump(mode="json")) == usage
    assert add_completed(None, second.model_copy(update={"completed_at": None})).completed_through is None
