"""The Images API: generations (one response, a stream, or an async job), job status, cancellation.

The routes translate HTTP only: the use cases are services/gateway/jobs.py, and how a job is
answered (shared with tweaks) is services/gateway/jobs_http.py.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from libs.apikeys import Principal
from services.gateway import jobs
from services.gateway.context import Gateway, get_gateway, get_principal
from services.gateway.errors import refused
from services.gateway.jobs_http import job_object, job_spec, respond
from services.gateway.models import ImageGenerationRequest
from services.gateway.refusals import Refusal

router = APIRouter(prefix="/v1/images", tags=["images"])

GatewayDep = Annotated[Gateway, Depends(get_gateway)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]


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
    command = jobs.SubmitJob(principal, job_spec(body, principal, gateway, idempotency_key))
    return await respond(
        gateway, request, command, stream=body.stream, response_format=body.response_format, prefer=prefer
    )


@router.post("/jobs/{job_id}/cancel", response_model=None)
@router.delete("/jobs/{job_id}", response_model=None)
async def cancel_job(job_id: str, gateway: GatewayDep, principal: PrincipalDep) -> JSONResponse:
    """Cancel a job: a queued job never starts, a rendering one stops at its next pass.

    Answers the job object once it is cancelled (200), the current one if it is still
    ending after a few seconds (202), or 409 when it had already ended otherwise.
    """
    state = await jobs.cancel(gateway, jobs.CancelOwnJob(principal.account_id, job_id))
    if isinstance(state, Refusal):
        raise refused(state)
    return JSONResponse(await job_object(gateway, state), status_code=200 if state.terminal else 202)


@router.get("/jobs/{job_id}", response_model=None)
async def get_job(
    job_id: str,
    gateway: GatewayDep,
    principal: PrincipalDep,
    response_format: Annotated[str, Query(pattern="^(b64_json|url)$")] = "b64_json",
) -> JSONResponse:
    """A job's status; when completed, its images and usage as in a synchronous response."""
    state = await jobs.find(gateway, principal.account_id, job_id)
    if isinstance(state, Refusal):
        raise refused(state)
    return JSONResponse(await job_object(gateway, state, response_format))
