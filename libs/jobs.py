"""The image job as a fold over its request events (pure, shared).

The requests service folds a job's events into its aggregate state to decide what
happens next; the gateway folds the same events into its read model for job status.
One fold, so both always agree on what a job's status means.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from libs.events.envelope import Event
from libs.events.schemas import (
    ImageRef,
    JobAccepted,
    JobBlocked,
    JobCancelled,
    JobCompleted,
    JobContentCleared,
    JobFailed,
    JobImageStored,
    JobProgressed,
    JobQueued,
    JobRenderStarted,
    JobRequeued,
    JobSpec,
    Usage,
)
from libs.model.interface import next_masked_count

Status = Literal["queued", "deferred", "rendering", "completed", "blocked", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "blocked", "failed", "cancelled"})


class JobState(BaseModel):
    """What is known about a job after some of its events."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str
    spec: JobSpec
    created_at: datetime
    sequence: int = 0
    status: Status = "queued"
    pass_index: int = 0
    total_passes: int = 0
    lane: str = ""
    attempt: int = 0
    """Dispatches of the render so far minus one (re-dispatches after a lost decoder)."""
    stored: list[ImageRef] = []
    content_cleared: bool = False
    images: list[ImageRef] = []
    usage: Usage | None = None
    error_code: str | None = None
    error_message: str | None = None
    blocked_stage: str | None = None
    blocked_category: str | None = None
    version: str = ""
    """The model version rendering (or that rendered) the job; empty before a decoder started it."""

    @property
    def terminal(self) -> bool:
        """Whether nothing more will happen to the job."""
        return self.status in TERMINAL


def new_job(job_id: str, spec: JobSpec, created_at: datetime, sequence: int = 0) -> JobState:
    """A job as it stands before anything but its acceptance happened: queued, every pass ahead.

    The one constructor of a job's first state, so the gateway's seed, the fold of
    `JobAccepted` and a rebuilt read model cannot disagree on it.

    Args:
        job_id: The job.
        spec: What it renders (its `passes` are the passes ahead).
        created_at: When the gateway took it.
        sequence: The sequence of the event this state follows (0: none yet, the gateway's seed).

    Returns:
        The queued state.
    """
    return JobState(job_id=job_id, spec=spec, created_at=created_at, sequence=sequence, total_passes=spec.passes)


def accepted_seed(accepted: JobAccepted) -> JobState:
    """A job's revision 0 in the gateway's read model, as its `JobAccepted` gives it: what the
    gateway that took the job seeded, and what a job that reached the requests service without
    a gateway (or a rebuilt read model) gets from the event."""
    return new_job(accepted.job_id, accepted.spec, accepted.created_at)


def evolve(state: JobState | None, event: Event, sequence: int) -> JobState | None:
    """Apply one request event to a job's state.

    Args:
        state: The state before the event (None before JobAccepted).
        event: A request event (other payloads leave the state unchanged).
        sequence: The event's sequence number in the job's stream.

    Returns:
        The new state; None only while the job has not been accepted.
    """
    if isinstance(event, JobAccepted):
        return new_job(event.job_id, event.spec, event.created_at, sequence)
    if state is None:
        return None
    update: dict[str, object] = {"sequence": sequence}
    if isinstance(event, JobQueued):
        update |= {"status": "queued", "lane": event.lane}
    elif isinstance(event, JobRenderStarted):
        # A resumed render starts at its checkpoint's pass.
        update |= {
            "status": "rendering",
            "attempt": event.attempt,
            "pass_index": max(state.pass_index, event.pass_index),
            "version": event.version,
        }
    elif isinstance(event, JobRequeued):
        update |= {"status": "queued", "attempt": event.attempt}
    elif isinstance(event, JobProgressed):
        update |= {"status": "rendering", "pass_index": event.pass_index, "total_passes": event.total_passes}
    elif isinstance(event, JobImageStored):
        others = [ref for ref in state.stored if ref.index != event.image.index]
        update |= {"stored": sorted([*others, event.image], key=lambda ref: ref.index)}
    elif isinstance(event, JobContentCleared):
        update |= {"content_cleared": True}
    elif isinstance(event, JobCompleted):
        update |= {
            "status": "completed",
            "images": event.images,
            "usage": event.usage,
            "pass_index": state.total_passes,
        }
    elif isinstance(event, JobBlocked):
        update |= {
            "status": "blocked",
            "error_code": "moderation_blocked",
            "error_message": event.message,
            "blocked_stage": event.stage,
            "blocked_category": event.category,
        }
    elif isinstance(event, JobCancelled):
        update |= {"status": "cancelled", "error_code": "job_cancelled", "error_message": "The job was cancelled."}
    elif isinstance(event, JobFailed):
        update |= {"status": "failed", "error_code": event.code, "error_message": event.message}
    else:
        return state
    return state.model_copy(update=update)


def preview_passes(total_passes: int, partial_images: int) -> list[int]:
    """Evenly spaced passes (completed-pass counts) whose previews a stream shows.

    Args:
        total_passes: Passes of the render.
        partial_images: Partial images asked for (0-3).

    Returns:
        Up to `partial_images` distinct passes in 1..total_passes-1, ascending.
    """
    passes = {
        min(total_passes - 1, max(1, round((i + 1) * total_passes / (partial_images + 1))))
        for i in range(partial_images)
    }
    return sorted(p for p in passes if 1 <= p < total_passes)


GRID_CELLS = 16 * 16
"""Cells of a token grid, for the schedule of content checks."""

CHECK_FROM_DRAWN = 1 / 3
"""Content is checked once at least this share of a fresh render's cells is drawn."""


def content_check_passes(total_passes: int, tweak: bool = False, stride: int = 1) -> list[int]:
    """The passes (completed-pass counts) after which the safety service looks at a render.

    Why not every pass: before about a third of its cells are drawn, a fresh render's
    picture is mostly the prior's blur, with nothing a classifier can find that a later
    pass would not show more clearly (on the cosine schedule that is passes 3-4 of 4, 5-8
    of 8 and 7-12 of 12). A tweak starts from a finished picture, so every one of its passes
    is checked. The last pass is always checked: its verdict clears the images.

    Args:
        total_passes: Passes of the render.
        tweak: Whether the render starts from an existing image.
        stride: Check only every k-th pass of those (an operator's knob; 1 checks them all).

    Returns:
        Ascending completed-pass counts, the last pass included.
    """
    if tweak:
        risky = list(range(1, total_passes + 1))
    else:
        risky, masked = [], GRID_CELLS
        for index in range(total_passes):
            masked = next_masked_count(masked, index, total_passes)
            if masked <= GRID_CELLS * (1 - CHECK_FROM_DRAWN):
                risky.append(index + 1)
    step = max(1, stride)
    return [p for p in risky if p == total_passes or p % step == 0]
