"""A job's lifecycle as its request events tell it (pure, shared).

Two folds read a job's events, each into its own type: the requests service's aggregate
(`services.requests.domain.JobAggregate`, what `decide` needs: which images are stored,
whether the content was cleared) and the read side's view (`libs.readmodels.jobs.JobView`,
what the API shows: images, usage, errors, the model version). What both must agree on
lives here, once: the statuses and which of them end a job, the fields every fold keeps,
the one constructor of a job's first state and how each request event moves a job along
(`advance`), so the service that decides and the gateway that answers cannot disagree on
what a job's status means.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from libs.events.envelope import Event
from libs.events.schemas import (
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
)
from libs.model.interface import next_masked_count

Status = Literal["queued", "deferred", "rendering", "completed", "blocked", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "blocked", "failed", "cancelled"})


class JobLifecycle(BaseModel):
    """What every fold of a job's events keeps: the job, where it stands, where it renders."""

    # Stored records and documents written while one type served both folds carry the
    # other's fields too: they are ignored on reading.
    model_config = ConfigDict(frozen=True, extra="ignore")

    job_id: str
    spec: JobSpec
    created_at: datetime
    sequence: int = 0
    status: Status = "queued"
    pass_index: int = 0
    total_passes: int = 0
    lane: str = ""
    """The lane it was queued on; empty until its prompt was allowed (not dispatched yet)."""
    attempt: int = 0
    """Dispatches of the render so far minus one (re-dispatches after a lost decoder)."""

    @property
    def terminal(self) -> bool:
        """Whether nothing more will happen to the job."""
        return self.status in TERMINAL


J = TypeVar("J", bound=JobLifecycle)


def new_job(kind: type[J], job_id: str, spec: JobSpec, created_at: datetime, sequence: int = 0) -> J:
    """A job as it stands before anything but its acceptance happened: queued, every pass ahead.

    The one constructor of a job's first state, for either fold, so the gateway's seed, the
    fold of `JobAccepted` and a rebuilt read model cannot disagree on it.

    Args:
        kind: The fold's type (the aggregate or the view).
        job_id: The job.
        spec: What it renders (its `passes` are the passes ahead).
        created_at: When the gateway took it.
        sequence: The sequence of the event this state follows (0: none yet, the gateway's seed).

    Returns:
        The queued state.
    """
    return kind(job_id=job_id, spec=spec, created_at=created_at, sequence=sequence, total_passes=spec.passes)


def _no_fields(state: JobLifecycle, event: Event) -> dict[str, object]:
    return {}


def advance(
    kind: type[J],
    state: J | None,
    event: Event,
    sequence: int,
    own: Callable[[J, Event], dict[str, object]] = _no_fields,
) -> J | None:
    """Apply one request event to a job's state: the lifecycle's fields, then the fold's own.

    Args:
        kind: The fold's type.
        state: The state before the event (None before JobAccepted).
        event: A request event (other payloads leave the state unchanged).
        sequence: The event's sequence number in the job's stream.
        own: The fold's own fields that the event changes (the lifecycle's already applied
            are not in its `state`; it sees the state before the event).

    Returns:
        The new state; None only while the job has not been accepted.
    """
    if isinstance(event, JobAccepted):
        return new_job(kind, event.job_id, event.spec, event.created_at, sequence)
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
        }
    elif isinstance(event, JobRequeued):
        update |= {"status": "queued", "attempt": event.attempt}
    elif isinstance(event, JobProgressed):
        update |= {"status": "rendering", "pass_index": event.pass_index, "total_passes": event.total_passes}
    elif isinstance(event, JobCompleted):
        update |= {"status": "completed", "pass_index": state.total_passes}
    elif isinstance(event, JobBlocked):
        update |= {"status": "blocked"}
    elif isinstance(event, JobCancelled):
        update |= {"status": "cancelled"}
    elif isinstance(event, JobFailed):
        update |= {"status": "failed"}
    elif not isinstance(event, JobImageStored | JobContentCleared):
        return state
    return state.model_copy(update=update | own(state, event))


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


def pass_reported(pass_index: int, total_passes: int, shows_pictures: bool) -> bool:
    """Whether a decoder publishes a pass's progress (`RenderProgressed`).

    Every even pass, the last, and any pass with previews a stream shows or pictures
    safety checks. The odd passes between carry only a checkpoint, which the next pass's
    replaces, so they are not published: a re-dispatched render (its decoder lost) resumes
    at most one pass before the one it had reached, and the render's lease hears from it
    every two passes. A render that leaves for another (preempted) publishes its last pass
    first, so it resumes exactly there.

    Args:
        pass_index: Passes completed, 1..total_passes.
        total_passes: Passes of the render.
        shows_pictures: Whether the pass carries previews or check pictures.
    """
    return shows_pictures or pass_index == total_passes or pass_index % 2 == 0


def reported_passes(total_passes: int, shown: Iterable[int]) -> list[int]:
    """The passes of a render whose progress its decoder publishes (`pass_reported`), given
    the passes with previews or check pictures."""
    showing = set(shown)
    return [k for k in range(1, total_passes + 1) if pass_reported(k, total_passes, k in showing)]
