"""The gateway's job use cases: submit a job, follow it to its end, cancel it.

The routes (services/gateway/images.py and edits.py, through jobs_http.py) turn a request into
a command here and a result into a response; nothing here reads a header or picks a response.
A use case answers with a value: the job's state, the updates a stream shows, or a `Refusal`
(admission, the Idempotency-Key, a job not found or not cancellable) that the route answers in
OpenAI's error shape.

Submitting is two steps, so the HTTP side can hold the admission's rate-limit headers for every
response before anything is written: `admit` decides (the Idempotency-Key's claim, then
`Limits.admit_generation`), `start` seeds the read model and sends the job's command. A request
follows its job by folding the live events it receives (`JobFollower`), subscribed before the
command is sent so that none is missed, and reads the read model only when it notices a gap or
hears nothing for `FALLBACK_POLL_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from libs import topics
from libs.apikeys import Principal
from libs.events import Envelope, new_ulid
from libs.events.schemas import CancelJob, GenerateImage, JobSpec, RenderProgressed
from libs.jobs import new_job, preview_passes
from libs.readmodels.idempotency import request_fingerprint
from libs.readmodels.view import JobView
from libs.stores.ports import StoreUnavailable
from services.gateway.context import Gateway
from services.gateway.idempotency import MAX_KEY_LENGTH, KeyReused
from services.gateway.live import JobFollower
from services.gateway.refusals import Refusal
from services.gateway.served_models import admit_to_lane

FALLBACK_POLL_S = 2.0
"""How often a waiting request also reads the read model, in case a live event was missed."""
CANCEL_WAIT_S = 10.0
"""How long a cancel request waits for the job to end before answering with its state."""
_pending: set[asyncio.Task[None]] = set()
"""Cancellations sent after a client left (kept referenced until they are published)."""


@dataclass(frozen=True)
class SubmitJob:
    """Start a job for the caller, or find the one the spec's Idempotency-Key already names."""

    principal: Principal
    """The caller; a tweak counts against the limits like a generation."""
    spec: JobSpec
    """The validated job; admission adds its lane and model version."""


@dataclass(frozen=True)
class Admitted:
    """A submitted job that the request answers with."""

    job: JobView
    """The state to follow it from: a new job's first state, or the key's earlier job as it stands."""
    new: bool
    """Whether this request makes the job (False: an earlier request with the same key did)."""
    rate_limit_headers: dict[str, str] = field(default_factory=dict)
    """The admission's rate-limit headers (none for an earlier job: nothing was admitted)."""


@dataclass(frozen=True)
class CancelOwnJob:
    """Cancel a job of the caller's account."""

    account_id: str
    job_id: str


@dataclass(frozen=True)
class Preview:
    """A partial image the stream asked for: the `index`-th, in pass order."""

    index: int
    image_b64: str


@dataclass(frozen=True)
class KeepAlive:
    """Nothing new for a while (`stream_keepalive_s`)."""


@dataclass(frozen=True)
class Ended:
    """The job ended (a completed one's images are in the catalog)."""

    state: JobView


@dataclass(frozen=True)
class StillRunning:
    """The job is still running after the synchronous limit; it can be fetched later."""

    state: JobView


Update = Preview | KeepAlive | Ended | StillRunning
"""What a followed job shows a stream; the last one is `Ended` or `StillRunning`."""


async def admit(gateway: Gateway, command: SubmitJob) -> Admitted | Refusal:
    """Decide a job: the earlier job its Idempotency-Key names, else admission.

    Admission checks the rollout, the tier's limits, room in the lane and the rate limits, all in
    memory, and picks the model version by the rollout in force. A refused request made no job,
    so the key it claimed is released.

    Returns:
        The job to start (or the earlier one to answer with); else the refusal: 400 for a
        malformed key, 422 for a key reused with another request, 503 when the claims' store
        is away, or what `Limits.admit_generation` refuses with.
    """
    principal, spec = command.principal, command.spec
    new_job_id = f"job_{new_ulid().lower()}"
    created = datetime.now(UTC)
    job_id = new_job_id
    if spec.idempotency_key is not None:
        claimed = await _claim(gateway, principal, spec, new_job_id, created)
        if isinstance(claimed, Refusal):
            return claimed
        job_id = claimed
        existing = await gateway.projection.get(job_id)
        if existing is not None:
            return Admitted(existing, new=False)
    admission = gateway.limits.admit_generation(
        principal, job_id, spec.n, spec.quality, lane_open=lambda lane: admit_to_lane(gateway, spec.model, lane)
    )
    if isinstance(admission, Refusal):
        if spec.idempotency_key is not None and job_id == new_job_id:
            await _release(gateway, principal, spec.idempotency_key, job_id)
        return admission
    # The model version is chosen once, at admission, by the rollout in force.
    version = gateway.limits.releases.route(spec.model, principal.account_id)
    spec = spec.model_copy(update={"lane": admission.lane, "version": version})
    return Admitted(new_job(JobView, job_id, spec, created), new=True, rate_limit_headers=admission.headers)


async def _claim(
    gateway: Gateway, principal: Principal, spec: JobSpec, job_id: str, created: datetime
) -> str | Refusal:
    """The job the spec's Idempotency-Key names for this account: an earlier one, or `job_id`."""
    key = spec.idempotency_key or ""
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        message = f"The Idempotency-Key header must be 1 to {MAX_KEY_LENGTH} characters."
        return Refusal(400, message, code="invalid_value", param="Idempotency-Key")
    try:
        return await gateway.idempotency.claim(principal.account_id, key, job_id, request_fingerprint(spec), created)
    except KeyReused:
        return Refusal(
            422,
            "This Idempotency-Key was already used with other parameters; use a new key for a new request.",
            code="idempotency_key_reused",
            param="Idempotency-Key",
        )
    except StoreUnavailable:
        return Refusal(503, "The service is temporarily unavailable; retry with the same key.")


async def _release(gateway: Gateway, principal: Principal, key: str, job_id: str) -> None:
    """Frees the key this request claimed: it was refused, and no job of it exists.

    A retry of the same request takes the claim's job; if one was admitted meanwhile and
    started that job, the claim stays so later retries still find it. (A retry that starts
    it after this check leaves it without a claim: one more retry could then start a second
    job, the same as with no key at all.)"""
    try:
        if await gateway.projection.get(job_id) is None:
            await gateway.idempotency.release(principal.account_id, key, job_id)
    except StoreUnavailable:
        # The refusal stands; the claim stays and names a job that never started, which a
        # retry of the same request still takes.
        pass


@contextlib.asynccontextmanager
async def start(gateway: Gateway, admitted: Admitted) -> AsyncIterator[JobRun]:
    """Start an admitted job (an earlier one goes on as it is) and follow it inside the block.

    A new job is seeded in the read model, so status reads never 404, then its `GenerateImage`
    is published; the block receives its live events from before that.
    """
    job = admitted.job
    if admitted.new:
        await gateway.projection.seed(job)
    with gateway.live.subscribe(job.job_id) as queue:
        if admitted.new:
            command = GenerateImage(job_id=job.job_id, spec=job.spec, created_at=job.created_at)
            await gateway.publisher.publish(
                topics.IMAGE_COMMANDS, Envelope.wrap(command, aggregate_id=job.job_id, tier=job.spec.tier)
            )
        yield JobRun(gateway, job, queue)


class JobRun:
    """A started job as the request that submitted it follows it."""

    def __init__(self, gateway: Gateway, job: JobView, queue: asyncio.Queue[Envelope]) -> None:
        """Wires the run.

        Args:
            gateway: The app's gateway.
            job: The state the job is followed from.
            queue: Its live events, received since before its command was sent.
        """
        self.job = job
        self._gateway = gateway
        self._queue = queue

    async def latest(self) -> JobView:
        """The job as the read model has it (as it started, until the read model has it)."""
        return await self._gateway.projection.get(self.job.job_id) or self.job

    async def to_end(self, left: Callable[[], Awaitable[bool]] | None = None) -> JobView:
        """Wait for the job's end, for at most the synchronous limit (`sync_wait_s`).

        Args:
            left: Whether the client left; given, a job still running when it did is cancelled.

        Returns:
            The job's latest state: not terminal when the limit passed or the client left.
        """
        gateway, job = self._gateway, self.job
        state = await _wait_for_end(gateway, JobFollower(job), self._queue, gateway.settings.sync_wait_s, left)
        if not state.terminal and left is not None and await left():
            await _cancel(gateway, job.job_id, job.spec.account_id, "client_disconnected", job.spec.tier)
        await _record_images(gateway, state)
        return state

    async def updates(self, cancel_on_leave: bool = False) -> AsyncGenerator[Update]:
        """What a stream shows of the job: the previews it asked for, keep-alives while nothing
        happens, then its end (or that it is still running after the synchronous limit).

        The generator holds its own subscription, since the `start` block has ended by the
        time a response body is sent. When the client leaves before the end (the generator is
        closed or cancelled), the job goes on (it can be fetched later) unless `cancel_on_leave`.
        """
        ended = False
        try:
            async with contextlib.aclosing(self._updates()) as shown:
                async for update in shown:
                    yield update
            ended = True
        finally:
            if not ended and cancel_on_leave:
                _cancel_later(self._gateway, self.job.job_id, self.job.spec.account_id, self.job.spec.tier)

    async def _updates(self) -> AsyncGenerator[Update]:
        gateway, spec = self._gateway, self.job.spec
        wanted = preview_passes(spec.passes, spec.partial_images)
        sent: set[int] = set()
        follower = JobFollower(self.job)
        with gateway.live.subscribe(self.job.job_id) as own:
            # Envelopes that reached the `start` block's queue before this generator subscribed.
            pending = [self._queue.get_nowait() for _ in range(self._queue.qsize())]
            last_poll = time.monotonic()
            deadline = time.monotonic() + gateway.settings.sync_wait_s
            while True:
                envelope = pending.pop(0) if pending else None
                if envelope is None:
                    try:
                        envelope = await asyncio.wait_for(own.get(), timeout=gateway.settings.stream_keepalive_s)
                    except TimeoutError:
                        yield KeepAlive()
                if envelope is not None and envelope.type == RenderProgressed.TYPE:
                    pass_index = int(envelope.payload.get("pass_index", 0))
                    previews = envelope.payload.get("previews") or []
                    if pass_index in wanted and previews and pass_index not in sent:
                        sent.add(pass_index)
                        yield Preview(wanted.index(pass_index), previews[0])
                    continue
                if envelope is None and time.monotonic() - last_poll < FALLBACK_POLL_S:
                    continue
                if envelope is None:
                    last_poll = time.monotonic()
                await _follow(gateway, follower, envelope)
                if follower.state.terminal:
                    await _record_images(gateway, follower.state)
                    yield Ended(follower.state)
                    return
                if time.monotonic() > deadline:
                    yield StillRunning(follower.state)
                    return


async def _record_images(gateway: Gateway, state: JobView) -> None:
    """Add a completed job's images to the catalog: its read model records them too, a moment
    later, and the client that was answered may ask for them (or tweak them) now."""
    await gateway.catalog.record_job(state)


async def find(gateway: Gateway, account_id: str, job_id: str) -> JobView | Refusal:
    """A job of the account as the read model has it; another account's job is not found either.

    Returns:
        The job's state, or a 404 `not_found` naming `job_id`.
    """
    state = await gateway.projection.get(job_id)
    if state is None or state.spec.account_id != account_id:
        return Refusal(404, f"No job found with id '{job_id}'.", code="not_found", param="job_id")
    return state


async def cancel(gateway: Gateway, command: CancelOwnJob) -> JobView | Refusal:
    """Cancel a job: a queued job never starts, a rendering one stops at its next pass.

    Returns:
        The job once cancelled, or as it stands (not terminal) when it is still ending after
        `CANCEL_WAIT_S`; else a refusal: what `find` refuses with, or 409 `job_not_cancellable`
        when the job had already ended otherwise, or did before the cancellation reached it.
    """
    job_id = command.job_id
    state = await find(gateway, command.account_id, job_id)
    if isinstance(state, Refusal):
        return state
    if state.terminal and state.status != "cancelled":
        return Refusal(409, f"The job {job_id} has already ended ({state.status}).", code="job_not_cancellable")
    with gateway.live.subscribe(job_id) as queue:
        if not state.terminal:
            await _cancel(gateway, job_id, command.account_id, "requested", state.spec.tier)
        state = await _wait_for_end(gateway, JobFollower(state), queue, CANCEL_WAIT_S)
    if state.terminal and state.status != "cancelled":
        return Refusal(
            409, f"The job {job_id} ended ({state.status}) before it could be cancelled.", code="job_not_cancellable"
        )
    return state


async def _cancel(
    gateway: Gateway,
    job_id: str,
    account_id: str,
    reason: Literal["requested", "client_disconnected"],
    tier: str,
) -> None:
    command = CancelJob(job_id=job_id, account_id=account_id, reason=reason)
    # On the job's own command stream (api-tier jobs have theirs), after its GenerateImage.
    await gateway.publisher.publish(topics.IMAGE_COMMANDS, Envelope.wrap(command, aggregate_id=job_id, tier=tier))


def _cancel_later(gateway: Gateway, job_id: str, account_id: str, tier: str) -> None:
    """Sends a cancellation from code that is itself being cancelled (a stream whose client left)."""
    cancel = _cancel(gateway, job_id, account_id, "client_disconnected", tier)
    task = asyncio.get_running_loop().create_task(cancel)
    _pending.add(task)
    task.add_done_callback(_pending.discard)


async def _wait_for_end(
    gateway: Gateway,
    follower: JobFollower,
    queue: asyncio.Queue[Envelope],
    timeout_s: float,
    left: Callable[[], Awaitable[bool]] | None = None,
) -> JobView:
    """Wait until the job is terminal, the timeout passes or (with `left`) the client left.

    Returns:
        The job's latest state.
    """
    deadline = time.monotonic() + timeout_s
    while not follower.state.terminal:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or (left is not None and await left()):
            follower.catch_up(await gateway.projection.get(follower.state.job_id))
            break
        try:
            envelope = await asyncio.wait_for(queue.get(), timeout=min(remaining, FALLBACK_POLL_S))
        except TimeoutError:
            envelope = None
        await _follow(gateway, follower, envelope)
    return follower.state


async def _follow(gateway: Gateway, follower: JobFollower, envelope: Envelope | None) -> None:
    """Fold a live envelope; on a missed event (or none for a while) read the read model."""
    if envelope is not None and follower.apply(envelope):
        return
    job_id = follower.state.job_id
    for _ in range(50):
        # The read model may be a moment behind the live event that showed the gap, or
        # further, up to the job's next event that changes what it shows (libs.readmodels.jobs
        # writes no revision for one that does not): the wait below is bounded either way.
        follower.catch_up(await gateway.projection.get(job_id))
        if envelope is None or follower.state.sequence >= envelope.sequence:
            return
        await asyncio.sleep(0.02)
