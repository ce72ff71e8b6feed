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
from libs.jobs import JobState, preview_passes
from libs.stores.ports import StoreUnavailable
from services.gateway.context import Gateway, get_gateway, get_principal
from services.gateway.errors import APIError, invalid
from services.gateway.idempotency import MAX_KEY_LENGTH
from services.gateway.models import PASSES, RESOLVED_QUALITY, SIZES, ImageGenerationRequest, count_text_tokens

router = APIRouter(prefix="/v1/images", tags=["images"])

GatewayDep = Annotated[Gateway, Depends(get_gateway)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
FALLBACK_POLL_S = 2.0
"""How often a waiting request also reads the read model, in case a live event was missed."""
CANCEL_ON_DISCONNECT = "x-darkroom-cancel-on-disconnect"
"""Request header: "true" cancels the job when the client leaves a synchronous or streaming call."""
CANCEL_WAIT_S = 10.0
"""How long a cancel request waits for the job to end before answering with its state."""
_pending: set[asyncio.Task[None]] = set()
"""Cancellations sent after a client left (kept referenced until they are published)."""


@router.post("/generations", response_model=None)
async def create_generation(
    body: ImageGenerationRequest,
    request: Request,
    gateway: GatewayDep,
    principal: PrincipalDep,
    prefer: Annotated[str | None, Header()] = None,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> Response:
    """Create images from a prompt (OpenAI's `images.generate`)."""
    spec = _spec(body, principal, gateway, idempotency_key)
    job_id = f"job_{new_ulid().lower()}"
    created = datetime.now(UTC)
    if idempotency_key is not None:
        job_id = await _claim(gateway, principal, idempotency_key, job_id, created)
    existing = await gateway.projection.get(job_id) if idempotency_key is not None else None
    if existing is not None:
        spec, created = existing.spec, existing.created_at
    else:
        await gateway.projection.seed(JobState(job_id=job_id, spec=spec, created_at=created, total_passes=spec.passes))
    cancel_on_disconnect = request.headers.get(CANCEL_ON_DISCONNECT, "").lower() in ("1", "true", "yes")
    with gateway.live.subscribe(job_id) as queue:
        if existing is None:
            command = GenerateImage(job_id=job_id, spec=spec, created_at=created)
            await gateway.publisher.publish(
                topics.IMAGE_COMMANDS, Envelope.wrap(command, aggregate_id=job_id, tier=spec.tier)
            )
        if prefer and "respond-async" in prefer.lower():
            state = await gateway.projection.get(job_id)
            return JSONResponse(await job_object(gateway, state or _queued(job_id, spec, created)), status_code=202)
        if body.stream:
            return StreamingResponse(
                _stream(gateway, job_id, spec, created, queue, body, cancel_on_disconnect),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
            )
        left = request.is_disconnected if cancel_on_disconnect else None
        state = await _wait_for_end(gateway, job_id, queue, gateway.settings.sync_wait_s, left)
    if state is None or not state.terminal:
        if left is not None and await left():
            await _cancel(gateway, job_id, principal.account_id, "client_disconnected")
        # Still running after the synchronous limit: hand the client the job instead of failing.
        return JSONResponse(await job_object(gateway, state or _queued(job_id, spec, created)), status_code=202)
    if state.status != "completed":
        raise _job_error(state)
    return JSONResponse(await _images_response(gateway, state, body.response_format))


async def _claim(gateway: Gateway, principal: Principal, key: str, job_id: str, created: datetime) -> str:
    """The job an Idempotency-Key names for this account: an earlier one, or `job_id`."""
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise invalid("Idempotency-Key", f"The Idempotency-Key header must be 1 to {MAX_KEY_LENGTH} characters.")
    try:
        return await gateway.idempotency.claim(principal.account_id, key, job_id, created)
    except StoreUnavailable as exc:
        raise APIError(503, "The service is temporarily unavailable; retry with the same key.") from exc


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
            await _cancel(gateway, job_id, principal.account_id, "requested")
        state = await _wait_for_end(gateway, job_id, queue, CANCEL_WAIT_S) or state
    if state.terminal and state.status != "cancelled":
        raise APIError(
            409, f"The job {job_id} ended ({state.status}) before it could be cancelled.", code="job_not_cancellable"
        )
    return JSONResponse(await job_object(gateway, state), status_code=200 if state.terminal else 202)


async def _cancel(gateway: Gateway, job_id: str, account_id: str, reason: str) -> None:
    command = CancelJob(
        job_id=job_id, account_id=account_id, reason="requested" if reason == "requested" else "client_disconnected"
    )
    await gateway.publisher.publish(topics.IMAGE_COMMANDS, Envelope.wrap(command, aggregate_id=job_id))


def _cancel_later(gateway: Gateway, job_id: str, account_id: str) -> None:
    """Sends a cancellation from code that is itself being cancelled (a stream whose client left)."""
    task = asyncio.get_running_loop().create_task(_cancel(gateway, job_id, account_id, "client_disconnected"))
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


def _spec(
    body: ImageGenerationRequest, principal: Principal, gateway: Gateway, idempotency_key: str | None = None
) -> JobSpec:
    models = gateway.settings.models
    model = body.model or models[0]
    if model not in models:
        available = ", ".join(models)
        raise invalid("model", f"The model '{model}' does not exist. Available: {available}.", "model_not_found")
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
        seed=body.seed if body.seed is not None else secrets.randbits(31),
        user=body.user,
        text_tokens=count_text_tokens(body.prompt),
        idempotency_key=idempotency_key,
    )


def _queued(job_id: str, spec: JobSpec, created: datetime) -> JobState:
    return JobState(job_id=job_id, spec=spec, created_at=created, total_passes=spec.passes)


async def _wait_for_end(
    gateway: Gateway,
    job_id: str,
    queue: asyncio.Queue[Envelope],
    timeout_s: float,
    left: Callable[[], Awaitable[bool]] | None = None,
) -> JobState | None:
    """Wait until the job is terminal, the timeout passes or (with `left`) the client left.

    Returns:
        The job's latest state.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or (left is not None and await left()):
            return await gateway.projection.get(job_id)
        try:
            envelope = await asyncio.wait_for(queue.get(), timeout=min(remaining, FALLBACK_POLL_S))
        except TimeoutError:
            envelope = None
        if envelope is None or envelope.type in _TERMINAL_TYPES:
            state = await _latest(gateway, job_id, envelope)
            if state is not None and state.terminal:
                return state


_TERMINAL_TYPES = {"images.job_completed", "images.job_blocked", "images.job_failed", "images.job_cancelled"}


async def _latest(gateway: Gateway, job_id: str, envelope: Envelope | None) -> JobState | None:
    """The job's state, waiting briefly for the read model to catch up with a live event."""
    for _ in range(50):
        state = await gateway.projection.get(job_id)
        if envelope is None or (state is not None and state.sequence >= envelope.sequence):
            return state
        await asyncio.sleep(0.02)
    return await gateway.projection.get(job_id)


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
    items: list[dict[str, str]] = []
    for ref in state.images:
        if response_format == "url":
            items.append({"url": await gateway.blobs.url(ref.object_key, gateway.settings.url_expiry_s)})
        else:
            items.append({"b64_json": base64.b64encode(await gateway.blobs.get(ref.object_key)).decode()})
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
    """The `image.job` object of a job, in any state."""
    body: dict[str, Any] = {
        "id": state.job_id,
        "object": "image.job",
        "status": state.status,
        "created_at": int(state.created_at.timestamp()),
        "model": state.spec.model,
        "progress": {"pass": state.pass_index, "total_passes": state.total_passes},
    }
    if state.status == "completed":
        body |= await _images_response(gateway, state, response_format)
    elif state.status in ("blocked", "failed", "cancelled"):
        body["error"] = _job_error(state).body()["error"]
    return body


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _stream(
    gateway: Gateway,
    job_id: str,
    spec: JobSpec,
    created: datetime,
    queue: asyncio.Queue[Envelope],
    body: ImageGenerationRequest,
    cancel_on_disconnect: bool = False,
) -> AsyncIterator[bytes]:
    """Server-sent events: partial images at evenly spaced passes, then the final image.

    The generator holds its own subscription, since the route's `with` block has ended
    by the time the response body is sent. When the client leaves before the end, the
    job goes on (it can be fetched later) unless it asked to cancel on disconnect.
    """
    ended = False
    try:
        async for frame in _stream_frames(gateway, job_id, spec, created, queue, body):
            yield frame
        ended = True
    finally:
        if not ended and cancel_on_disconnect:
            _cancel_later(gateway, job_id, spec.account_id)


async def _stream_frames(
    gateway: Gateway,
    job_id: str,
    spec: JobSpec,
    created: datetime,
    queue: asyncio.Queue[Envelope],
    body: ImageGenerationRequest,
) -> AsyncIterator[bytes]:
    common = {
        "created_at": int(created.timestamp()),
        "size": _size(spec),
        "quality": spec.quality,
        "background": spec.background,
        "output_format": spec.output_format,
    }
    wanted = preview_passes(spec.passes, spec.partial_images)
    sent: set[int] = set()
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
                    partial = {"type": "image_generation.partial_image", "b64_json": previews[0]}
                    partial |= {"partial_image_index": wanted.index(pass_index)} | common
                    yield _sse("image_generation.partial_image", partial)
                continue
            polled = envelope is None and time.monotonic() - last_poll >= FALLBACK_POLL_S
            if envelope is not None and envelope.type not in _TERMINAL_TYPES and not polled:
                continue
            last_poll = time.monotonic()
            state = await _latest(gateway, job_id, envelope)
            if state is not None and state.terminal:
                async for frame in _stream_end(gateway, state, common):
                    yield frame
                return
            if time.monotonic() > deadline:
                state = state or _queued(job_id, spec, created)
                yield _sse("error", {"type": "error", "error": _timeout_error(state)})
                return


async def _stream_end(gateway: Gateway, state: JobState, common: dict[str, Any]) -> AsyncIterator[bytes]:
    if state.status == "completed":
        [item] = await _image_items(gateway, state, "b64_json")
        done = {"type": "image_generation.completed", "b64_json": item["b64_json"]} | common
        done["usage"] = _usage(state)
        yield _sse("image_generation.completed", done)
    else:
        yield _sse("error", {"type": "error", "error": _job_error(state).body()["error"]})


def _timeout_error(state: JobState) -> dict[str, Any]:
    return {
        "message": f"The job {state.job_id} is still running; fetch it with GET /v1/images/jobs/{state.job_id}.",
        "type": "server_error",
        "param": None,
        "code": "job_pending",
    }
