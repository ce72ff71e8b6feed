"""What a render does next at each pass boundary: the decoder's pure decisions.

No model, no Kafka, no clock: the handler describes a render as a `RenderPlan` (how many
passes it takes, how many are done, which ones carry previews) and asks `next_step` what
to do at every pass boundary. Aborts are decided here too, from the set of aborted job ids
the control topic fills, so every rule about when a render stops is in one place and is
unit-tested without a model.

A plan can start at any completed-pass count, so a render resumed from a checkpoint is
scheduled exactly like the uninterrupted one from that pass on.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass, replace

DEFAULT_ABORT_MEMORY = 10_000
"""How many aborted job ids a decoder remembers (the oldest are forgotten first)."""


class AbortedJobs:
    """The ids of the most recently aborted jobs, bounded so memory stays flat.

    An abort may arrive before its job reaches the decoder (the job still waits in its
    lane) or while it renders; either way the id is looked up at the job's next pass
    boundary. Forgetting old ids is safe: a job is aborted at most minutes after it was
    queued, long before ten thousand later aborts push it out.
    """

    def __init__(self, capacity: int = DEFAULT_ABORT_MEMORY) -> None:
        """Creates an empty set.

        Args:
            capacity: Most ids kept, >= 1.
        """
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        # A dict is an insertion-ordered set: the first key is the oldest abort.
        self._ids: dict[str, None] = {}

    def add(self, job_id: str) -> None:
        """Remembers an aborted job, forgetting the oldest one when full."""
        self._ids.pop(job_id, None)
        self._ids[job_id] = None
        if len(self._ids) > self._capacity:
            del self._ids[next(iter(self._ids))]

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


@dataclass(frozen=True)
class RenderPlan:
    """A render as the scheduler sees it: counts only, no tokens.

    Attributes:
        job_id: The job being rendered.
        total_passes: Passes of the whole render, >= 1.
        preview_passes: Completed-pass counts after which progress carries previews.
        completed: Passes completed so far (0 for a fresh render, k when resumed at pass k).
    """

    job_id: str
    total_passes: int
    preview_passes: frozenset[int] = frozenset()
    completed: int = 0

    def __post_init__(self) -> None:
        if self.total_passes < 1:
            raise ValueError(f"a render needs at least one pass, got {self.total_passes}")
        if not 0 <= self.completed <= self.total_passes:
            raise ValueError(f"{self.completed} passes completed is invalid for {self.total_passes} passes")

    def advanced(self) -> RenderPlan:
        """The plan after one more pass completed."""
        return replace(self, completed=self.completed + 1)


def plan_render(job_id: str, total_passes: int, preview_passes: Iterable[int] = (), completed: int = 0) -> RenderPlan:
    """Builds the plan of a render; preview passes outside 1..total_passes are dropped.

    Args:
        job_id: The job.
        total_passes: Passes of the whole render.
        preview_passes: Requested completed-pass counts for previews (any order, repeats allowed).
        completed: Passes already completed (a resumed render).

    Returns:
        The plan.

    Raises:
        ValueError: total_passes < 1, or completed outside 0..total_passes.
    """
    previews = frozenset(p for p in preview_passes if 1 <= p <= total_passes)
    return RenderPlan(job_id, total_passes, previews, completed)


@dataclass(frozen=True)
class RunPass:
    """Run one model pass; afterwards `pass_index` passes are complete."""

    job_id: str
    pass_index: int
    total_passes: int
    preview: bool


@dataclass(frozen=True)
class Stop:
    """The job was aborted: end the render after `pass_index` completed passes, storing nothing."""

    job_id: str
    pass_index: int


@dataclass(frozen=True)
class Finish:
    """Every pass ran and nobody aborted: turn the final grids into images."""

    job_id: str


Decision = RunPass | Stop | Finish


def next_step(plan: RenderPlan, aborted: Container[str]) -> Decision:
    """Decides what a render does at its current pass boundary.

    An abort wins over finishing: when the abort arrives during the last pass, the
    images are not stored (a job blocked by the content check must not keep them).

    Args:
        plan: The render, with the passes completed so far.
        aborted: Ids of aborted jobs.

    Returns:
        Stop when the job is aborted, Finish when all passes ran, else the next pass.
    """
    if plan.job_id in aborted:
        return Stop(plan.job_id, plan.completed)
    if plan.completed >= plan.total_passes:
        return Finish(plan.job_id)
    upcoming = plan.completed + 1
    return RunPass(plan.job_id, upcoming, plan.total_passes, upcoming in plan.preview_passes)
