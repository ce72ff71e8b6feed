"""The decoder's handlers: take render jobs and aborts, hand renders to the batch engine.

The scheduler decides, the runner computes, the engine (services.decoder.engine) steps
the batch and publishes what came of it; this module turns a delivered job into a
render the engine can take:

- when a job joins the batch, `RenderStarted` (its lease with the requests service
  begins);
- after every reported pass, `RenderProgressed` on the progress topic (the checkpoint of
  every image, previews on the job's preview passes, pictures on its check passes); a
  pass is reported when it is even, the last, or has previews or pictures to check
  (`libs.jobs.pass_reported`);
- after the last pass, one `StoreImage` per image on the storage topic, published before
  that pass's progress: once every pass is reported, storage already holds the images;
- when the job was aborted, `RenderStopped(aborted)` at the next pass boundary;
- when a higher-priority job needed its place, `RenderStopped(preempted)` at a pass
  boundary, after its last checkpoint: the requests service dispatches it again;
- when the model fails, `RenderStopped(failed)`; the record is then acknowledged, because
  a deterministic failure retried would fail the same way forever.

Sequence numbers order the decoder's events of one job: progress after pass k has k, and
what ends the render follows its last pass (`RenderStopped` after k passes has k + 1,
image i of T passes has T + 1 + i). A redelivered job republishes the same numbers, so
readers that keep the highest sequence ignore the repeats. `RenderStarted` has 0: it
orders nothing.

A job is taken, not merely read: the handler returns once the job joined the batch and
its `RenderStarted` is out, so the consumer commits the job's offset as the render
begins. From then on the requests service's lease, not a Kafka redelivery, brings the
job back if this decoder dies: it re-dispatches it with its last checkpoint, and the
next decoder resumes there (`RenderJob.resume_pass`).
"""

from __future__ import annotations

import base64
import logging

from libs.events import Envelope
from libs.events.schemas import BASE_VERSION, AbortRender, RenderJob
from libs.model.interface import RenderState, state_from_checkpoint, unpack_tokens
from services.decoder.engine import BatchEngine, Render, failure_message, stopped_event
from services.decoder.runner import ModelRunner
from services.decoder.scheduler import RenderPlan, plan_render
from services.decoder.versions import ModelVersions

log = logging.getLogger(__name__)


class DecoderHandlers:
    """Handles render jobs and aborts for one decoder instance.

    Args:
        runner: Makes the model calls (a job's first states: a tweak's source images).
        engine: The batch the jobs join; its aborted set is the one aborts fill.
    """

    def __init__(self, runner: ModelRunner, engine: BatchEngine, versions: ModelVersions | None = None) -> None:
        self._runner = runner
        self.engine = engine
        self._versions = versions
        self._aborted = engine.aborted

    async def on_abort(self, abort: AbortRender, envelope: Envelope) -> None:
        """Remembers an abort; the job stops at its next pass boundary (or before its first)."""
        log.info("abort of job %s (%s)", abort.job_id, abort.reason)
        self._aborted.add(abort.job_id)

    async def on_job(self, job: RenderJob, envelope: Envelope, lane: str = "", priority: int = 0) -> None:
        """Takes a job: builds its first states, then waits until it joined the batch.

        A tweak's first pass starts from the images it names (`RenderJob.edits`); a
        re-dispatched job starts from its checkpoint.

        Args:
            job: The job.
            envelope: Its envelope (correlation, causation and tier of the job's events).
            lane: The lane it came from.
            priority: That lane's priority (lower first).

        Returns once the render is in the batch and `RenderStarted` is out, so the job's
        offset is committed as it begins (see the module docstring).
        """
        engine = self.engine
        if job.job_id in self._aborted:
            # Cancelled or blocked while it waited in its lane: it never starts.
            log.info("job %s aborted before it started", job.job_id)
            stopped = stopped_event(job, job.resume_pass, "aborted")
            await engine.publish_for(job, envelope, stopped, job.resume_pass + 1)
            return
        try:
            version = await self._versions.resolve(job) if self._versions is not None else BASE_VERSION
            states = await self._initial_states(job, version)
            plan = self._plan(job, states)
        except Exception as exc:
            log.error("job %s cannot start", job.job_id, exc_info=exc)
            stopped = stopped_event(job, job.resume_pass, "failed", failure_message(exc))
            await engine.publish_for(job, envelope, stopped, job.resume_pass + 1)
            return
        await engine.submit(Render(job, envelope, lane or job.tier, priority, 0, states, plan, version=version))

    async def _initial_states(self, job: RenderJob, version: str) -> list[RenderState]:
        if job.resume_pass <= 0 and job.edits:
            # A tweak starts from the images it names (a resumed one from its checkpoint).
            return await self._runner.start_tweak(job.prompt, job.seed, job.n, job.passes, job.edits, version)
        if job.resume_pass <= 0:
            return self._runner.start(job.prompt, job.seed, job.n, job.passes, version)
        if len(job.resume_tokens) != job.n:
            raise ValueError(f"a resumed job of {job.n} images carries {len(job.resume_tokens)} checkpoints")
        model = self._runner.model_of(version)
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

    @staticmethod
    def _plan(job: RenderJob, states: list[RenderState]) -> RenderPlan:
        if len(states) != job.n:
            raise ValueError(f"{len(states)} states for a job of {job.n} images")
        if any(s.total_passes != job.passes for s in states):
            raise ValueError(f"states of another schedule than the job's {job.passes} passes")
        passes = {s.pass_index for s in states}
        if len(passes) != 1:
            raise ValueError(f"the images of one render must be at the same pass, got {sorted(passes)}")
        return plan_render(
            job.job_id, job.passes, job.preview_passes, completed=passes.pop(), check_passes=job.content_check_passes
        )
