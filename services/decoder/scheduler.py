"""What the decoder does at each pass boundary: its pure decisions.

No model, no Kafka, no clock. Two levels:

- one render: the engine describes it as a `RenderPlan` (how many passes it takes, how
  many are done, which ones carry previews) and asks `next_step` what it does at every
  pass boundary. Aborts are decided here too, from the set of aborted job ids the
  control topic fills, so every rule about when a render stops is in one place.
- the batch: `plan_boundary` decides which waiting jobs join the running batch and
  which renders leave it for a higher-priority job (preemption), from counts alone
  (`Slot`s), in the spirit of vLLM's `schedule()`.

A plan can start at any completed-pass count, so a render resumed from a checkpoint is
scheduled exactly like the uninterrupted one from that pass on.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
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
        check_passes: Completed-pass counts after which progress carries the pictures the
            safety service scores (always the last pass).
    """

    job_id: str
    total_passes: int
    preview_passes: frozenset[int] = frozenset()
    completed: int = 0
    check_passes: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.total_passes < 1:
            raise ValueError(f"a render needs at least one pass, got {self.total_passes}")
        if not 0 <= self.completed <= self.total_passes:
            raise ValueError(f"{self.completed} passes completed is invalid for {self.total_passes} passes")

    def advanced(self) -> RenderPlan:
        """The plan after one more pass completed."""
        return replace(self, completed=self.completed + 1)


def plan_render(
    job_id: str,
    total_passes: int,
    preview_passes: Iterable[int] = (),
    completed: int = 0,
    check_passes: Iterable[int] = (),
) -> RenderPlan:
    """Builds the plan of a render; passes outside 1..total_passes are dropped.

    Args:
        job_id: The job.
        total_passes: Passes of the whole render.
        preview_passes: Requested completed-pass counts for previews (any order, repeats allowed).
        completed: Passes already completed (a resumed render).
        check_passes: Passes whose content the safety service checks; the last pass is
            added (its verdict clears the images).

    Returns:
        The plan.

    Raises:
        ValueError: total_passes < 1, or completed outside 0..total_passes.
    """
    previews = frozenset(p for p in preview_passes if 1 <= p <= total_passes)
    checks = frozenset(p for p in check_passes if 1 <= p <= total_passes) | {total_passes}
    return RenderPlan(job_id, total_passes, previews, completed, checks)


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


# ---------------------------------------------------------------------------------------------
# The batch


@dataclass(frozen=True)
class Slot:
    """A render in the batch, or a job waiting to join it, as the batch scheduler sees it.

    Attributes:
        job_id: The job.
        priority: Its lane's priority: lower numbers first (pro and plus before free).
        images: Images it adds to the batch (the job's n).
        order: When it arrived at this decoder: a larger number is younger.
    """

    job_id: str
    priority: int
    images: int
    order: int


@dataclass(frozen=True)
class BoundaryPlan:
    """What changes in the batch at one pass boundary.

    Attributes:
        admit: Waiting jobs that join the batch now, in admission order.
        preempt: Running renders that leave it now, checkpointed, for higher-priority work.
    """

    admit: tuple[str, ...] = ()
    preempt: tuple[str, ...] = ()


def _victims(running: Sequence[Slot], priority: int, needed: int) -> list[Slot] | None:
    """The renders to preempt so that `needed` more images fit, or None if they cannot.

    Only renders of a strictly lower priority (a higher number) are candidates: the lowest
    priority first, the youngest first within it, so the least work waits again.
    """
    if needed <= 0:
        return []
    candidates = sorted((s for s in running if s.priority > priority), key=lambda s: (-s.priority, -s.order))
    chosen: list[Slot] = []
    for slot in candidates:
        if needed <= 0:
            break
        chosen.append(slot)
        needed -= slot.images
    return chosen if needed <= 0 else None


def plan_boundary(
    running: Sequence[Slot],
    waiting: Sequence[Slot],
    limit: int,
    *,
    lane_waiting: int | None = None,
    preempt: bool = True,
    mixed_limit: int | None = None,
) -> BoundaryPlan:
    """Decides which jobs join the batch and which renders leave it at a pass boundary.

    Admission takes the waiting jobs in priority order (then oldest first) while they fit
    in `limit` images; a job of more images than the limit runs alone once the batch is
    empty. The first job that does not fit stops admission, so a later, smaller job of
    the same or a lower priority never overtakes it. When that job outranks running
    renders, they are preempted (lowest priority first, youngest first) just enough for
    it to fit. A job still waiting in Kafka (`lane_waiting`, the best priority among the
    lanes with unfetched jobs) counts as a one-image job: a full batch then preempts one
    lower-priority image so the job can be fetched.

    `mixed_limit` caps a batch in which renders of different priorities meet: lower-priority
    jobs join only while the batch stays within it, and lower-priority renders beyond it
    leave (lowest priority first, youngest first). On a CPU every image in a batch slows
    every pass, so a paid render in a batch full of free ones takes several times as long
    as alone; the cap keeps it near its alone time while free renders fill the batch when
    no paid one is there. Higher-priority images are never capped.

    Args:
        running: The renders in the batch (finished and aborted ones already removed).
        waiting: Jobs fetched and waiting to join.
        limit: The batch limit, in images (>= 1).
        lane_waiting: The best (lowest) priority with jobs waiting unfetched, or None.
        preempt: Whether renders may be preempted at all.
        mixed_limit: The most images of a batch that holds renders of different priorities
            (None: the batch limit alone).

    Returns:
        The jobs to admit and the renders to preempt.
    """
    if limit < 1 or (mixed_limit is not None and mixed_limit < 1):
        raise ValueError(f"batch limits must be at least one image, got {limit} and {mixed_limit}")
    batch = list(running)
    admitted: list[str] = []
    preempted: list[str] = []

    def free() -> int:
        return limit - sum(s.images for s in batch)

    def make_room(priority: int, images: int) -> bool:
        if not preempt:
            return False
        # A job bigger than the limit needs the batch to itself.
        needed = sum(s.images for s in batch) if images > limit else images - free()
        victims = _victims(batch, priority, needed)
        if victims is None:
            return False
        for victim in victims:
            batch.remove(victim)
            preempted.append(victim.job_id)
        return True

    def over_mixed_cap(slot: Slot) -> bool:
        """Whether the slot would join a higher-priority render beyond the mixed cap."""
        if mixed_limit is None or not any(s.priority < slot.priority for s in batch):
            return False
        return sum(s.images for s in batch) + slot.images > mixed_limit

    blocked = False
    for slot in sorted(waiting, key=lambda s: (s.priority, s.order)):
        if over_mixed_cap(slot):
            blocked = True
            break
        fits = not batch or slot.images <= free()
        if not fits and not make_room(slot.priority, slot.images):
            blocked = True
            break
        batch.append(slot)
        admitted.append(slot.job_id)
    if not blocked and lane_waiting is not None and free() < 1:
        make_room(lane_waiting, 1)
    if preempt and mixed_limit is not None and batch:
        best = min(s.priority for s in batch)
        over = sum(s.images for s in batch) - mixed_limit
        lower = sorted((s for s in batch if s.priority > best), key=lambda s: (-s.priority, -s.order))
        for victim in lower:
            if over <= 0:
                break
            # Only running renders can be over the cap: admission kept waiting jobs within it.
            batch.remove(victim)
            over -= victim.images
            preempted.append(victim.job_id)
    return BoundaryPlan(tuple(admitted), tuple(preempted))
