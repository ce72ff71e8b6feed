"""What the read side shows of a job: `JobView` (the API's job object, the admin's listing, a
followed request's end), the lifecycle libs.jobs shares with the requests service's aggregate
and the job's outcome (images, usage, error, model version); `project` folds a request event
into it. The job read model (`jobs`) stores it and the image catalog (`catalog`) records a
finished one's images, so it sits below both.
"""

from __future__ import annotations

from libs.events import Event
from libs.events.schemas import (
    ImageRef,
    JobAccepted,
    JobBlocked,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRenderStarted,
    Usage,
)
from libs.jobs import JobLifecycle, advance, new_job


class JobView(JobLifecycle):
    """A job as the read side shows it: its lifecycle and its outcome."""

    images: list[ImageRef] = []
    usage: Usage | None = None
    error_code: str | None = None
    error_message: str | None = None
    blocked_stage: str | None = None
    blocked_category: str | None = None
    version: str = ""
    """The model version rendering (or that rendered) the job; empty before a decoder started it."""


def _shown_fields(state: JobView, event: Event) -> dict[str, object]:
    if isinstance(event, JobRenderStarted):
        return {"version": event.version}
    if isinstance(event, JobCompleted):
        return {"images": event.images, "usage": event.usage}
    if isinstance(event, JobBlocked):
        return {
            "error_code": "moderation_blocked",
            "error_message": event.message,
            "blocked_stage": event.stage,
            "blocked_category": event.category,
        }
    if isinstance(event, JobCancelled):
        return {"error_code": "job_cancelled", "error_message": "The job was cancelled."}
    if isinstance(event, JobFailed):
        return {"error_code": event.code, "error_message": event.message}
    return {}


def project(state: JobView | None, event: Event, sequence: int) -> JobView | None:
    """Apply one request event to a job's view (libs.jobs.advance, with the view's own fields).

    Args:
        state: The view before the event (None before JobAccepted).
        event: A request event (other payloads leave the view unchanged).
        sequence: The event's sequence number in the job's stream.

    Returns:
        The new view; None only while the job has not been accepted.
    """
    return advance(JobView, state, event, sequence, _shown_fields)


def accepted_seed(accepted: JobAccepted) -> JobView:
    """A job's revision 0 in the gateway's read model, as its `JobAccepted` gives it: what the
    gateway that took the job seeded, and what a job that reached the requests service without
    a gateway (or a rebuilt read model) gets from the event."""
    return new_job(JobView, accepted.job_id, accepted.spec, accepted.created_at)
