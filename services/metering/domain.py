"""What the metering service counts: pure decisions over request events (no faust, no I/O).

Two steps, as the faust app runs them (services/metering/app.py):

1. per job (tables keyed by job id, co-partitioned with the request events): a job's facts
   (owner, tier, model, UTC day) are kept from `JobAccepted`; its `JobCompleted` becomes one
   `CompletedJob` record, keyed by account, and the facts are dropped (so a redelivered
   completion finds nothing and counts nothing); a job that ends otherwise is dropped;
2. per account-day (tables keyed by account): each `CompletedJob` is added to the day's
   usage, which is published as `AccountUsage` on the compacted usage topic.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from libs.events import Event
from libs.events.schemas import (
    AccountUsage,
    JobAccepted,
    JobBlocked,
    JobCancelled,
    JobCompleted,
    JobFailed,
    ModelUsage,
)


class JobFacts(BaseModel):
    """What metering keeps of an accepted job until it ends."""

    model_config = ConfigDict(frozen=True)

    account_id: str
    tier: str
    model: str
    day: str


class CompletedJob(BaseModel):
    """A completed job, as the per-account step counts it (keyed by account)."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    account_id: str
    tier: str
    model: str
    day: str
    images: int
    output_tokens: int
    completed_at: datetime | None = None
    """Its `JobCompleted` envelope's time (None in records from before it was kept)."""


BASELINE_HOURS = 24
"""An account's own baseline: its mean images per hour over the 24 hours before this one."""


@dataclass(frozen=True)
class Tally:
    """An account's counts after a batch of its completions, as abuse detection judges them:
    images in the minute, in the hour and in the UTC day (labelled by their start), and the
    account's mean images per hour over the BASELINE_HOURS before this hour."""

    account_id: str
    tier: str
    minute: str
    minute_images: int
    hour: str
    hour_images: int
    hourly_baseline: float
    day: str
    day_images: int


def usage_key(account_id: str, day: str) -> str:
    """The key of an account-day, in the tables and on the usage topic."""
    return f"{account_id}|{day}"


METERED_TYPES = frozenset(event.TYPE for event in (JobAccepted, JobCompleted, JobBlocked, JobFailed, JobCancelled))
"""The request events that change what metering keeps of a job; the rest (a job's
progress, its stored images) are skipped before their payload is decoded."""


def on_request_event(
    facts: JobFacts | None, event: Event, at: datetime | None = None
) -> tuple[JobFacts | None, CompletedJob | None]:
    """A request event's effect on its job: the facts to keep (None: forget the job) and
    the completion to count, if any; `at` is the event's envelope time (a completion's
    time, which the gateways compare with `AccountUsage.completed_through`)."""
    if isinstance(event, JobAccepted):
        spec = event.spec
        kept = JobFacts(
            account_id=spec.account_id, tier=spec.tier, model=spec.model, day=event.created_at.date().isoformat()
        )
        return (facts or kept), None
    if isinstance(event, JobCompleted):
        if facts is None:
            return None, None  # counted already (a redelivery), or accepted before metering began
        done = CompletedJob(
            job_id=event.job_id,
            account_id=facts.account_id,
            tier=facts.tier,
            model=facts.model,
            day=facts.day,
            images=len(event.images),
            output_tokens=event.usage.output_tokens if event.usage is not None else 0,
            completed_at=at,
        )
        return None, done
    if isinstance(event, JobBlocked | JobFailed | JobCancelled):
        return None, None
    return facts, None


def add_completed(usage: AccountUsage | None, job: CompletedJob) -> AccountUsage:
    """The account-day's usage with one more completed job."""
    by_model = dict(usage.by_model) if usage is not None else {}
    model = by_model.get(job.model) or ModelUsage()
    by_model[job.model] = ModelUsage(
        jobs=model.jobs + 1, images=model.images + job.images, output_tokens=model.output_tokens + job.output_tokens
    )
    through = usage.completed_through if usage is not None else None
    if job.completed_at is not None and (through is None or job.completed_at > through):
        through = job.completed_at
    return AccountUsage(
        account_id=job.account_id,
        day=job.day,
        tier=job.tier,
        jobs=(usage.jobs if usage else 0) + 1,
        images=(usage.images if usage else 0) + job.images,
        output_tokens=(usage.output_tokens if usage else 0) + job.output_tokens,
        by_model=by_model,
        completed_through=through,
    )


def usage_from_table(value: dict[str, Any] | None) -> AccountUsage | None:
    """A usage table value (stored as plain JSON) read back."""
    return AccountUsage.model_validate(value) if value else None
