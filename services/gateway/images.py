"""The Images API: generations (one response, a stream, or an async job), job status, cancellation."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from libs import topics
from libs.apikeys import Principal
from libs.events import Envelope, new_ulid
from libs.events.schemas import CancelJob, GenerateImage, JobSpec
from libs.jobs import JobState, new_job, preview_passes
from libs.readmodels.catalog import catalog_entries
from libs.readmodels.idempotency import request_fingerprint
from libs.stores.ports import StoreUnavailable
from services.gateway.context import Gateway, get_gateway, get_principal
from services.gateway.errors import APIError, invalid, refused
from services.gateway.idempotency import MAX_KEY_LENGTH, KeyReused, key_seed
from services.gateway.limits import SCOPE_HEADERS
from services.gateway.live import JobFollower
from services.gateway.models import PASSES, RESOLVED_QUALITY, SIZES, ImageGenerationRequest, count_text_tokens
from services.gateway.refusals import Refusal
from services.gateway.served_models import admit_to_lane, lane_served, resolve_model

router = APIRouter(prefix="/v1/images", tags=["images"])

GatewayDep = Annotated[Gateway, Depends(get_gateway)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
FALLBACK_POLL_S = 2.0
"""How often a waiting request also reads the read model, in case a live event was missed."""
CANCEL_ON_DISCONNECT = "x-darkroom-cancel-on-disconnect"
"""Request header: "true" cancels the job when the client leaves a synchronous or streaming call."""
JOB_ID_HEADER = "x-darkroom-job-id"
"""Response header of a generation or tweak in every mode: the job's id, for
`GET /v1/images/jobs/{id}` and cancelling (a stream's frames do not carry it)."""
CANCEL_WAIT_S = 10.0
"""How long a cancel request waits for the job to end before answering with its state."""
_pending: set[asyncio.Task[None]] = set()
"""Cancellations sent after a client left (kept referenced until they are published)."""


@router.post("/generations", response_model=None)
async def create_generation(
    body: ImageGenerationRequest,
    gateway: GatewayDep,
    principal: PrincipalDep,
    request: Request,
    prefer: Annotated[str | None, Header()] = None,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> Response:
    """Create images from a prompt (OpenAI's `images.generate`)."""
    spec = job_spec(body, principal, gateway, idempotency_key)
    return await run_job(
        gateway, request, principal, spec, stream=body.stream, response_format=body.response_format, prefer=prefer
    )


async def run_job(
    gateway: Gateway,
    request: Request,
    principal: Principal,
    spec: JobSpec,
    *,
    stream: bool,
    response_format: str,
    prefer: str | None,
    kind: str = "image_generation",
) -> Response:
    """Start a job and answer as the client asked: one response, a stream, or the job (202).

    With an Idempotency-Key (in the spec) an earlier job of the same key and account is
    answered instead of a new one; a key reused with another body is a 422.

    Args:
        gateway: The app's gateway.
        request: The HTTP request (the rate-limit headers go into its scope).
        principal: The caller; a tweak counts against the limits like a generation.
        spec: The validated job.
        stream: Answer with server-sent events.
        response_format: "b64_json" or "url".
        prefer: The Prefer header (`respond-async` answers 202 with the job at once).
        kind: The stream's event prefix ("image_generation" or "image_edit").
    """
    new_job_id = f"job_{new_ulid().lower()}"
    created = datetime.now(UTC)
    job_id = new_job_id
    if spec.idempotency_key is not None:
        job_id = await _claim(gateway, principal, spec, new_job_id, created)
    existing = await gateway.projection.get(job_id) if spec.idempotency_key is not None else None
    if existing is not None:
        spec, created = existing.spec, existing.created_at
    else:
        # Rollout, tier limits, room in the lane (503 with retry-after) and rate limits (429 with
        # OpenAI's headers); nothing leaves the process.
        admission = gateway.limits.admit_generation(
            principal, job_id, spec.n, spec.quality, lane_open=lambda lane: admit_to_lane(gateway, spec.model, lane)
        )
        if isinstance(admission, Refusal):
            if spec.idempotency_key is not None and job_id == new_job_id:
                await _release(gateway, principal, spec.idempotency_key, job_id)
            raise refused(admission)
        # Every response to the request carries them, an error's too (`RateLimitHeaders`).
        request.scope[SCOPE_HEADERS] = admission.headers
        # The model version is chosen once, at admission, by the rollout in force.
        version = gateway.limits.releases.route(spec.model, principal.account_id)
        spec = spec.model_copy(update={"lane": admission.lane, "version": version})
    seeded = existing or new_job(job_id, spec, created)
    if existing is None:
        await gateway.projection.seed(seeded)
    cancel_on_disconnect = request.headers.get(CANCEL_ON_DISCONNECT, "").lower() in ("1", "true", "yes")
    job_header = {JOB_ID_HEADER: job_id}
    with gateway.live.subscribe(job_id) as queue:
        if existing is None:
            command = GenerateImage(job_id=job_id, spec=spec, created_at=created)
            await gateway.publisher.publish(
                topics.IMAGE_COMMANDS, Envelope.wrap(command, aggregate_id=job_id, tier=spec.tier)
            )
        if prefer and "respond-async" in prefer.lower():
            state = await gateway.projection.get(job_id)
            return JSONResponse(await job_object(gateway, state or seeded), status_code=202, headers=job_header)
        if stream:
            return StreamingResponse(
                _stream(gateway, seeded, queue, kind, cancel_on_disconnect),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no"} | job_header,
            )
        left = request.is_disconnected if cancel_on_disconnect else None
        state = await _wait_for_end(gateway, JobFollower(seeded), queue, gateway.settings.sync_wait_s, left)
    if not state.terminal:
        if left is not None and await left():
            await _cancel(gateway, job_id, principal.account_id, "client_disconnected", spec.tier)
        # Still running after the synchronous limit: hand the client the job instead of failing.
        return JSONResponse(await job_object(gateway, state), status_code=202, headers=job_header)
    if state.status != "completed":
        raise _job_error(state)
    # The read model records the images too, a moment later; the client may ask for them now.
    await gateway.catalog.record(catalog_entries(state))
    return JSONResponse(await _images_response(gateway, state, response_format), headers=job_header)


async def _claim(gateway: Gateway, principal: Principal, spec: JobSpec, job_id: str, created: datetime) -> str:
    """The job the spec's Idempotency-Key names for this account: an earlier one, or `job_id`."""
    key = spec.idempotency_key or ""
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise invalid("Idempotency-Key", f"The Idempotency-Key header must be 1 to {MAX_KEY_LENGTH} characters.")
    try:
        return await gateway.idempotency.claim(principal.account_id, key, job_id, request_fingerprint(spec), created)
    except KeyReused as exc:
        raise APIError(
            422,
            "This Idempotency-Key was already used with other parameters; use a new key for a new request.",
            param="Idempotency-Key",
            code="idempotency_key_reused",
        ) from exc
    except StoreUnavailable as exc:
        raise APIError(503, "The service is temporarily unavailable; retry with the same key.") from exc


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


@router.post("/jobs/{job_id}/cancel", response_model=None)
@router.delete("/jobs/{job_id}", response_model=None)
async def cancel_job(job_id: str, gateway: GatewayDep, principal: PrincipalDep) -> JSONResponse:
    """Cancel a job: a queued job never starts, a rendering one stops at its next pass.

    Answers the job object once it is cancelled (200), the current one if it is still
    ending after a few seconds (202), or 409 when it had already ended otherwise.
    """
    state = await gateway.projection.get(job_id)
    if state is None or state.spec.account_id != principal.account_id:
        raise APIError(404, f"No job found with id '{job_id}'.", param="job_id", code="not_found")
    if state.terminal and state.status != "cancelled":
        raise APIError(409, f"The job {job_id} has already ended ({state.status}).", code="job_not_cancellable")
    with gateway.live.subscribe(job_id) as queue:
        if not state.terminal:
            await _cancel(gateway, job_id, principal.account_id, "requested", state.spec.tier)
        state = await _wait_for_end(gateway, JobFollower(state), queue, CANCEL_WAIT_S)
    if state.terminal and state.status != "cancelled":
        raise APIError(
            409, f"The job {job_id} ended ({state.status}) before it could be cancelled.", code="job_not_cancellable"
        )
    return JSONResponse(await job_object(gateway, state), status_code=200 if state.terminal else 202)


async def _cancel(gateway: Gateway, job_id: str, account_id: str, reason: str, tier: str) -> None:
    command = CancelJob(
        job_id=job_id, account_id=account_id, reason="requested" if reason == "requested" else "client_disconnected"
    )
    # On the job's own command stream (api-tier jobs have theirs), after its GenerateImage.
    await gateway.publisher.publish(topics.IMAGE_COMMANDS, Envelope.wrap(command, aggregate_id=job_id, tier=tier))


def _cancel_later(gateway: Gateway, job_id: str, account_id: str, tier: str) -> None:
    """Sends a cancellation from code that is itself being cancelled (a stream whose client left)."""
    cancel = _cancel(gateway, job_id, account_id, "client_disconnected", tier)
    task = asyncio.get_running_loop().create_task(cancel)
    _pending.add(task)
    task.add_done_callback(_pending.discard)


@router.get("/jobs/{job_id}", response_model=None)
async def get_job(
    job_id: str,
    gateway: GatewayDep,
    principal: PrincipalDep,
    response_format: Annotated[str, Query(pattern="^(b64_json|url)$")] = "b64_json",
) -> JSONResponse:
    """A job's status; when completed, its images and usage as in a synchronous response."""
    state = await gateway.projection.get(job_id)
    if state is None or state.spec.account_id != principal.account_id:
        raise APIError(404, f"No job found with id '{job_id}'.", param="job_id", code="not_found")
    return JSONResponse(await job_object(gateway, state, response_format))


def job_spec(
    body: ImageGenerationRequest, principal: Principal, gateway: Gateway, idempotency_key: str | None = None
) -> JobSpec:
    """The job a request asks for, validated against the models and the API's rules."""
    model = resolve_model(gateway.settings, body.model)
    if body.background == "transparent":
        raise invalid("background", f"Transparent backgrounds are not supported by {model}; use 'opaque' or 'auto'.")
    if body.stream and body.n > 1:
        raise invalid("n", "Streaming returns one image; set n to 1 or turn off stream.")
    if body.partial_images and not body.stream:
        raise invalid("partial_images", "partial_images requires stream=true.")
    return JobSpec(
        account_id=principal.account_id,
        tier=principal.tier,
        prompt=body.prompt,
        model=model,
        n=body.n,
        size=SIZES[body.size],
        quality=RESOLVED_QUALITY[body.quality],
        passes=PASSES[body.quality],
        output_format=body.output_format,
        output_compression=100 if body.output_compression is None else body.output_compression,
        background="opaque" if body.background == "opaque" else "auto",
        moderation=body.moderation,
        partial_images=body.partial_images if body.stream else 0,
        seed=_seed(body.seed, principal, idempotency_key),
        user=body.user,
        text_tokens=count_text_tokens(body.prompt),
        idempotency_key=idempotency_key,
    )


def _seed(asked: int | None, principal: Principal, idempotency_key: str | None) -> int:
    """The body's seed; else, with an Idempotency-Key, the key's (retries compare equal); else random."""
    if asked is not None:
        return asked
    if idempotency_key is not None:
        return key_seed(principal.account_id, idempotency_key)
    return secrets.randbits(31)


async def _wait_for_end(
    gateway: Gateway,
    follower: JobFollower,
    queue: asyncio.Queue[Envelope],
    timeout_s: float,
    left: Callable[[], Awaitable[bool]] | None = None,
) -> JobState:
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
        # The read model may be a moment behind the live event that showed the gap.
        follower.catch_up(await gateway.projection.get(job_id))
        if envelope is None or follower.state.sequence >= envelope.sequence:
            return
        await asyncio.sleep(0.02)


def _job_error(state: JobState) -> APIError:
    if state.status == "blocked":
        return APIError(
            400,
            state.error_message or "Your request was rejected by the safety system.",
            param="prompt" if state.blocked_stage == "prompt" else None,
            code="moderation_blocked",
            headers={"x-should-retry": "false"},
        )
    if state.status == "cancelled":
        return APIError(409, "The job was cancelled.", code="job_cancelled")
    return APIError(500, state.error_message or "The image could not be generated.", code=state.error_code)


async def _image_items(gateway: Gateway, state: JobState, response_format: str) -> list[dict[str, str]]:
    # `image_id` is darkroom's addition: what `GET /v1/images/{id}` and a tweak's `image_id` take.
    items: list[dict[str, str]] = []
    for ref in state.images:
        if response_format == "url":
            url = await gateway.blobs.url(ref.object_key, gateway.settings.url_expiry_s)
            items.append({"url": url, "image_id": ref.image_id})
        else:
            data = base64.b64encode(await gateway.blobs.get(ref.object_key)).decode()
            items.append({"b64_json": data, "image_id": ref.image_id})
    return items


def _usage(state: JobState) -> dict[str, Any] | None:
    if state.usage is None:
        return None
    usage = state.usage
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"text_tokens": usage.text_tokens, "image_tokens": usage.image_tokens},
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }


def _size(spec: JobSpec) -> str:
    return f"{spec.size}x{spec.size}"


async def _images_response(gateway: Gateway, state: JobState, response_format: str) -> dict[str, Any]:
    spec = state.spec
    return {
        "created": int(state.created_at.timestamp()),
        "data": await _image_items(gateway, state, response_format),
        "size": _size(spec),
        "quality": spec.quality,
        "output_format": spec.output_format,
        "background": spec.background,
        "usage": _usage(state),
    }


async def job_object(gateway: Gateway, state: JobState, response_format: str = "b64_json") -> dict[str, Any]:
    """The `image.job` object of a job, in any state.

    A job waiting in its lane is `queued`, or `deferred` when it waits behind
    higher-priority lanes (see services.gateway.lanes); both carry `estimated_wait_s` and
    `decoders_up` (false while no decoder of its pool is alive: then no estimate).
    """
    body: dict[str, Any] = {
        "id": state.job_id,
        "object": "image.job",
        "status": state.status,
        "created_at": int(state.created_at.timestamp()),
        "model": state.spec.model,
        "model_version": state.version or state.spec.version,
        "progress": {"pass": _pass_reached(gateway, state), "total_passes": state.total_passes},
    }
    if state.status == "queued" and state.lane:
        # Waiting for a decoder: how long, and whether behind higher-priority lanes.
        if gateway.lanes.deferred(state.lane):
            body["status"] = "deferred"
        # With no live decoder for its pool the job waits, durably, for one to come back: no
        # estimate, and `decoders_up` says why.
        up = lane_served(gateway, state.lane)
        wait = gateway.lanes.estimated_wait_s(state.lane) if up else None
        body["estimated_wait_s"] = None if wait is None else round(wait, 1)
        body["decoders_up"] = up
    if state.status == "completed":
        body |= await _images_response(gateway, state, response_format)
    elif state.status in ("blocked", "failed", "cancelled"):
        body["error"] = _job_error(state).body()["error"]
    return body


def _pass_reached(gateway: Gateway, state: JobState) -> int:
    """The job's progress: the last pass its decoder reported (passes are progress events,
    which every replica reads live, not request events), or what its request events say."""
    return max(state.pass_index, gateway.live.pass_reached(state.job_id))


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _stream(
    gateway: Gateway,
    seeded: JobState,
    queue: asyncio.Queue[Envelope],
    kind: str = "image_generation",
    cancel_on_disconnect: bool = False,
) -> AsyncIterator[bytes]:
    """Server-sent events: partial images at evenly spaced passes, then the final image.

    The generator holds its own subscription, since the route's `with` block has ended
    by the time the response body is sent. When the client leaves before the end, the
    job goes on (it can be fetched later) unless it asked to cancel on disconnect.
    """
    ended = False
    try:
        async for frame in _stream_frames(gateway, seeded, queue, kind):
            yield frame
        ended = True
    finally:
        if not ended and cancel_on_disconnect:
            _cancel_later(gateway, seeded.job_id, seeded.spec.account_id, seeded.spec.tier)


async def _stream_frames(
    gateway: Gateway, seeded: JobState, queue: asyncio.Queue[Envelope], kind: str
) -> AsyncIterator[bytes]:
    job_id, spec, created = seeded.job_id, seeded.spec, seeded.created_at
    common = {
        "created_at": int(created.timestamp()),
        "size": _size(spec),
        "quality": spec.quality,
        "background": spec.background,
        "output_format": spec.output_format,
    }
    wanted = preview_passes(spec.passes, spec.partial_images)
    sent: set[int] = set()
    follower = JobFollower(seeded)
    with gateway.live.subscribe(job_id) as own:
        # Envelopes that reached the route's queue before this generator subscribed.
        pending = [queue.get_nowait() for _ in range(queue.qsize())]
        last_poll = time.monotonic()
        deadline = time.monotonic() + gateway.settings.sync_wait_s
        while True:
            envelope = pending.pop(0) if pending else None
            if envelope is None:
                try:
                    envelope = await asyncio.wait_for(own.get(), timeout=gateway.settings.stream_keepalive_s)
                except TimeoutError:
                    yield b": keep-alive\n\n"
            if envelope is not None and envelope.type == "render.render_progressed":
                pass_index = int(envelope.payload.get("pass_index", 0))
                previews = envelope.payload.get("previews") or []
                if pass_index in wanted and previews and pass_index not in sent:
                    sent.add(pass_index)
                    partial = {"type": f"{kind}.partial_image", "b64_json": previews[0]}
                    partial |= {"partial_image_index": wanted.index(pass_index)} | common
                    yield _sse(f"{kind}.partial_image", partial)
                continue
            if envelope is None and time.monotonic() - last_poll < FALLBACK_POLL_S:
                continue
            if envelope is None:
                last_poll = time.monotonic()
            await _follow(gateway, follower, envelope)
            if follower.state.terminal:
                async for frame in _stream_end(gateway, follower.state, common, kind):
                    yield frame
                return
            if time.monotonic() > deadline:
                yield _sse("error", {"type": "error", "error": _timeout_error(follower.state)})
                return


async def _stream_end(gateway: Gateway, state: JobState, common: dict[str, Any], kind: str) -> AsyncIterator[bytes]:
    if state.status == "completed":
        await gateway.catalog.record(catalog_entries(state))
        [item] = await _image_items(gateway, state, "b64_json")
        done = {"type": f"{kind}.completed", "b64_json": item["b64_json"], "image_id": item["image_id"]} | common
        done["usage"] = _usage(state)
        yield _sse(f"{kind}.completed", done)
    else:
        yield _sse("error", {"type": "error", "error": _job_error(state).body()["error"]})


def _timeout_error(state: JobState) -> dict[str, Any]:
    return {
        "message": f"The job {state.job_id} is still running; fetch it with GET /v1/images/jobs/{state.job_id}.",
        "type": "server_error",
        "param": None,
        "code": "job_pending",
    }
