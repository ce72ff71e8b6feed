"""The image-request process manager: pure decisions over a job's state.

`decide` takes the job's current state (`JobAggregate`, the fold of its request
events: the lifecycle libs.jobs shares with the read side, and what completion waits
for) and one input (the gateway's command, a safety verdict, decoder progress, a stored
image) and returns what follows: new request events for the job's own stream and
messages for other services. No I/O happens here; the handlers load and save
state and publish.

The flow: GenerateImage -> JobAccepted (the safety service reads the same command and
answers a prompt verdict; one that arrives before the command is held in the job's
record and decided with it); prompt allowed -> JobQueued + RenderJob on the tier's
lane; a decoder starts -> JobRenderStarted (its lease begins); each pass -> the job's
checkpoint (its pass and token grids, kept in the service's own record, not as a
request event: the decoder's progress event is the pass's one message); the safety
service reads the same progress events and answers only when a render is blocked or
its last pass is cleared; content blocked -> JobBlocked + AbortRender; an image stored
-> JobImageStored, the last pass cleared -> JobContentCleared, except for the input that
completes the job: every image stored and the last pass cleared -> JobCompleted alone, which
carries every image and means the content was cleared (one request event fewer per job).

Durability: while a job renders, its decoder must report (start, then every reported
pass, at most two passes apart: libs.jobs.pass_reported) within the lease; the lease
monitor proposes `ExpireRenderLease` when it does not, and if nothing happened since,
the job is dispatched again (JobRequeued + RenderJob of the next attempt) carrying its
last checkpoint, so the new decoder resumes from that pass.
A decoder that preempts a render for a higher-priority job says so (`RenderStopped`
preempted) after its last checkpoint; the job is dispatched again the same way
(JobRequeued + RenderJob of the next attempt, from that checkpoint, to its lane).
CancelJob -> JobCancelled (+ AbortRender once the render was dispatched).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from libs import topics
from libs.events.envelope import Event
from libs.events.schemas import (
    AbortRender,
    CancelJob,
    ExpireRenderLease,
    GenerateImage,
    ImageRef,
    ImageStored,
    JobAccepted,
    JobBlocked,
    JobCancelled,
    JobCompleted,
    JobContentCleared,
    JobFailed,
    JobImageStored,
    JobQueued,
    JobRenderStarted,
    JobRequeued,
    RenderJob,
    RenderProgressed,
    RenderStarted,
    RenderStopped,
    SafetyVerdict,
    Usage,
)
from libs.jobs import JobLifecycle, advance, content_check_passes, pass_reported, preview_passes
from libs.lanes import lane_for

IMAGE_TOKENS_PER_IMAGE = 16 * 16


class JobAggregate(JobLifecycle):
    """A job as the process manager decides on it: its lifecycle, and what its completion waits for.

    The read side folds the same events into its own view (libs.readmodels.jobs.JobView),
    with what the API shows instead (images, usage, errors).
    """

    stored: list[ImageRef] = []
    """The images stored so far, by index."""
    content_cleared: bool = False
    """Whether the safety service cleared the last pass's content."""


def _decided_fields(state: JobAggregate, event: Event) -> dict[str, object]:
    if isinstance(event, JobCompleted):
        # Its images and clearance, whether or not they came as events of their own before.
        return {"stored": list(event.images), "content_cleared": True}
    if isinstance(event, JobImageStored):
        others = [ref for ref in state.stored if ref.index != event.image.index]
        return {"stored": sorted([*others, event.image], key=lambda ref: ref.index)}
    if isinstance(event, JobContentCleared):
        return {"content_cleared": True}
    return {}


def evolve(state: JobAggregate | None, event: Event, sequence: int) -> JobAggregate | None:
    """Fold one request event into the job's aggregate: `libs.jobs.advance` (same arguments and
    result) with the fields only the aggregate keeps."""
    return advance(JobAggregate, state, event, sequence, _decided_fields)


@dataclass(frozen=True)
class Message:
    """A message for another service, with where it goes."""

    topic: str
    event: Event
    partition: int | None = None


@dataclass(frozen=True)
class Checkpoint:
    """A pass the decoder reported: the job's progress and what a re-dispatch resumes from."""

    pass_index: int
    total_passes: int
    tokens: list[str]
    """Per image, the packed token grid (base64) after the pass."""


@dataclass(frozen=True)
class Decision:
    """What an input causes: events of the job's stream, messages to others, and a new
    checkpoint of the render."""

    events: list[Event] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    checkpoint: Checkpoint | None = None
    held: SafetyVerdict | None = None
    """A prompt verdict that came before its job's command, kept until the command comes."""

    @property
    def empty(self) -> bool:
        return not self.events and not self.messages and self.checkpoint is None and self.held is None


@dataclass(frozen=True)
class Policy:
    """Tunables of the process manager."""

    content_check_stride: int = 1
    """Check content after every k-th pass of those that carry risk (the last pass is
    always checked; see libs.jobs.content_check_passes)."""


NOTHING = Decision()


def reached(state: JobAggregate, checkpoint: Checkpoint) -> JobAggregate:
    """The job's state once its decoder reported this pass."""
    return state.model_copy(
        update={"status": "rendering", "pass_index": checkpoint.pass_index, "total_passes": checkpoint.total_passes}
    )


def leased(state: JobAggregate | None) -> bool:
    """Whether a decoder holds the job's render and must keep reporting within the lease.

    The last pass's progress is published only after the images went to storage, so
    once every pass is reported nothing is left that a lost decoder could take with it.
    """
    return state is not None and state.status == "rendering" and state.pass_index < state.total_passes


def decide(
    state: JobAggregate | None,
    event: Event,
    policy: Policy = Policy(),
    checkpoint: Sequence[str] = (),
    held: SafetyVerdict | None = None,
) -> Decision:
    """Decide what an input means for a job.

    Args:
        state: The job's state, None before it was accepted.
        event: The input payload.
        policy: Tunables.
        checkpoint: The token grids (base64, per image) of the job's last reported pass,
            which a re-dispatched render resumes from.
        held: A prompt verdict that came before the job's command.

    Returns:
        The decision (empty when the input changes nothing, e.g. a duplicate).
    """
    if isinstance(event, GenerateImage):
        return _on_generate(state, event, policy, held)
    if state is None and isinstance(event, SafetyVerdict) and event.stage == "prompt":
        # The safety service read the command before this service did: keep the verdict.
        return Decision(held=event) if held is None else NOTHING
    if state is None or state.terminal:
        return NOTHING
    if isinstance(event, CancelJob):
        return _on_cancel(state, event)
    if isinstance(event, RenderStarted):
        return _on_started(state, event)
    if isinstance(event, ExpireRenderLease):
        return _on_lease_expired(state, event, checkpoint, policy)
    if isinstance(event, SafetyVerdict):
        return _on_verdict(state, event, policy)
    if isinstance(event, RenderProgressed):
        return _on_progress(state, event)
    if isinstance(event, ImageStored):
        return _on_stored(state, event)
    if isinstance(event, RenderStopped) and event.reason == "failed":
        return Decision(events=[JobFailed(job_id=state.job_id, code="render_failed", message=event.message)])
    if isinstance(event, RenderStopped) and event.reason == "preempted":
        return _on_preempted(state, event, checkpoint, policy)
    return NOTHING


def _on_generate(
    state: JobAggregate | None, command: GenerateImage, policy: Policy, held: SafetyVerdict | None
) -> Decision:
    if state is not None:
        return NOTHING  # the same job again (a retried command): already accepted
    accepted = JobAccepted(job_id=command.job_id, spec=command.spec, created_at=command.created_at)
    if held is None:
        return Decision(events=[accepted])
    # Its prompt verdict came first: accepted and queued (or blocked) at once.
    accepted_state = evolve(None, accepted, 1)
    assert accepted_state is not None  # JobAccepted always makes a state
    verdict = _on_verdict(accepted_state, held, policy)
    return Decision(events=[accepted, *verdict.events], messages=verdict.messages)


def _on_verdict(state: JobAggregate, verdict: SafetyVerdict, policy: Policy) -> Decision:
    if verdict.stage == "prompt":
        if state.lane:
            return NOTHING  # already queued: a redelivered verdict
        if not verdict.allowed:
            return _blocked(state, verdict)
        lane = lane_for(state.spec.lane or state.spec.tier, state.spec.model)
        render = _render_job(state, policy)
        return Decision(
            events=[JobQueued(job_id=state.job_id, lane=lane.name, topic=render.topic, partition=render.partition)],
            messages=[render],
        )
    if not verdict.allowed:
        decision = _blocked(state, verdict)
        abort = AbortRender(job_id=state.job_id, reason="blocked")
        return Decision(events=decision.events, messages=[Message(topics.RENDER_CONTROL, abort)])
    if verdict.pass_index < state.total_passes or state.content_cleared:
        return NOTHING
    after = state.model_copy(update={"content_cleared": True})
    completed = _completion(after, after.stored)
    if completed:
        return Decision(events=completed)  # the completion says the content was cleared
    cleared = JobContentCleared(
        job_id=state.job_id, pass_index=verdict.pass_index, policy_version=verdict.policy_version
    )
    return Decision(events=[cleared])


def _render_job(
    state: JobAggregate, policy: Policy, attempt: int = 0, resume_pass: int = 0, tokens: Sequence[str] = ()
) -> Message:
    """The render job for the job's lane partition (the same partition on every attempt)."""
    lane = lane_for(state.spec.lane or state.spec.tier, state.spec.model)
    spec = state.spec
    render = RenderJob(
        job_id=state.job_id,
        tier=spec.tier,
        account_id=spec.account_id,
        prompt=spec.prompt,
        model=spec.model,
        seed=spec.seed,
        n=spec.n,
        passes=spec.passes,
        size=spec.size,
        output_format=spec.output_format,
        output_compression=spec.output_compression,
        background=spec.background,
        preview_passes=preview_passes(spec.passes, spec.partial_images),
        edits=spec.edits,
        attempt=attempt,
        resume_pass=resume_pass,
        resume_tokens=list(tokens),
        content_check_passes=content_check_passes(spec.passes, bool(spec.edits), policy.content_check_stride),
        version=spec.version,
    )
    return Message(lane.topic, render, lane.partition_for(state.job_id))


def _on_cancel(state: JobAggregate, cancel: CancelJob) -> Decision:
    if cancel.account_id != state.spec.account_id:
        return NOTHING  # only the owner cancels (the gateway checked; this keeps the rule here too)
    cancelled = JobCancelled(job_id=state.job_id, pass_index=state.pass_index, reason=cancel.reason)
    if not state.lane:
        return Decision(events=[cancelled])  # not dispatched yet: the prompt verdict will find it ended
    abort = AbortRender(job_id=state.job_id, reason="cancelled")
    return Decision(events=[cancelled], messages=[Message(topics.RENDER_CONTROL, abort)])


def _on_started(state: JobAggregate, started: RenderStarted) -> Decision:
    if started.attempt != state.attempt or state.status != "queued" or not state.lane:
        return NOTHING  # a stale attempt, a redelivery, or already reporting progress
    event = JobRenderStarted(
        job_id=state.job_id,
        attempt=started.attempt,
        pass_index=started.pass_index,
        decoder=started.decoder,
        version=started.version,
    )
    return Decision(events=[event])


def _on_lease_expired(
    state: JobAggregate, expired: ExpireRenderLease, checkpoint: Sequence[str], policy: Policy
) -> Decision:
    if not leased(state) or (expired.attempt, expired.pass_index) != (state.attempt, state.pass_index):
        return NOTHING  # the decoder reported since the proposal (or the job ended)
    resume = state.pass_index if len(checkpoint) == state.spec.n else 0
    attempt = state.attempt + 1
    return Decision(
        events=[JobRequeued(job_id=state.job_id, attempt=attempt, resume_pass=resume)],
        messages=[_render_job(state, policy, attempt, resume, checkpoint if resume else ())],
    )


def _on_preempted(state: JobAggregate, stopped: RenderStopped, checkpoint: Sequence[str], policy: Policy) -> Decision:
    """A decoder handed the render back for a higher-priority job: dispatch it again.

    The decoder published the checkpoint of its last pass before this, on the same
    partition, so the state's checkpoint is the one to resume from. The new attempt
    goes to the back of the job's lane, where it waits (deferred, durable) like any job.
    """
    if not leased(state) or stopped.attempt != state.attempt:
        return NOTHING  # a redelivery, or an attempt that was already replaced
    resume = state.pass_index if len(checkpoint) == state.spec.n else 0
    attempt = state.attempt + 1
    return Decision(
        events=[JobRequeued(job_id=state.job_id, attempt=attempt, resume_pass=resume, reason="preempted")],
        messages=[_render_job(state, policy, attempt, resume, checkpoint if resume else ())],
    )


def _blocked(state: JobAggregate, verdict: SafetyVerdict) -> Decision:
    category = verdict.category or "policy"
    where = "prompt" if verdict.stage == "prompt" else f"image content at pass {verdict.pass_index}"
    message = (
        f"Your request was rejected by the safety system: the {where} matched the category "
        f"'{category}'. {verdict.detail}".strip()
    )
    return Decision(
        events=[
            JobBlocked(
                job_id=state.job_id,
                stage=verdict.stage,
                category=category,
                pass_index=verdict.pass_index,
                policy_version=verdict.policy_version,
                message=message,
            )
        ]
    )


def checkpoint_may_wait(event: Event) -> bool:
    """Whether an input's checkpoint may stay unsaved until the job's next saved decision:
    the progress of every odd pass but the last (libs.processing's `deferrable`).

    A checkpoint lost so (the requests service and the job's decoder both gone before the
    next pass is saved) makes the re-dispatched render resume one pass earlier than the
    one it had reached, never more: the pass after each odd one is even, or the last, and
    saved. (Decoders do not even report the odd passes that carry nothing but a
    checkpoint, libs.jobs.pass_reported: those that come here have previews or check
    pictures.) While the requests service lives, a re-dispatch resumes from the latest
    reported pass, saved or not. The last pass is always saved: it ends the render's lease.
    """
    # The passes a decoder would leave unreported were they only a checkpoint: one parity
    # rule for both, which is what bounds a resume's loss to one pass.
    return isinstance(event, RenderProgressed) and not pass_reported(event.pass_index, event.total_passes, False)


def _on_progress(state: JobAggregate, progress: RenderProgressed) -> Decision:
    """A pass completed: the job's new checkpoint, and nothing to publish.

    The progress event itself is the pass's record on the bus: the gateway streams its
    previews and the safety service scores its check images from it directly.
    """
    if progress.pass_index <= state.pass_index:
        return NOTHING  # a redelivered or resumed pass
    return Decision(checkpoint=Checkpoint(progress.pass_index, progress.total_passes, list(progress.tokens)))


def _on_stored(state: JobAggregate, stored: ImageStored) -> Decision:
    if any(ref.index == stored.index for ref in state.stored):
        return NOTHING
    ref = ImageRef(
        index=stored.index,
        image_id=stored.image_id,
        object_key=stored.object_key,
        tokens_key=stored.tokens_key,
        content_type=stored.content_type,
        size_bytes=stored.size_bytes,
        sha256=stored.sha256,
    )
    refs = sorted([*state.stored, ref], key=lambda r: r.index)
    # The completion carries every stored image, this one included.
    return Decision(events=_completion(state, refs) or [JobImageStored(job_id=state.job_id, image=ref)])


def _completion(state: JobAggregate, refs: list[ImageRef]) -> list[Event]:
    if not state.content_cleared or len(refs) < state.spec.n:
        return []
    # A tweak reads the grid of each image it starts from: those are its input image tokens.
    image_tokens = IMAGE_TOKENS_PER_IMAGE * len(state.spec.edits)
    usage = Usage(
        input_tokens=state.spec.text_tokens + image_tokens,
        text_tokens=state.spec.text_tokens,
        image_tokens=image_tokens,
        output_tokens=IMAGE_TOKENS_PER_IMAGE * state.spec.n,
    )
    spec = state.spec
    return [
        JobCompleted(
            job_id=state.job_id,
            images=refs,
            usage=usage,
            account_id=spec.account_id,
            tier=spec.tier,
            model=spec.model,
            created_at=state.created_at,
        )
    ]
