"""Image jobs over HTTP, for generations (images.py) and tweaks (edits.py) alike.

A route validates its request into a `JobSpec` (`job_spec`) and hands the command to submit it
(`jobs.SubmitJob`) to `respond`, which runs the job use cases (services/gateway/jobs.py) and
answers as the client asked: one response when the job ends, server-sent events, or the job at
once (202). Refusals and jobs that ended otherwise than completed leave in OpenAI's error shape
(services/gateway/errors.py).
"""

from __future__ import annotations

import base64
import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from libs.apikeys import Principal
from libs.events.schemas import JobSpec
from libs.readmodels.view import JobView
from services.gateway import jobs
from services.gateway.context import Gateway
from services.gateway.errors import APIError, invalid, refused
from services.gateway.idempotency import key_seed
from services.gateway.limits import SCOPE_HEADERS
from services.gateway.models import PASSES, RESOLVED_QUALITY, SIZES, ImageGenerationRequest, count_text_tokens
from services.gateway.refusals import Refusal
from services.gateway.served_models import lane_served, resolve_model

CANCEL_ON_DISCONNECT = "x-darkroom-cancel-on-disconnect"
"""Request header: "true" cancels the job when the client leaves a synchronous or streaming call."""
JOB_ID_HEADER = "x-darkroom-job-id"
"""Response header of a generation or tweak in every mode: the job's id, for
`GET /v1/images/jobs/{id}` and cancelling (a stream's frames do not carry it)."""


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


async def respond(
    gateway: Gateway,
    request: Request,
    command: jobs.SubmitJob,
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
        command: The caller and the validated job.
        stream: Answer with server-sent events.
        response_format: "b64_json" or "url".
        prefer: The Prefer header (`respond-async` answers 202 with the job at once).
        kind: The stream's event prefix ("image_generation" or "image_edit").

    Raises:
        APIError: The submission's refusal; the job's error when it ended otherwise than completed.
    """
    admitted = await jobs.admit(gateway, command)
    if isinstance(admitted, Refusal):
        raise refused(admitted)
    # Every response to the request carries them, an error's too (`RateLimitHeaders`).
    request.scope[SCOPE_HEADERS] = admitted.rate_limit_headers
    cancel_on_disconnect = request.headers.get(CANCEL_ON_DISCONNECT, "").lower() in ("1", "true", "yes")
    job_header = {JOB_ID_HEADER: admitted.job.job_id}
    async with jobs.start(gateway, admitted) as run:
        if prefer and "respond-async" in prefer.lower():
            return JSONResponse(await job_object(gateway, await run.latest()), status_code=202, headers=job_header)
        if stream:
            return StreamingResponse(
                _stream(gateway, run, kind, cancel_on_disconnect),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no"} | job_header,
            )
        state = await run.to_end(request.is_disconnected if cancel_on_disconnect else None)
    if not state.terminal:
        # Still running after the synchronous limit: hand the client the job instead of failing.
        return JSONResponse(await job_object(gateway, state), status_code=202, headers=job_header)
    if state.status != "completed":
        raise _job_error(state)
    return JSONResponse(await _images_response(gateway, state, response_format), headers=job_header)


def _job_error(state: JobView) -> APIError:
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


async def _image_items(gateway: Gateway, state: JobView, response_format: str) -> list[dict[str, str]]:
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


def _usage(state: JobView) -> dict[str, Any] | None:
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


async def _images_response(gateway: Gateway, state: JobView, response_format: str) -> dict[str, Any]:
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


async def job_object(gateway: Gateway, state: JobView, response_format: str = "b64_json") -> dict[str, Any]:
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
    elif state.terminal:  # blocked, failed or cancelled
        body["error"] = _job_error(state).body()["error"]
    return body


def _pass_reached(gateway: Gateway, state: JobView) -> int:
    """The job's progress: the last pass its decoder reported (passes are progress events,
    which every replica reads live, not request events), or what its request events say."""
    return max(state.pass_index, gateway.live.pass_reached(state.job_id))


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _stream(gateway: Gateway, run: jobs.JobRun, kind: str, cancel_on_disconnect: bool) -> AsyncIterator[bytes]:
    """Server-sent events: partial images at evenly spaced passes, then the final image.

    The run's updates are closed with this generator, so a client that leaves cancels its
    job (when it asked to) as soon as the response ends.
    """
    spec = run.job.spec
    common: dict[str, Any] = {
        "created_at": int(run.job.created_at.timestamp()),
        "size": _size(spec),
        "quality": spec.quality,
        "background": spec.background,
        "output_format": spec.output_format,
    }
    async with contextlib.aclosing(run.updates(cancel_on_disconnect)) as updates:
        async for update in updates:
            if isinstance(update, jobs.KeepAlive):
                yield b": keep-alive\n\n"
            elif isinstance(update, jobs.Preview):
                partial: dict[str, Any] = {"type": f"{kind}.partial_image", "b64_json": update.image_b64}
                partial |= {"partial_image_index": update.index} | common
                yield _sse(f"{kind}.partial_image", partial)
            elif isinstance(update, jobs.StillRunning):
                yield _sse("error", {"type": "error", "error": _timeout_error(update.state)})
            elif update.state.status == "completed":
                [item] = await _image_items(gateway, update.state, "b64_json")
                done: dict[str, Any] = {"type": f"{kind}.completed", "b64_json": item["b64_json"]}
                done |= {"image_id": item["image_id"]} | common
                done["usage"] = _usage(update.state)
                yield _sse(f"{kind}.completed", done)
            else:
                yield _sse("error", {"type": "error", "error": _job_error(update.state).body()["error"]})


def _timeout_error(state: JobView) -> dict[str, Any]:
    return {
        "message": f"The job {state.job_id} is still running; fetch it with GET /v1/images/jobs/{state.job_id}.",
        "type": "server_error",
        "param": None,
        "code": "job_pending",
    }
