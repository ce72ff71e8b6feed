"""The requests process manager's decisions, as pure functions over job state."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise

from libs import topics
from libs.events.envelope import Event
from libs.events.schemas import (
    AbortRender,
    CancelJob,
    ExpireRenderLease,
    GenerateImage,
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
    JobSpec,
    RenderJob,
    RenderProgressed,
    RenderStarted,
    RenderStopped,
    SafetyVerdict,
)
from libs.jobs import content_check_passes, preview_passes, reported_passes
from libs.lanes import lane_for
from libs.readmodels.view import JobView, project
from services.requests.domain import Checkpoint, Decision, JobAggregate, Policy, decide, evolve, leased, reached

JOB = "job_1"


def _spec(**overrides: object) -> JobSpec:
    values: dict[str, object] = {
        "account_id": "acct_1",
        "tier": "pro",
        "prompt": "a red circle",
        "model": "darkroom-mini",
        "n": 2,
        "size": 256,
        "quality": "low",
        "passes": 4,
        "output_format": "png",
        "output_compression": 100,
        "background": "auto",
        "moderation": "auto",
        "partial_images": 1,
        "seed": 7,
        "text_tokens": 3,
    }
    return JobSpec.model_validate(values | overrides)


class Folded(JobAggregate, JobView):
    """The aggregate `decide` reads, with what the read side shows of the same events:
    the tests follow a job through both folds of what was decided."""


def _fold(state: Folded | None, event: Event, sequence: int) -> Folded | None:
    decided, shown = evolve(state, event, sequence), project(state, event, sequence)
    if decided is None or shown is None:
        return None
    return Folded.model_validate(shown.model_dump() | decided.model_dump(include=set(JobAggregate.model_fields)))


def _apply(state: Folded | None, decision: Decision) -> Folded | None:
    for event in decision.events:
        state = _fold(state, event, (state.sequence if state else 0) + 1)
    if decision.checkpoint is not None and state is not None:
        state = Folded.model_validate(reached(state, decision.checkpoint).model_dump())
    return state


def _run(state: Folded | None, *inputs: Event) -> tuple[Folded | None, list[Decision]]:
    decisions = []
    for event in inputs:
        decision = decide(state, event)
        decisions.append(decision)
        state = _apply(state, decision)
    return state, decisions


def _generate(**overrides: object) -> GenerateImage:
    return GenerateImage(job_id=JOB, spec=_spec(**overrides), created_at=datetime.now(UTC))


def _prompt_ok() -> SafetyVerdict:
    return SafetyVerdict(job_id=JOB, stage="prompt", allowed=True, policy_version=1)


def _progress(k: int, total: int = 4) -> RenderProgressed:
    return RenderProgressed(job_id=JOB, pass_index=k, total_passes=total, tokens=["AAAA", "BBBB"])


def _stored(i: int) -> ImageStored:
    return ImageStored(
        job_id=JOB,
        index=i,
        image_id=f"img_{JOB}_{i}",
        object_key=f"images/{JOB}/{i}.png",
        tokens_key=f"tokens/{JOB}/{i}.u16",
        content_type="image/png",
        size_bytes=10,
        sha256="ab",
    )


def test_a_new_job_is_accepted_and_waits_for_its_prompt_verdict() -> None:
    state, [decision] = _run(None, _generate())
    assert state is not None and state.status == "queued" and not state.lane
    # The safety service reads the command itself: nothing to ask it.
    assert [type(e) for e in decision.events] == [JobAccepted] and decision.messages == []


def test_a_prompt_verdict_that_comes_before_the_command_is_held_then_decided_with_it() -> None:
    held = decide(None, _prompt_ok())
    assert held == Decision(held=_prompt_ok()) or (held.held is not None and held.held.allowed)
    assert decide(None, _prompt_ok(), held=held.held).empty  # the same verdict again
    decision = decide(None, _generate(), held=held.held)
    assert [type(e) for e in decision.events] == [JobAccepted, JobQueued]
    [render] = decision.messages
    assert isinstance(render.event, RenderJob)
    blocked = SafetyVerdict(job_id=JOB, stage="prompt", allowed=False, category="violence", policy_version=3)
    decision = decide(None, _generate(), held=blocked)
    assert [type(e) for e in decision.events] == [JobAccepted, JobBlocked] and decision.messages == []


def test_the_same_command_twice_changes_nothing() -> None:
    state, _ = _run(None, _generate())
    assert decide(state, _generate()).empty


def test_an_allowed_prompt_queues_the_render_on_the_tiers_lane() -> None:
    _, [_, decision] = _run(None, _generate(tier="free"), _prompt_ok())
    [queued] = decision.events
    [message] = decision.messages
    lane = lane_for("free")
    assert isinstance(queued, JobQueued) and queued.lane == "free"
    assert message.topic == lane.topic and message.partition in lane.partitions
    assert isinstance(message.event, RenderJob)
    assert message.event.preview_passes == preview_passes(4, 1) == [2]


def test_api_jobs_go_to_the_api_topic() -> None:
    _, [_, decision] = _run(None, _generate(tier="api"), _prompt_ok())
    assert decision.messages[0].topic == topics.RENDER_API


def test_a_jobs_model_picks_its_own_render_topic_and_lanes() -> None:
    _, [_, decision] = _run(None, _generate(tier="free", model="amused-256"), _prompt_ok())
    [queued] = decision.events
    [message] = decision.messages
    lane = lane_for("free", "amused-256")
    assert isinstance(queued, JobQueued) and queued.lane == "amused-256/free" == lane.name
    assert message.topic == "darkroom.render.amused-256.consumer" == lane.topic
    assert message.partition in lane.partitions
    assert isinstance(message.event, RenderJob) and message.event.model == "amused-256"
    _, [_, api] = _run(None, _generate(tier="api", model="amused-256"), _prompt_ok())
    assert api.messages[0].topic == "darkroom.render.amused-256.api"


def test_a_blocked_prompt_ends_the_job_without_rendering() -> None:
    verdict = SafetyVerdict(job_id=JOB, stage="prompt", allowed=False, category="violence", policy_version=3)
    state, [_, decision] = _run(None, _generate(), verdict)
    assert state is not None and state.status == "blocked"
    [blocked] = decision.events
    assert isinstance(blocked, JobBlocked) and (blocked.stage, blocked.category, blocked.policy_version) == (
        "prompt",
        "violence",
        3,
    )
    assert decision.messages == []


def test_each_pass_is_recorded_once_as_the_checkpoint_and_publishes_nothing() -> None:
    state, decisions = _run(None, _generate(), _prompt_ok(), _progress(1), _progress(1), _progress(2))
    assert state is not None and (state.status, state.pass_index) == ("rendering", 2)
    assert decisions[3].empty  # pass 1 again
    # The decoder's progress event is the pass's only message: the safety service reads it.
    assert decisions[4] == Decision(checkpoint=Checkpoint(2, 4, ["AAAA", "BBBB"]))


def test_the_render_job_names_the_passes_whose_content_is_checked() -> None:
    def checked(policy: Policy | None = None, **spec: object) -> list[int]:
        state, _ = _run(None, _generate(**spec))
        [render] = decide(state, _prompt_ok(), policy or Policy()).messages
        assert isinstance(render.event, RenderJob)
        return render.event.content_check_passes

    # Once a third of the cells are drawn, and always the last pass.
    assert checked() == [3, 4]
    assert checked(passes=12) == [7, 8, 9, 10, 11, 12]
    assert checked(Policy(content_check_stride=3), passes=12) == [9, 12]


def test_a_content_block_aborts_the_render() -> None:
    verdict = SafetyVerdict(
        job_id=JOB, stage="content", pass_index=2, allowed=False, category="forbidden-object", policy_version=1
    )
    state, decisions = _run(None, _generate(), _prompt_ok(), _progress(2), verdict)
    assert state is not None and state.status == "blocked" and state.blocked_stage == "content"
    [abort] = decisions[-1].messages
    assert abort.topic == topics.RENDER_CONTROL and isinstance(abort.event, AbortRender)
    # Later progress and stored images do nothing to a blocked job.
    assert decide(state, _progress(3)).empty and decide(state, _stored(0)).empty


def test_the_job_completes_only_with_every_image_stored_and_the_last_pass_cleared() -> None:
    final_ok = SafetyVerdict(job_id=JOB, stage="content", pass_index=4, allowed=True, policy_version=1)
    state, decisions = _run(None, _generate(), _prompt_ok(), _progress(4), _stored(1), _stored(1), _stored(0))
    assert state is not None and state.status != "completed"
    assert isinstance(decisions[3].events[0], JobImageStored)
    assert decisions[4].empty  # image 1 stored again
    state, [decision] = _run(state, final_ok)
    # The clearance that completes the job is the completion itself: no event of its own.
    assert [type(e) for e in decision.events] == [JobCompleted]
    assert state is not None and state.status == "completed"
    assert [ref.index for ref in state.images] == [0, 1] and state.content_cleared
    assert state.usage is not None and state.usage.output_tokens == 2 * 256 and state.usage.input_tokens == 3
    completed = decision.events[0]
    assert isinstance(completed, JobCompleted), "what metering counts it by, carried"
    spec = _generate().spec
    assert (completed.account_id, completed.tier, completed.model) == (spec.account_id, spec.tier, spec.model)
    assert completed.created_at == state.created_at


def test_the_final_clearance_can_come_before_the_images() -> None:
    final_ok = SafetyVerdict(job_id=JOB, stage="content", pass_index=4, allowed=True, policy_version=1)
    state, decisions = _run(None, _generate(n=1), _prompt_ok(), _progress(4), final_ok, _stored(0))
    assert state is not None and state.status == "completed"
    assert [type(e) for e in decisions[-2].events] == [JobContentCleared]
    # The image that completes the job is carried by the completion, not an event of its own.
    [completed] = decisions[-1].events
    assert isinstance(completed, JobCompleted) and [ref.index for ref in completed.images] == [0]
    # Stored again (a redelivery) after the completion: nothing.
    assert decide(state, _stored(0)).empty


def test_a_failed_render_fails_the_job() -> None:
    stopped = RenderStopped(job_id=JOB, pass_index=1, reason="failed", message="CUDA out of memory")
    state, [*_, decision] = _run(None, _generate(), _prompt_ok(), stopped)
    assert isinstance(decision.events[0], JobFailed)
    assert state is not None and (state.status, state.error_code) == ("failed", "render_failed")


def test_preview_passes_are_evenly_spaced_and_inside_the_render() -> None:
    assert preview_passes(8, 2) == [3, 5]
    assert preview_passes(12, 3) == [3, 6, 9]
    assert preview_passes(4, 3) == [1, 2, 3]
    assert preview_passes(8, 0) == []


# --- durability: decoder leases, re-dispatch from a checkpoint, cancellation -----------------


def _started(attempt: int = 0, pass_index: int = 0) -> RenderStarted:
    return RenderStarted(job_id=JOB, attempt=attempt, pass_index=pass_index, total_passes=4, decoder="d1")


def test_a_decoder_taking_the_job_starts_its_lease() -> None:
    state, [*_, decision] = _run(None, _generate(), _prompt_ok(), _started())
    assert [type(e) for e in decision.events] == [JobRenderStarted]
    assert state is not None and state.status == "rendering" and leased(state)
    # A redelivered start, or a stale attempt's, changes nothing.
    assert decide(state, _started()).empty
    assert decide(state, _started(attempt=3)).empty


def test_a_silent_decoder_loses_the_job_to_a_resume_from_the_last_checkpoint() -> None:
    state, _ = _run(None, _generate(), _prompt_ok(), _started(), _progress(1), _progress(2))
    assert state is not None and leased(state)
    checkpoint = ["AAAA", "BBBB"]

    decision = decide(state, ExpireRenderLease(job_id=JOB, attempt=0, pass_index=2), checkpoint=checkpoint)

    [requeued] = decision.events
    [message] = decision.messages
    assert isinstance(requeued, JobRequeued) and (requeued.attempt, requeued.resume_pass) == (1, 2)
    assert isinstance(message.event, RenderJob)
    assert (message.event.attempt, message.event.resume_pass, message.event.resume_tokens) == (1, 2, checkpoint)
    lane = lane_for("pro")
    assert message.topic == lane.topic and message.partition == lane.partition_for(JOB)
    after = _apply(state, decision)
    assert after is not None and (after.status, after.attempt, after.pass_index) == ("queued", 1, 2)
    assert not leased(after)

    # The next decoder resumes at pass 2 and goes on; the old attempt's reports are stale.
    resumed, [decision] = _run(after, _started(attempt=1, pass_index=2))
    assert [type(e) for e in decision.events] == [JobRenderStarted] and leased(resumed)
    assert decide(resumed, _started(attempt=0)).empty


def test_an_expiry_raced_by_a_report_changes_nothing() -> None:
    state, _ = _run(None, _generate(), _prompt_ok(), _started(), _progress(1), _progress(2))
    assert decide(state, ExpireRenderLease(job_id=JOB, attempt=0, pass_index=1), checkpoint=["A", "B"]).empty
    assert decide(state, ExpireRenderLease(job_id=JOB, attempt=1, pass_index=2), checkpoint=["A", "B"]).empty


def test_an_expiry_before_any_checkpoint_restarts_the_render_from_the_beginning() -> None:
    state, _ = _run(None, _generate(), _prompt_ok(), _started())
    decision = decide(state, ExpireRenderLease(job_id=JOB, attempt=0, pass_index=0))
    [message] = decision.messages
    assert isinstance(message.event, RenderJob) and (message.event.resume_pass, message.event.resume_tokens) == (0, [])


def test_a_preempted_render_goes_back_to_its_lane_from_its_last_checkpoint() -> None:
    state, _ = _run(None, _generate(), _prompt_ok(), _started(), _progress(1), _progress(2))
    checkpoint = ["AAAA", "BBBB"]
    preempted = RenderStopped(job_id=JOB, pass_index=2, reason="preempted", attempt=0)

    decision = decide(state, preempted, checkpoint=checkpoint)

    [requeued] = decision.events
    [message] = decision.messages
    assert isinstance(requeued, JobRequeued)
    assert (requeued.attempt, requeued.resume_pass, requeued.reason) == (1, 2, "preempted")
    assert isinstance(message.event, RenderJob)
    assert (message.event.attempt, message.event.resume_pass, message.event.resume_tokens) == (1, 2, checkpoint)
    assert message.partition == lane_for("pro").partition_for(JOB)
    after = _apply(state, decision)
    assert after is not None and (after.status, after.attempt) == ("queued", 1) and not leased(after)
    # A redelivered or stale preemption dispatches nothing more.
    assert decide(after, preempted, checkpoint=checkpoint).empty
    assert decide(state, preempted.model_copy(update={"attempt": 3}), checkpoint=checkpoint).empty


def test_every_pass_reported_ends_the_lease() -> None:
    state, _ = _run(None, _generate(), _prompt_ok(), _started(), *[_progress(k) for k in range(1, 5)])
    assert state is not None and state.status == "rendering" and not leased(state)


def test_cancelling_a_dispatched_job_aborts_its_render() -> None:
    state, _ = _run(None, _generate(), _prompt_ok(), _started(), _progress(1))
    decision = decide(state, CancelJob(job_id=JOB, account_id="acct_1"))
    [cancelled] = decision.events
    [message] = decision.messages
    assert isinstance(cancelled, JobCancelled) and cancelled.pass_index == 1
    assert message.topic == topics.RENDER_CONTROL
    assert message.event == AbortRender(job_id=JOB, reason="cancelled")
    after = _apply(state, decision)
    assert after is not None and after.status == "cancelled" and after.terminal and not leased(after)
    # Nothing the decoder or safety still sends changes a cancelled job.
    assert decide(after, _progress(2)).empty
    assert decide(after, CancelJob(job_id=JOB, account_id="acct_1")).empty


def test_a_job_cancelled_before_its_prompt_verdict_is_never_dispatched() -> None:
    state, [_, decision, verdict] = _run(None, _generate(), CancelJob(job_id=JOB, account_id="acct_1"), _prompt_ok())
    assert [type(e) for e in decision.events] == [JobCancelled] and decision.messages == []
    assert verdict.empty and state is not None and state.status == "cancelled"


def test_only_the_owner_cancels() -> None:
    state, _ = _run(None, _generate(), _prompt_ok())
    assert decide(state, CancelJob(job_id=JOB, account_id="someone_else")).empty


def test_a_completed_job_cannot_be_cancelled() -> None:
    inputs: list[Event] = [_generate(n=1), _prompt_ok(), _started(), *[_progress(k) for k in range(1, 5)]]
    inputs += [SafetyVerdict(job_id=JOB, stage="content", allowed=True, policy_version=1, pass_index=4), _stored(0)]
    state, _ = _run(None, *inputs)
    assert state is not None and state.status == "completed"
    assert decide(state, CancelJob(job_id=JOB, account_id="acct_1")).empty


def test_content_is_checked_once_a_third_of_a_fresh_render_is_drawn_and_on_every_pass_of_a_tweak() -> None:
    assert content_check_passes(4) == [3, 4]
    assert content_check_passes(8) == [5, 6, 7, 8]
    assert content_check_passes(1) == [1]
    assert content_check_passes(4, tweak=True) == [1, 2, 3, 4]
    assert content_check_passes(8, tweak=True, stride=4) == [4, 8]


def test_a_decoder_reports_even_passes_the_last_and_those_with_pictures() -> None:
    assert reported_passes(4, []) == [2, 4]
    assert reported_passes(4, content_check_passes(4)) == [2, 3, 4]
    assert reported_passes(12, content_check_passes(12)) == [2, 4, 6, 7, 8, 9, 10, 11, 12]
    assert reported_passes(8, preview_passes(8, 3)) == [2, 4, 6, 8]
    assert reported_passes(6, preview_passes(6, 1)) == [2, 3, 4, 6]
    assert reported_passes(1, []) == [1]
    # Never two unreported passes in a row: a resume loses at most one.
    for total in range(1, 17):
        reported = [0, *reported_passes(total, [])]
        assert max(b - a for a, b in pairwise(reported)) <= 2


def test_the_render_job_carries_the_routed_version_and_the_job_records_the_one_that_rendered() -> None:
    state, decisions = _run(None, _generate(version="v2"), _prompt_ok())
    [render] = [m.event for d in decisions for m in d.messages if isinstance(m.event, RenderJob)]
    assert render.version == "v2"
    assert state is not None and state.version == ""  # no decoder has started it yet

    # The version failed: the decoder renders it with the stable version and says so.
    fallback = RenderStarted(job_id=JOB, attempt=0, pass_index=0, total_passes=4, decoder="d1", version="base")
    started, [decision] = _run(state, fallback)
    [event] = decision.events
    assert isinstance(event, JobRenderStarted) and event.version == "base"
    assert started is not None and started.version == "base"
