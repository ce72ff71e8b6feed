"""The decoder's handlers: render jobs pass by pass and turn the results into events.

The scheduler decides, the runner computes, and this module carries the decisions out and
publishes what came of them:

- when it takes a job, `RenderStarted` (its lease with the requests service begins);
- after every pass, `RenderProgressed` on the progress topic (the checkpoint of every image,
  and previews on the job's preview passes);
- after the last pass, one `StoreImage` per image on the storage topic, published before
  that pass's progress: once every pass is reported, storage already holds the images;
- when the job was aborted, `RenderStopped(aborted)` at the next pass boundary;
- when the model fails, `RenderStopped(failed)`; the record is then acknowledged, because a
  deterministic failure retried would fail the same way forever.

Sequence numbers order the decoder's events of one job: progress after pass k has k, and
what ends the render follows its last pass (`RenderStopped` after k passes has k + 1, image
i of T passes has T + 1 + i). A redelivered job republishes the same numbers, so readers
that keep the highest sequence ignore the repeats. `RenderStarted` has 0: it orders nothing.

A job is taken, not merely read: its render runs as a task of its own and the handler
returns once `RenderStarted` is out, so the consumer commits the job's offset as the
render begins. From then on the requests service's lease, not a Kafka redelivery, brings
the job back if this decoder dies: it re-dispatches it with its last checkpoint, and the
next decoder resumes there (`RenderJob.resume_pass`). One render runs at a time; the
next job waits in the handler until the model is free.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from libs import topics
from libs.bus import EventPublisher, TransientError
from libs.events import Envelope, Event
from libs.events.schemas import AbortRender, RenderJob, RenderProgressed, RenderStarted, RenderStopped, StoreImage
from libs.imaging import CONTENT_TYPES
from libs.model.interface import RenderState, pack_tokens, state_from_checkpoint, unpack_tokens
from services.decoder.runner import ModelRunner
from services.decoder.scheduler import AbortedJobs, Finish, RenderPlan, RunPass, Stop, next_step, plan_render

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

MAX_FAILURE_MESSAGE = 500
"""Characters of a model error kept in RenderStopped (the log has the traceback)."""

MAX_PUBLISH_BACKOFF_S = 5.0
"""A render's events wait out a Kafka outage, retried with backoff up to this interval."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def progress_event(
    job: RenderJob, pass_index: int, states: list[RenderState], previews: list[bytes], decoder: str
) -> RenderProgressed:
    """The checkpoint published after a pass.

    Args:
        job: The job being rendered.
        pass_index: Passes completed, 1..job.passes.
        states: Every image's state after the pass.
        previews: Encoded previews per image, or empty when this pass has none.
        decoder: Instance id of this decoder.
    """
    return RenderProgressed(
        job_id=job.job_id,
        pass_index=pass_index,
        total_passes=job.passes,
        tokens=[_b64(pack_tokens(s.tokens)) for s in states],
        previews=[_b64(p) for p in previews],
        decoder=decoder,
    )


def store_events(
    job: RenderJob, states: list[RenderState], images: list[bytes], created_at: datetime
) -> list[StoreImage]:
    """The images handed to storage when a render finished, one per image of the job.

    Args:
        job: The finished job.
        states: The final states (no masked cell), image i rendered with seed + i.
        images: The encoded final images, in the same order.
        created_at: When the images were made.
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
        )
        for i, (state, image) in enumerate(zip(states, images, strict=True))
    ]


def _failure_message(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_FAILURE_MESSAGE]


class DecoderHandlers:
    """Handles render jobs and aborts for one decoder instance.

    Args:
        runner: Makes the model calls.
        publisher: Publishes the decoder's events.
        decoder_id: This instance's id, carried in progress events.
        aborted: The aborted job ids this instance has seen.
        clock: The time stamped on stored images.
    """

    def __init__(
        self,
        runner: ModelRunner,
        publisher: EventPublisher,
        decoder_id: str,
        aborted: AbortedJobs | None = None,
        clock: Clock = lambda: datetime.now(UTC),
    ) -> None:
        self._runner = runner
        self._publisher = publisher
        self._decoder_id = decoder_id
        self._aborted = aborted if aborted is not None else AbortedJobs()
        self._clock = clock
        self._free = asyncio.Semaphore(1)
        self._renders: set[asyncio.Task[None]] = set()

    async def wait_for_room(self) -> None:
        """Returns once the model is free for another job (the next fetch then picks one)."""
        async with self._free:
            pass

    async def on_abort(self, abort: AbortRender, envelope: Envelope) -> None:
        """Remembers an abort; the job stops at its next pass boundary (or before its first)."""
        log.info("abort of job %s (%s)", abort.job_id, abort.reason)
        self._aborted.add(abort.job_id)

    async def on_job(self, job: RenderJob, envelope: Envelope) -> None:
        """Takes a job: waits until the model is free, announces the render, starts it.

        A tweak's first pass starts from the images it names (`RenderJob.edits`).

        Returns once the render runs on its own task, so the job's offset is committed as
        it begins (see the module docstring). A fresh job starts from an empty grid, a
        re-dispatched one from its checkpoint.
        """
        await self._free.acquire()
        if job.job_id in self._aborted:
            # Cancelled or blocked while it waited in its lane: it never starts.
            self._free.release()
            log.info("job %s aborted before it started", job.job_id)
            stopped = RenderStopped(job_id=job.job_id, pass_index=job.resume_pass, reason="aborted")
            await self._publish(topics.RENDER_PROGRESS, stopped, job, job.resume_pass + 1, envelope)
            return
        try:
            states = await self._initial_states(job)
        except Exception as exc:  # noqa: BLE001 - the job is invalid for the model: fail it, once
            self._free.release()
            await self._fail(job, envelope, job.resume_pass, exc)
            return
        started = RenderStarted(
            job_id=job.job_id,
            attempt=job.attempt,
            pass_index=states[0].pass_index,
            total_passes=job.passes,
            decoder=self._decoder_id,
        )
        try:
            await self._publish(topics.RENDER_PROGRESS, started, job, 0, envelope)
        except BaseException:
            self._free.release()
            raise
        log.info("job %s attempt %d starts at pass %d", job.job_id, job.attempt, started.pass_index)
        task = asyncio.create_task(self._render_then_free(job, envelope, states), name=f"render-{job.job_id}")
        self._renders.add(task)
        task.add_done_callback(self._renders.discard)

    async def close(self) -> None:
        """Abandons the render in progress (its lease brings the job back to a decoder)."""
        for task in list(self._renders):
            task.cancel()
        await asyncio.gather(*self._renders, return_exceptions=True)

    async def _initial_states(self, job: RenderJob) -> list[RenderState]:
        if job.resume_pass <= 0 and job.edits:
            # A tweak starts from the images it names (a resumed one from its checkpoint).
            return await self._runner.start_tweak(job.prompt, job.seed, job.n, job.passes, job.edits)
        if job.resume_pass <= 0:
            return self._runner.start(job.prompt, job.seed, job.n, job.passes)
        if len(job.resume_tokens) != job.n:
            raise ValueError(f"a resumed job of {job.n} images carries {len(job.resume_tokens)} checkpoints")
        model = self._runner.model
        return [
            state_from_checkpoint(
                model,
                job.prompt,
                job.seed + i,
                job.passes,
                job.resume_pass,
                unpack_tokens(base64.b64decode(tokens), model.grid_size),
            )
            for i, tokens in enumerate(job.resume_tokens)
        ]

    async def _render_then_free(self, job: RenderJob, cause: Envelope, states: list[RenderState]) -> None:
        try:
            await self.render(job, cause, states)
        except asyncio.CancelledError:
            raise
        except Exception:  # the lease re-dispatches the job; this decoder goes on
            log.exception("render of job %s ended abnormally", job.job_id)
        finally:
            self._free.release()

    async def render(self, job: RenderJob, cause: Envelope, states: list[RenderState]) -> None:
        """Runs the remaining passes of a job's images and publishes what happens.

        Returns once the render finished, stopped or failed. Publishing waits out a Kafka
        outage (retried with backoff); model errors end the render as failed.

        Args:
            job: The job.
            cause: The envelope of the job, for correlation, causation and tier.
            states: One state per image, all at the same pass: fresh states, or states
                rebuilt from a checkpoint (`state_from_checkpoint`) to resume a render.
        """
        try:
            plan = self._plan(job, states)
        except ValueError as exc:
            await self._fail(job, cause, states[0].pass_index if states else 0, exc)
            return
        while True:
            match next_step(plan, self._aborted):
                case Stop(pass_index=done):
                    log.info("job %s aborted after pass %d of %d", job.job_id, done, job.passes)
                    stopped = RenderStopped(job_id=job.job_id, pass_index=done, reason="aborted")
                    await self._publish(topics.RENDER_PROGRESS, stopped, job, done + 1, cause)
                    return
                case Finish():
                    log.info("job %s rendered: %d images", job.job_id, job.n)
                    return
                case RunPass(pass_index=pass_index, preview=preview):
                    try:
                        states = await self._runner.step(states)
                        previews = await self._encode(job, states) if preview else []
                        last = pass_index == plan.total_passes and job.job_id not in self._aborted
                        images = await self._encode(job, states) if last else []
                    except Exception as exc:  # noqa: BLE001 - a model failure ends this job, not the service
                        await self._fail(job, cause, plan.completed, exc)
                        return
                    for i, event in enumerate(store_events(job, states, images, self._clock()) if images else []):
                        await self._publish(topics.STORAGE_BLOBS, event, job, plan.total_passes + 1 + i, cause)
                    progress = progress_event(job, pass_index, states, previews, self._decoder_id)
                    await self._publish(topics.RENDER_PROGRESS, progress, job, pass_index, cause)
                    plan = plan.advanced()

    @staticmethod
    def _plan(job: RenderJob, states: list[RenderState]) -> RenderPlan:
        if len(states) != job.n:
            raise ValueError(f"{len(states)} states for a job of {job.n} images")
        if any(s.total_passes != job.passes for s in states):
            raise ValueError(f"states of another schedule than the job's {job.passes} passes")
        passes = {s.pass_index for s in states}
        if len(passes) != 1:
            raise ValueError(f"the images of one render must be at the same pass, got {sorted(passes)}")
        return plan_render(job.job_id, job.passes, job.preview_passes, completed=passes.pop())

    async def _encode(self, job: RenderJob, states: list[RenderState]) -> list[bytes]:
        grids = [s.tokens for s in states]
        return await self._runner.encode_images(grids, job.size, job.output_format, job.output_compression)

    async def _fail(self, job: RenderJob, cause: Envelope, done: int, exc: Exception) -> None:
        log.error("job %s failed after pass %d", job.job_id, done, exc_info=exc)
        stopped = RenderStopped(job_id=job.job_id, pass_index=done, reason="failed", message=_failure_message(exc))
        await self._publish(topics.RENDER_PROGRESS, stopped, job, done + 1, cause)

    async def _publish(self, topic: str, event: Event, job: RenderJob, sequence: int, cause: Envelope) -> None:
        envelope = Envelope.wrap(event, aggregate_id=job.job_id, sequence=sequence, caused_by=cause)
        backoff = 0.05
        while True:
            try:
                await self._publisher.publish(topic, envelope, key=job.job_id)
                return
            except TransientError as exc:
                log.warning("job %s: %s not published yet: %s", job.job_id, event.TYPE, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_PUBLISH_BACKOFF_S)
