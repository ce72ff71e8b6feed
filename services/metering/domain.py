"""What the metering service counts: pure decisions over request events (no faust, no I/O).

Two steps, as the faust app runs them (services/metering/app.py):

1. per job: a job's `JobCompleted` carries its owner, tier, model and acceptance time, and
   becomes one `CompletedJob` record, keyed by account; nothing is kept per job. A
   completion published before those facts were carried is counted by the facts metering
   kept from the job's `JobAccepted` then (`JobFacts`, in the jobs tables an earlier release
   filled); a job that ends otherwise only drops such facts;
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
    JobBlocked,
    JobCancelled,
    JobCompleted,
    JobFailed,
    ModelUsage,
)


class JobFacts(BaseModel):
    """What metering kept of an accepted job until it ended, before completions carried it
    (read from the jobs tables an earlier release filled)."""

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


METERED_TYPES = frozenset(event.TYPE for event in (JobCompleted, JobBlocked, JobFailed, JobCancelled))
"""The request events metering acts on: a job's end. The rest (its acceptance, progress,
stored images) are skipped before their payload is decoded."""


def on_request_event(
    facts: JobFacts | None, event: Event, at: datetime | None = None
) -> tuple[bool, CompletedJob | None]:
    """A request event's effect on its job: whether facts kept of it (if any) are done with,
    and the completion to count, if any; `facts` is what an earlier release kept of the job,
    used only when the completion does not carry its own; `at` is the event's envelope time
    (a completion's time, which the gateways compare with `AccountUsage.completed_through`)."""
    if isinstance(event, JobCompleted):
        return True, completion(event, facts, at)
    return isinstance(event, JobBlocked | JobFailed | JobCancelled), None


def completion(event: JobCompleted, facts: JobFacts | None = None, at: datetime | None = None) -> CompletedJob | None:
    """The completion to count: by the facts the event carries, else by those kept of the
    job (None when neither is there: accepted before metering began)."""
    if event.account_id and event.created_at is not None:
        facts = JobFacts(
            account_id=event.account_id, tier=event.tier, model=event.model, day=event.created_at.date().isoformat()
        )
    if facts is None:
        return None
    return CompletedJob(
        job_id=event.job_id,
        account_id=facts.account_id,
        tier=facts.tier,
        model=facts.model,
        day=facts.day,
        images=len(event.images),
        output_tokens=event.usage.output_tokens if event.usage is not None else 0,
        completed_at=at,
    )


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
