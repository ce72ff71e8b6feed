"""The decoder's batching engine: many renders stepped together, pass by pass.

vLLM's loop, for images: at every pass boundary the engine

1. retires what left the batch: renders that finished (their images went to storage
   with their last pass), or were aborted by safety or cancelled (`RenderStopped`);
2. asks the pure scheduler (`plan_boundary`) which waiting jobs join, in priority
   order up to the batch limit in images, and which lower-priority renders leave for
   a higher-priority job (preemption); a preempted render's last pass is already
   checkpointed, so it leaves with `RenderStopped(preempted)` and the requests
   service dispatches it again to its lane, from that checkpoint, on any decoder;
3. runs one pass of every render in the batch as one `ImageModel.step` call on the
   model thread, and publishes each render's progress (its checkpoint), previews and,
   after its last pass, its images.

A render is one job's images; a job of n images counts n against the limit. Its events
are exactly those of a render alone: `RenderStarted`, one `RenderProgressed` per reported
pass (every even pass, the last, and those with previews or check pictures:
`libs.jobs.pass_reported`),
`StoreImage` per image before the last progress, or one `RenderStopped`, with the same
sequence numbers (see services.decoder.handlers). A job's images do not depend on its
batch companions: every random draw comes from the job's own seed and pass
(`libs.model.interface`), and every state of one model version is stepped by the same
batched forward (a batch holding renders of several versions steps each version's at once;
services.decoder.versions). A version other than `base` that fails a render is rolled back,
and its render is handed back like a preempted one, to resume on the version before.

Fetching follows room: the lane gate fetches only as many jobs as the batch has room
for in images, and a fetched job's offset is committed once it joined the batch and
its `RenderStarted` is out. Jobs left in Kafka stay deferred and durable; a job taken
is brought back by the requests service's lease if this decoder dies. The engine asks
the gate what waits unfetched (`Backlog`) at every boundary: with room, it gives the
fetch a moment (`MAX_ADMIT_GRACE_S`) so the jobs join at this boundary rather than the
next; with a full batch and a higher-priority job waiting, it preempts to make room. A
job that outranks a render in the batch gets a longer moment (up to a pass,
`MAX_OUTRANKING_GRACE_S`) and joins with the mixed cap applied, so its first pass is the
next one and runs without the renders the cap keeps out.

Model work runs on the runner's one thread; the event loop keeps heartbeats, aborts,
fetches and publishing flowing while a pass runs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Link, NonRecordingSpan, SpanContext
from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge, Histogram

from libs import topics
from libs.bus import EventPublisher, TransientError
from libs.events import Envelope, Event
from libs.events.schemas import (
    BASE_VERSION,
    BatchLoad,
    RenderJob,
    RenderProgressed,
    RenderStarted,
    RenderStopped,
    StoreImage,
)
from libs.imaging import CONTENT_TYPES
from libs.jobs import pass_reported
from libs.metrics import LATENCY_BUCKETS
from libs.model.interface import RenderState, pack_tokens
from services.decoder.runner import CHECK_SIZE, Drawing, ModelRunner
from services.decoder.scheduler import (
    AbortedJobs,
    BoundaryPlan,
    Finish,
    RenderPlan,
    RunPass,
    Slot,
    Stop,
    next_step,
    plan_boundary,
)

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("darkroom.decoder")

Clock = Callable[[], datetime]
VersionFailed = Callable[[str, str], Awaitable[None]]
"""(version, reason) -> reports that a model version failed on renders (a rollback)."""
Backlog = Callable[[], Awaitable[Mapping[int, int]]]
"""Jobs waiting unfetched in the decoder's lanes, per lane priority (the lane gate's view)."""

MAX_FAILURE_MESSAGE = 500
"""Characters of a model error kept in RenderStopped (the log has the traceback)."""

MAX_PUBLISH_BACKOFF_S = 5.0
"""A render's events wait out a Kafka outage, retried with backoff up to this interval."""

MAX_ADMIT_GRACE_S = 0.05
"""How long a boundary waits for jobs being fetched into free room (never longer than
half a pass): they join now instead of a whole pass later."""

MAX_OUTRANKING_GRACE_S = 0.5
"""How long a boundary waits for the fetch of a job that outranks a render in the batch
(never longer than a pass): a pass started without it keeps it waiting a whole pass, so the
wait costs the renders in the batch no more than it saves the higher-priority job."""

STATS_WINDOW_S = 20.0
"""Occupancy, pass time and images/s are averaged over this many seconds of passes."""

PASS_SECONDS = Histogram(
    "darkroom_decoder_pass_seconds",
    "Seconds of one batched pass (model step and pictures), by decoder pool.",
    ["pool"],
    buckets=LATENCY_BUCKETS,
)
BATCH_IMAGES = Gauge("darkroom_decoder_batch_images", "Images in the batch at its last pass.", ["pool"])
BATCH_LIMIT = Gauge("darkroom_decoder_batch_limit_images", "The batch limit, in images.", ["pool"])
BATCH_OCCUPANCY = Gauge(
    "darkroom_decoder_batch_occupancy",
    "Mean images per pass over the batch limit, over the recent passes.",
    ["pool"],
)
IMAGES_RENDERED = MetricCounter(
    "darkroom_decoder_images_rendered", "Images that finished all their passes, by pool and lane.", ["pool", "lane"]
)
RENDERS_PREEMPTED = MetricCounter(
    "darkroom_decoder_renders_preempted",
    "Renders handed back to their lane for higher-priority jobs, by pool and lane.",
    ["pool", "lane"],
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def progress_event(
    job: RenderJob,
    pass_index: int,
    states: list[RenderState],
    previews: list[bytes],
    decoder: str,
    checks: list[bytes] | None = None,
) -> RenderProgressed:
    """The checkpoint published after a pass.

    Args:
        job: The job being rendered.
        pass_index: Passes completed, 1..job.passes.
        states: Every image's state after the pass.
        previews: Encoded previews per image, or empty when this pass has none.
        decoder: Instance id of this decoder.
        checks: PNGs per image for the safety service's content check, or none.
    """
    return RenderProgressed(
        job_id=job.job_id,
        pass_index=pass_index,
        total_passes=job.passes,
        tokens=[_b64(pack_tokens(s.tokens)) for s in states],
        previews=[_b64(p) for p in previews],
        check_images=[_b64(c) for c in checks or []],
        decoder=decoder,
    )


@dataclass(frozen=True)
class Outcome:
    """One render's pass: its new states and the pictures drawn for it."""

    states: list[RenderState]
    previews: list[bytes]
    finals: list[bytes]
    checks: list[bytes]


def store_events(
    job: RenderJob,
    states: list[RenderState],
    images: list[bytes],
    created_at: datetime,
    version: str = BASE_VERSION,
) -> list[StoreImage]:
    """The images handed to storage when a render finished, one per image of the job.

    Args:
        job: The finished job.
        states: The final states (no masked cell), image i rendered with seed + i.
        images: The encoded final images, in the same order.
        created_at: When the images were made.
        version: The model version that rendered them.
    """
    return [
        StoreImage(
            job_id=job.job_id,
            index=i,
            account_id=job.account_id,
            prompt=job.prompt,
            model=job.model,
            seed=state.seed,
            size=job.size,
            output_format=job.output_format,
            content_type=CONTENT_TYPES[job.output_format],
            data=_b64(image),
            tokens=_b64(pack_tokens(state.tokens)),
            created_at=created_at,
            parent_image_id=job.edits[i % len(job.edits)].parent_image_id if job.edits else None,
            version=version,
        )
        for i, (state, image) in enumerate(zip(states, images, strict=True))
    ]


def failure_message(exc: Exception) -> str:
    """What a RenderStopped(failed) says of an error."""
    return f"{type(exc).__name__}: {exc}"[:MAX_FAILURE_MESSAGE]


def stopped_event(
    job: RenderJob, pass_index: int, reason: Literal["aborted", "failed", "preempted"], message: str = ""
) -> RenderStopped:
    """A render that leaves the decoder after `pass_index` passes without images.

    Published with sequence pass_index + 1 (it follows the render's last pass).
    """
    return RenderStopped(job_id=job.job_id, pass_index=pass_index, reason=reason, message=message, attempt=job.attempt)


@dataclass(eq=False)
class Render:
    """One job's images in (or waiting for) the batch.

    Attributes:
        job: The job.
        cause: The job's envelope: correlation, causation and tier of every event.
        lane: The lane it was taken from.
        priority: That lane's priority (lower first).
        order: Arrival order at this engine (larger is younger).
        states: One state per image, all at `plan.completed` passes.
        plan: Passes done and to do.
        link: The span of the job's delivery, linked from every batch step it is in.
        started: The publishing of its `RenderStarted` (its later events wait for it).
        version: The model version it renders with (libs.releases).
        unreported: Whether its last pass's progress was not published
            (`libs.jobs.pass_reported`); it is, before the render leaves for another.
    """

    job: RenderJob
    cause: Envelope
    lane: str
    priority: int
    order: int
    states: list[RenderState]
    plan: RenderPlan
    link: SpanContext | None = None
    started: asyncio.Task[None] | None = None
    version: str = BASE_VERSION
    unreported: bool = False

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def slot(self) -> Slot:
        return Slot(self.job.job_id, self.priority, self.job.n, self.order)


@dataclass(eq=False)
class _Waiting:
    render: Render
    admitted: asyncio.Future[None]


@dataclass
class BatchStats:
    """Occupancy, pass time, throughput and preemptions, for heartbeats and metrics."""

    limit: int
    pool: str
    clock: Callable[[], float] = time.monotonic
    passes_run: int = 0
    _passes: deque[tuple[float, int, float]] = field(default_factory=deque)
    _finished: deque[tuple[float, str, int]] = field(default_factory=deque)
    preempted: Counter[str] = field(default_factory=Counter)

    def record_pass(self, images: int, seconds: float) -> None:
        """One batched pass of `images` images took `seconds`."""
        self.passes_run += 1
        self._passes.append((self.clock(), images, seconds))
        self._trim()
        PASS_SECONDS.labels(self.pool).observe(seconds)
        BATCH_IMAGES.labels(self.pool).set(images)
        BATCH_LIMIT.labels(self.pool).set(self.limit)
        BATCH_OCCUPANCY.labels(self.pool).set(self.occupancy())

    def record_finished(self, lane: str, images: int) -> None:
        """A render of the lane finished all its passes."""
        self._finished.append((self.clock(), lane, images))
        self._trim()
        IMAGES_RENDERED.labels(self.pool, lane).inc(images)

    def record_preempted(self, lane: str) -> None:
        """A render of the lane left the batch for a higher-priority job."""
        self.preempted[lane] += 1
        RENDERS_PREEMPTED.labels(self.pool, lane).inc()

    def occupancy(self) -> float:
        """Mean images per pass over the limit, over the window (0 before the first pass)."""
        passes = list(self._passes)
        return sum(images for _, images, _ in passes) / (len(passes) * self.limit) if passes else 0.0

    def _trim(self) -> None:
        horizon = self.clock() - STATS_WINDOW_S
        while self._passes and self._passes[0][0] < horizon:
            self._passes.popleft()
        while self._finished and self._finished[0][0] < horizon:
            self._finished.popleft()

    def images_per_s(self, lane: str | None = None) -> float:
        """Images finished per second over the window (of one lane, or all)."""
        self._trim()
        done = sum(images for _, name, images in self._finished if lane is None or name == lane)
        return done / STATS_WINDOW_S

    def mean_pass_s(self) -> float:
        """Mean seconds per batched pass over the window (0 before the first pass)."""
        self._trim()
        return sum(seconds for _, _, seconds in self._passes) / len(self._passes) if self._passes else 0.0

    def report(self, images_now: int) -> BatchLoad:
        """The batch figures of the window."""
        self._trim()
        occupancy = self.occupancy()
        pass_s = self.mean_pass_s()
        return BatchLoad(
            pool=self.pool,
            limit=self.limit,
            images=images_now,
            occupancy=round(occupancy, 4),
            pass_s=round(pass_s, 4),
            images_per_s=round(self.images_per_s(), 4),
            passes=self.passes_run,
        )

    def lanes(self) -> set[str]:
        """The lanes this decoder finished or preempted renders of, in the window or ever."""
        return {name for _, name, _ in self._finished} | set(self.preempted)


class BatchEngine:
    """Steps the renders of one decoder instance together (see the module docstring).

    Args:
        runner: Makes the model calls.
        publisher: Publishes the decoder's events.
        decoder_id: This instance's id, carried in progress events.
        limit: The batch limit, in images (>= 1).
        preempt: Whether lower-priority renders leave the batch for waiting paid jobs.
        mixed_limit: The most images of a batch where a higher-priority render meets
            lower-priority ones (`plan_boundary`); None: the batch limit alone.
        aborted: The aborted job ids this instance has seen.
        clock: The time stamped on stored images.
        pool: The decoder pool, for reports.
        version_failed: Told when a version other than `base` fails a render; the render
            then leaves the batch as preempted, so it is dispatched again and rendered by
            the version before it from its last checkpoint. Without it such a render fails.
    """

    def __init__(
        self,
        runner: ModelRunner,
        publisher: EventPublisher,
        decoder_id: str,
        *,
        limit: int,
        preempt: bool = True,
        mixed_limit: int | None = None,
        aborted: AbortedJobs | None = None,
        clock: Clock = lambda: datetime.now(UTC),
        pool: str = "consumer",
        version_failed: VersionFailed | None = None,
    ) -> None:
        self._runner = runner
        self._publisher = publisher
        self._decoder_id = decoder_id
        self.preempt = preempt
        self.mixed_limit = mixed_limit
        self.aborted = aborted if aborted is not None else AbortedJobs()
        self._clock = clock
        self._version_failed = version_failed
        self._running: list[Render] = []
        self._waiting: list[_Waiting] = []
        self._arrivals = 0
        self._backlog: Backlog | None = None
        self._room = asyncio.Event()
        self._arrived = asyncio.Event()
        self._closed = False
        self.stats = BatchStats(limit, pool)
        self.set_limit(limit)

    # -- what the consumer side sees ---------------------------------------------------------

    def set_limit(self, limit: int) -> None:
        """Changes the batch limit (the decoder sets it once its model's device is known)."""
        if limit < 1:
            raise ValueError(f"the batch limit must be at least one image, got {limit}")
        self.limit = limit
        self.stats.limit = limit
        self._room.set()

    def follow_backlog(self, backlog: Backlog) -> None:
        """Tells the engine how to see the jobs waiting unfetched in its lanes."""
        self._backlog = backlog

    @property
    def images(self) -> int:
        """Images in the batch now."""
        return sum(r.job.n for r in self._running)

    def room(self) -> int:
        """Images the batch can still take, counting the jobs waiting to join."""
        return self.limit - self.images - sum(w.render.job.n for w in self._waiting)

    def room_for(self, priority: int) -> int:
        """Images a job of this lane priority could take now: `room`, or less where the batch
        holds a higher-priority render and the mixed cap (`mixed_limit`) keeps this job out."""
        room = self.room()
        if self.mixed_limit is None:
            return room
        slots = [r.slot for r in self._running] + [w.render.slot for w in self._waiting]
        if any(s.priority < priority for s in slots):
            room = min(room, self.mixed_limit - sum(s.images for s in slots))
        return room

    async def wait_for_room(self) -> int:
        """Returns the room (>= 1 image) once the batch has some."""
        while self.room() < 1:
            self._room.clear()
            await self._room.wait()
        return self.room()

    def running(self) -> list[str]:
        """The job ids in the batch, oldest first."""
        return [r.job_id for r in self._running]

    def report(self) -> BatchLoad:
        """The batch figures for heartbeats."""
        return self.stats.report(self.images)

    async def submit(self, render: Render) -> None:
        """Queues a job for the batch; returns once it joined and its `RenderStarted` is out.

        A job aborted while it waits is stopped without a pass (`RenderStopped` aborted)
        and returns too. A job this engine already renders or holds (a redelivery of the
        same attempt) returns at once.

        Raises:
            asyncio.CancelledError: the engine stopped before the job joined (the job's
                offset is then not committed, and Kafka delivers it again).
        """
        if self._closed:
            raise asyncio.CancelledError("the decoder is stopping")
        held = [r for r in [*self._running, *(w.render for w in self._waiting)] if r.job_id == render.job_id]
        if any(r.job.attempt >= render.job.attempt for r in held):
            log.info("job %s attempt %d is already in this decoder", render.job_id, render.job.attempt)
            return
        self._arrivals += 1
        render.order = self._arrivals
        span = trace.get_current_span().get_span_context()
        render.link = span if span.is_valid else None
        waiting = _Waiting(render, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        self._arrived.set()
        await waiting.admitted

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Runs boundaries and passes until stopped; renders still in the batch are left to
        their leases, jobs still waiting to Kafka's redelivery."""
        try:
            while not stop.is_set():
                await self._boundary()
                if self._running:
                    await self._step()
                else:
                    await self._idle(stop)
        finally:
            self._closed = True
            for waiting in self._waiting:
                if not waiting.admitted.done():
                    waiting.admitted.cancel()
            self._waiting.clear()

    async def _idle(self, stop: asyncio.Event) -> None:
        if self._waiting:
            return
        self._arrived.clear()
        arrived = asyncio.create_task(self._arrived.wait())
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({arrived, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            arrived.cancel()
            stopped.cancel()

    async def _boundary(self) -> None:
        """Retires, preempts and admits (see the module docstring)."""
        await self._retire()
        backlog = await self._backlog() if self._backlog is not None else {}
        best = min((p for p, jobs in backlog.items() if jobs > 0), default=None)
        fetchable = backlog.get(best, 0) if best is not None else 0
        outranking = best is not None and any(r.slot.priority > best for r in self._running)
        # Only room those jobs may take is worth a wait: none where the mixed cap keeps them out.
        room = self.room_for(best) if best is not None else 0
        if fetchable and room > 0:
            await self._await_arrivals(min(room, fetchable), outranking)
        plan = self._plan(lane_waiting=best, preempt=self.preempt)
        await self._preempt(plan.preempt)
        self._admit(plan.admit)
        if plan.preempt and fetchable and outranking:
            # Room was made for a job still in Kafka (it may have been fetched while the
            # preempted renders were handed back): it joins at this boundary, and renders
            # beyond the mixed cap leave now rather than share its first pass. (Renders that
            # left for a job already fetched make no room for one that waits below them.)
            # The backlog is read again: a job fetched during the first wait has joined
            # already, and no job may be left to wait for.
            if best is not None and await self._unfetched_at_or_above(best):
                await self._await_arrivals(1, outranking=True)
            plan = self._plan(lane_waiting=None, preempt=self.preempt)
            await self._preempt(plan.preempt)
            self._admit(plan.admit)

    async def _unfetched_at_or_above(self, priority: int) -> bool:
        """Whether a job of this lane priority, or of a higher one, still waits unfetched."""
        backlog = await self._backlog() if self._backlog is not None else {}
        return any(jobs > 0 and lane <= priority for lane, jobs in backlog.items())

    def _plan(self, lane_waiting: int | None, preempt: bool) -> BoundaryPlan:
        running = [r.slot for r in self._running]
        waiting = [w.render.slot for w in self._waiting]
        return plan_boundary(
            running, waiting, self.limit, lane_waiting=lane_waiting, preempt=preempt, mixed_limit=self.mixed_limit
        )

    async def _await_arrivals(self, images: int, outranking: bool = False) -> None:
        """Waits until jobs of `images` images wait to join: at most `MAX_ADMIT_GRACE_S` and
        half a mean pass, or for jobs that outrank a render in the batch at most
        `MAX_OUTRANKING_GRACE_S` and a whole mean pass."""
        self._room.set()
        loop = asyncio.get_running_loop()
        longest_s, share = (MAX_OUTRANKING_GRACE_S, 1.0) if outranking else (MAX_ADMIT_GRACE_S, 0.5)
        pass_s = self.stats.mean_pass_s()
        grace = min(longest_s, share * pass_s) if pass_s > 0 else longest_s
        deadline = loop.time() + grace
        while sum(w.render.job.n for w in self._waiting) < images:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    async def _retire(self) -> None:
        stops: list[Awaitable[None]] = []
        keep: list[Render] = []
        for render in self._running:
            if render.started is not None and render.started.done() and render.started.exception() is not None:
                log.error("job %s dropped: its start was not published", render.job_id)
                continue
            match next_step(render.plan, self.aborted):
                case Stop(pass_index=done):
                    log.info("job %s aborted after pass %d of %d", render.job_id, done, render.job.passes)
                    stopped = stopped_event(render.job, done, "aborted")
                    stops.append(self._publish_after_start(render, topics.RENDER_PROGRESS, stopped, done + 1))
                case Finish():
                    log.debug("job %s rendered: %d images", render.job_id, render.job.n)
                    self.stats.record_finished(render.lane, render.job.n)
                case RunPass():
                    keep.append(render)
        self._running = keep
        still: list[_Waiting] = []
        for waiting in self._waiting:
            render = waiting.render
            if render.job_id in self.aborted:
                # Cancelled or blocked while it waited to join: it never starts.
                log.info("job %s aborted before it started", render.job_id)
                stops.append(self._stop_waiting(waiting, stopped_event(render.job, render.plan.completed, "aborted")))
            else:
                still.append(waiting)
        self._waiting = still
        if stops:
            await asyncio.gather(*stops)
        self._room.set()

    async def _stop_waiting(self, waiting: _Waiting, stopped: RenderStopped) -> None:
        try:
            await self._publish(topics.RENDER_PROGRESS, stopped, waiting.render, stopped.pass_index + 1)
        except Exception as exc:  # noqa: BLE001 - the handler sees it; Kafka redelivers the job
            if not waiting.admitted.done():
                waiting.admitted.set_exception(exc)
            return
        if not waiting.admitted.done():
            waiting.admitted.set_result(None)

    async def _preempt(self, job_ids: tuple[str, ...]) -> None:
        if not job_ids:
            return
        leaving = [r for r in self._running if r.job_id in job_ids]
        self._running = [r for r in self._running if r.job_id not in job_ids]
        for render in leaving:
            self.stats.record_preempted(render.lane)
            log.info(
                "job %s (%s) preempted after pass %d of %d",
                render.job_id,
                render.lane,
                render.plan.completed,
                render.job.passes,
            )
        await asyncio.gather(
            *(
                self._hand_back(render, stopped_event(render.job, render.plan.completed, "preempted"))
                for render in leaving
            )
        )
        self._room.set()

    def _admit(self, job_ids: tuple[str, ...]) -> None:
        for job_id in job_ids:
            waiting = next(w for w in self._waiting if w.render.job_id == job_id)
            self._waiting.remove(waiting)
            render = waiting.render
            self._running.append(render)
            started = RenderStarted(
                job_id=render.job_id,
                attempt=render.job.attempt,
                pass_index=render.plan.completed,
                total_passes=render.job.passes,
                decoder=self._decoder_id,
                version=render.version,
            )
            log.debug(
                "job %s attempt %d (%s) joins the batch at pass %d",
                render.job_id,
                render.job.attempt,
                render.lane,
                started.pass_index,
            )
            render.started = asyncio.create_task(self._publish(topics.RENDER_PROGRESS, started, render, 0))
            render.started.add_done_callback(functools.partial(_settle, waiting.admitted))

    async def _step(self) -> None:
        """One pass of every render in the batch, then their events."""
        renders = list(self._running)
        images = sum(r.job.n for r in renders)
        links = [Link(r.link) for r in renders if r.link is not None]
        with _tracer.start_as_current_span(
            "decoder batch step",
            links=links,
            attributes={
                "darkroom.batch.jobs": len(renders),
                "darkroom.batch.images": images,
                "darkroom.batch.limit": self.limit,
            },
        ):
            began = time.perf_counter()
            stepped = await self._step_states(renders)
            outcomes = await self._draw(stepped)
            self.stats.record_pass(images, time.perf_counter() - began)
        await asyncio.gather(*(self._report_pass(render, outcome) for render, outcome in outcomes.items()))

    async def _draw(self, stepped: dict[Render, list[RenderState] | Exception]) -> dict[Render, Outcome | Exception]:
        """The pictures each render's pass asks for, all drawn in one call: previews for
        streams, the final images, and the small pictures the safety service scores."""
        wanted: list[tuple[Render, str, Drawing]] = []
        kinds: dict[Render, tuple[bool, bool]] = {}
        """Per render: whether this pass carries previews, and whether it is the last."""
        for render, result in stepped.items():
            if isinstance(result, Exception):
                continue
            job, upcoming = render.job, render.plan.completed + 1
            grids = [s.tokens for s in result]
            previewing = upcoming in render.plan.preview_passes
            last = upcoming == render.plan.total_passes and render.job_id not in self.aborted
            kinds[render] = (previewing, last)
            # A last pass that also carries previews draws its images once.
            if previewing or last:
                drawing = Drawing(grids, job.size, job.output_format, job.output_compression, render.version)
                wanted.append((render, "images", drawing))
            if upcoming in render.plan.check_passes:
                wanted.append((render, "checks", Drawing(grids, CHECK_SIZE, "png", version=render.version)))
        drawn = await self._runner.draw([drawing for _, _, drawing in wanted]) if wanted else []
        pictures: dict[Render, dict[str, list[bytes]]] = {}
        failed: dict[Render, Exception] = {}
        for (render, kind, _), encoded in zip(wanted, drawn, strict=True):
            if isinstance(encoded, Exception):
                failed.setdefault(render, encoded)  # a failure to draw ends this job, not the batch
            else:
                pictures.setdefault(render, {})[kind] = encoded
        outcomes: dict[Render, Outcome | Exception] = {}
        for render, result in stepped.items():
            if isinstance(result, Exception) or render in failed:
                outcomes[render] = result if isinstance(result, Exception) else failed[render]
                continue
            previewing, last = kinds[render]
            mine = pictures.get(render, {})
            images = mine.get("images", [])
            outcomes[render] = Outcome(
                states=result,
                previews=images if previewing else [],
                finals=images if last else [],
                checks=mine.get("checks", []),
            )
        return outcomes

    async def _step_states(self, renders: list[Render]) -> dict[Render, list[RenderState] | Exception]:
        """One pass of every render: one batched call per model version in the batch."""
        out: dict[Render, list[RenderState] | Exception] = {}
        for version in sorted({r.version for r in renders}):
            out |= await self._step_version(version, [r for r in renders if r.version == version])
        return out

    async def _step_version(self, version: str, renders: list[Render]) -> dict[Render, list[RenderState] | Exception]:
        states = [s for r in renders for s in r.states]
        try:
            flat = await self._runner.step(states, version)
        except Exception as exc:
            if len(renders) == 1:
                return {renders[0]: exc}
            log.exception("a batched pass of %d renders failed; stepping them one by one", len(renders))
            alone: dict[Render, list[RenderState] | Exception] = {}
            for render in renders:
                try:
                    alone[render] = await self._runner.step(render.states, version)
                except Exception as exc:  # noqa: BLE001
                    alone[render] = exc
            return alone
        out: dict[Render, list[RenderState] | Exception] = {}
        at = 0
        for render in renders:
            out[render] = flat[at : at + render.job.n]
            at += render.job.n
        return out

    async def _report_pass(self, render: Render, outcome: Outcome | Exception) -> None:
        if isinstance(outcome, Exception):
            self._running.remove(render)
            done = render.plan.completed
            log.error("job %s failed after pass %d", render.job_id, done, exc_info=outcome)
            if render.version != BASE_VERSION and self._version_failed is not None:
                # The version is rolled back; the job goes back to its lane from its last
                # checkpoint, and the version before renders it.
                reason = failure_message(outcome)
                await self._version_failed(render.version, reason)
                message = f"model version {render.version} failed: {reason}"
                await self._hand_back(
                    render, stopped_event(render.job, done, "preempted", message[:MAX_FAILURE_MESSAGE])
                )
                return
            stopped = stopped_event(render.job, done, "failed", failure_message(outcome))
            await self._publish_after_start(render, topics.RENDER_PROGRESS, stopped, done + 1)
            return
        pass_index = render.plan.completed + 1
        if render.started is not None:
            await asyncio.shield(render.started)
        if outcome.finals:
            stores = store_events(render.job, outcome.states, outcome.finals, self._clock(), render.version)
            for i, event in enumerate(stores):
                await self._publish(topics.STORAGE_BLOBS, event, render, render.plan.total_passes + 1 + i)
        render.unreported = not pass_reported(
            pass_index, render.plan.total_passes, bool(outcome.previews or outcome.checks)
        )
        if not render.unreported:
            progress = progress_event(
                render.job, pass_index, outcome.states, outcome.previews, self._decoder_id, outcome.checks
            )
            await self._publish(topics.RENDER_PROGRESS, progress, render, pass_index)
        render.states = outcome.states
        render.plan = render.plan.advanced()

    async def _hand_back(self, render: Render, stopped: RenderStopped) -> None:
        """Publishes a render's `RenderStopped(preempted)`, after its last pass's progress
        if that was not published: the requests service resumes it from that pass."""
        if render.unreported:
            # An unreported pass has no previews nor check pictures: its grids are all it carries.
            done = render.plan.completed
            progress = progress_event(render.job, done, render.states, [], self._decoder_id)
            await self._publish_after_start(render, topics.RENDER_PROGRESS, progress, done)
            render.unreported = False
        await self._publish_after_start(render, topics.RENDER_PROGRESS, stopped, stopped.pass_index + 1)

    async def _publish_after_start(self, render: Render, topic: str, event: Event, sequence: int) -> None:
        if render.started is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(render.started)
        await self._publish(topic, event, render, sequence)

    async def publish_for(self, job: RenderJob, cause: Envelope, event: Event, sequence: int) -> None:
        """Publishes one of a job's events on the progress topic (a job that never joins)."""
        await self._publish_event(topics.RENDER_PROGRESS, event, job.job_id, cause, sequence)

    async def _publish(self, topic: str, event: Event, render: Render, sequence: int) -> None:
        # The engine's loop runs outside any job's trace: each job's events carry the trace
        # of its own delivery, so one trace still shows the job from HTTP in to stored image.
        parent = NonRecordingSpan(render.link) if render.link is not None else INVALID_SPAN
        with trace.use_span(parent, end_on_exit=False):
            await self._publish_event(topic, event, render.job_id, render.cause, sequence)

    async def _publish_event(self, topic: str, event: Event, job_id: str, cause: Envelope, sequence: int) -> None:
        envelope = Envelope.wrap(event, aggregate_id=job_id, sequence=sequence, caused_by=cause)
        backoff = 0.05
        while True:
            try:
                await self._publisher.publish(topic, envelope, key=job_id)
                return
            except TransientError as exc:
                log.warning("job %s: %s not published yet: %s", job_id, event.TYPE, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_PUBLISH_BACKOFF_S)


def _settle(future: asyncio.Future[None], task: asyncio.Task[None]) -> None:
    """Hands the outcome of a job's `RenderStarted` publishing to the handler waiting on it."""
    if future.done():
        return
    if task.cancelled():
        future.cancel()
    elif task.exception() is not None:
        future.set_exception(task.exception())  # type: ignore[arg-type]
    else:
        future.set_result(None)
