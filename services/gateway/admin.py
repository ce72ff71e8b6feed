"""The operator API under `/v1/admin`: what the operators' console reads and changes.

It opens only to the operator token (`DARKROOM_OPERATOR_TOKEN`, `context.get_operator`),
never to an API key. Every answer comes from what the gateway already holds or the
tools operators already use, so nothing here decides anything new:

- the lanes, decoder batches and service heartbeats this gateway follows (as /metrics
  and /healthz show them);
- the policies and rollouts in force (its live `AccessState`); a change is decided by
  the CLI's own functions (`libs.cli.policy`) and published as the same event as
  `darkroom policy set`, so every gateway applies it through its access feed;
- the dead letters, read and replayed as `darkroom dlq` does (`libs.cli.dlq`);
- recent jobs of every account, from the gateway's job read model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Final, Protocol, TypeVar

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from libs.cli import dlq
from libs.cli.policy import PolicyError, publish_change, rollout_change, tier_change
from libs.events import DecodeError, Envelope
from libs.events.schemas import RolloutChanged, TierPolicyChanged
from libs.jobs import Status
from libs.lanes import POOLS
from libs.readmodels.view import JobView
from services.gateway.context import Gateway, get_operator
from services.gateway.errors import APIError, invalid
from services.gateway.jobs_http import job_object

router = APIRouter(prefix="/v1/admin", tags=["operator"])

OperatorDep = Annotated[Gateway, Depends(get_operator)]
CHANGED_BY: Final = "admin-console"
"""Who a change made through this API names (the CLI names the operator's user)."""
APPLY_WAIT_S: Final = 3.0
"""How long a change waits to see itself applied here, so a re-read right after shows it."""
DLQ_READ_TIMEOUT_S: Final = 10.0
PREVIEW_CHARS: Final = 300
DEFAULT_JOBS: Final = 50
MAX_JOBS: Final = 200
STATUS_SCAN: Final = 4
"""With a status filter, this many times `limit` of the latest jobs are looked through."""
JOB_SUMMARY: Final = ("id", "object", "status", "created_at", "model", "progress", "estimated_wait_s", "error")
"""The fields of the job object a listed job keeps (not its images)."""


Change = TypeVar("Change", TierPolicyChanged, RolloutChanged)


class RolloutRequest(BaseModel):
    """The body of `PUT /v1/admin/rollouts/{feature}/{tier}`."""

    model_config = ConfigDict(extra="forbid")

    percent: float


class ReplayRequest(BaseModel):
    """The body of `POST /v1/admin/dead-letters/replay`; no offsets: every letter."""

    model_config = ConfigDict(extra="forbid")

    offsets: list[int] = []


class DeadLetters(Protocol):
    """Where the dead letters are read from and replayed to (Kafka; a fake in unit tests)."""

    async def read(self) -> list[dlq.Letter]:
        """Every dead letter, oldest first."""
        ...

    async def replay(self, letters: Sequence[dlq.Letter]) -> int:
        """Send the letters' messages back to their topics; how many were sent."""
        ...


@dataclasses.dataclass(frozen=True)
class KafkaDeadLetters:
    """The dead-letter topic on the gateway's Kafka, through `darkroom dlq`'s functions."""

    bootstrap: str

    async def read(self) -> list[dlq.Letter]:
        return await dlq.read_letters(self.bootstrap, timeout_s=DLQ_READ_TIMEOUT_S)

    async def replay(self, letters: Sequence[dlq.Letter]) -> int:
        return await dlq.replay(self.bootstrap, letters)


async def get_dead_letters(gateway: OperatorDep) -> DeadLetters:
    """FastAPI dependency: the dead letters of the gateway's Kafka."""
    return KafkaDeadLetters(gateway.settings.kafka_bootstrap)


DeadLettersDep = Annotated[DeadLetters, Depends(get_dead_letters)]
"""Routes that take it take OperatorDep too, so the token is checked even where a test replaces it."""


@router.get("/lanes", response_model=None)
async def get_lanes(gateway: OperatorDep) -> JSONResponse:
    """The live view: every lane, each decoder's batch, each decoder pool of every model
    served (as /healthz counts them), each service's heartbeats."""
    body = {
        "lanes": [dataclasses.asdict(figures) for figures in gateway.lanes.figures()],
        "decoders": {instance: load.model_dump() for instance, load in gateway.heartbeats.batch_loads().items()},
        "pools": gateway.heartbeats.pools(gateway.settings.models, tuple(POOLS)),
        "services": gateway.heartbeats.report(),
    }
    return JSONResponse(body)


@router.get("/models", response_model=None)
async def get_model_releases(gateway: OperatorDep) -> JSONResponse:
    """Every served model's versions and rollout as this gateway routes by them now
    (`darkroom models list` shows the same from the policy topic)."""
    releases = gateway.limits.releases
    return JSONResponse({"object": "list", "data": [releases.snapshot(m) for m in gateway.settings.models]})


@router.get("/policy", response_model=None)
async def get_policy(gateway: OperatorDep) -> JSONResponse:
    """Every tier's policy and every rollout flag in force at this gateway."""
    return JSONResponse(gateway.limits.access.snapshot())


@router.patch("/policy/tiers/{tier}", response_model=None)
async def set_tier_policy(tier: str, changes: Annotated[dict[str, Any], Body()], gateway: OperatorDep) -> JSONResponse:
    """Change some fields of a tier's policy, as `darkroom policy set --tier T field=value` does."""
    access = gateway.limits.access
    change = _decided(lambda: tier_change(access, tier, changes, CHANGED_BY))
    await publish_change(gateway.publisher, change)
    applied = await _until(lambda: access.policy(tier) == change.policy, APPLY_WAIT_S)
    return JSONResponse(change_object(change, applied))


@router.put("/rollouts/{feature}/{tier}", response_model=None)
async def set_rollout(feature: str, tier: str, body: RolloutRequest, gateway: OperatorDep) -> JSONResponse:
    """Set the share of a tier's accounts that get a feature, as `darkroom policy set --rollout` does."""
    access = gateway.limits.access
    change = _decided(lambda: rollout_change(access, feature, tier, body.percent, CHANGED_BY))
    await publish_change(gateway.publisher, change)
    applied = await _until(lambda: access.rollout_percent(feature, tier) == change.percent, APPLY_WAIT_S)
    return JSONResponse(change_object(change, applied))


@router.get("/dead-letters", response_model=None)
async def list_dead_letters(gateway: OperatorDep, letters: DeadLettersDep) -> JSONResponse:
    """Every dead letter, oldest first."""
    found = await _read(letters)
    return JSONResponse({"object": "list", "data": [letter_object(item) for item in found]})


@router.post("/dead-letters/replay", response_model=None)
async def replay_dead_letters(
    gateway: OperatorDep, letters: DeadLettersDep, body: ReplayRequest | None = None
) -> JSONResponse:
    """Send the chosen letters (by dead-letter offset; none named: all) back to their topics."""
    try:
        chosen = dlq.select(await _read(letters), (body or ReplayRequest()).offsets)
    except KeyError as exc:
        raise invalid("offsets", str(exc.args[0]), "not_found") from exc
    return JSONResponse({"replayed": await letters.replay(chosen)})


@router.get("/jobs", response_model=None)
async def list_jobs(
    gateway: OperatorDep,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_JOBS)] = DEFAULT_JOBS,
) -> JSONResponse:
    """The latest jobs of every account, newest first, optionally of one status only."""
    ids = await gateway.projection.recent(limit if status is None else limit * STATUS_SCAN)
    found = [s for s in await asyncio.gather(*(gateway.projection.get(job_id) for job_id in ids)) if s is not None]
    jobs = await asyncio.gather(*(job_object(gateway, state, "url") for state in found))
    items = [job_summary(job, state) for job, state in zip(jobs, found, strict=True)]
    data = [item for item in items if status is None or item["status"] == status][:limit]
    return JSONResponse({"object": "list", "data": data})


@router.get("/jobs/{job_id}", response_model=None)
async def get_job(
    job_id: str,
    gateway: OperatorDep,
    response_format: Annotated[str, Query(pattern="^(b64_json|url)$")] = "b64_json",
) -> JSONResponse:
    """Any account's job: the object its owner sees, with whose it is and what it asked for."""
    state = await gateway.projection.get(job_id)
    if state is None:
        raise APIError(404, f"No job found with id '{job_id}'.", param="job_id", code="not_found")
    return JSONResponse(await job_object(gateway, state, response_format) | job_fields(state))


def job_fields(state: JobView) -> dict[str, Any]:
    """What an operator sees of a job beyond its owner's view: whose it is and what it asked for."""
    spec = state.spec
    return {
        "account_id": spec.account_id,
        "tier": spec.tier,
        "lane": state.lane or spec.lane,
        "prompt": spec.prompt,
        "n": spec.n,
        "size": f"{spec.size}x{spec.size}",
        "quality": spec.quality,
        "output_format": spec.output_format,
        "seed": spec.seed,
        "version": state.version or spec.version,
        "attempt": state.attempt,
        "tweak_of": [source.parent_image_id for source in spec.edits],
        "image_ids": [ref.image_id for ref in state.images],
    }


def job_summary(job: dict[str, Any], state: JobView) -> dict[str, Any]:
    """A listed job: its job object without the images, and `job_fields`."""
    return {key: job[key] for key in JOB_SUMMARY if key in job} | job_fields(state)


def change_object(change: TierPolicyChanged | RolloutChanged, applied: bool) -> dict[str, Any]:
    """The answer to a change: the change event's fields, and whether this gateway shows it yet."""
    return change.model_dump(mode="json") | {"applied": applied}


def letter_object(item: dlq.Letter) -> dict[str, Any]:
    """A dead letter as JSON: where it sits, where it came from, why, and a preview of the message."""
    letter = item.letter
    value = dlq.original_value(letter)
    return {
        "offset": item.offset,
        "time": int(item.time.timestamp()),
        "service": letter.service,
        "group": letter.group,
        "reason": letter.reason,
        "error_type": letter.error_type,
        "topic": letter.topic,
        "partition": letter.partition,
        "source_offset": letter.offset,
        "key": letter.key,
        "type": _message_type(value),
        "attempts": letter.attempts,
        "size_bytes": len(value),
        "value_preview": letter.value[:PREVIEW_CHARS] if letter.value_encoding == "utf-8" else None,
    }


def _message_type(value: bytes) -> str | None:
    """The envelope type of a parked message, when it is one."""
    try:
        return Envelope.from_bytes(value).type
    except DecodeError:
        return None


def _decided(decide: Callable[[], Change]) -> Change:
    """The change `decide` returns; an invalid one is a 400 naming what is wrong."""
    try:
        return decide()
    except PolicyError as exc:
        raise invalid(exc.param or "body", str(exc)) from exc


async def _until(done: Callable[[], bool], timeout_s: float) -> bool:
    """Poll `done` until it holds (True) or `timeout_s` passed (False)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _read(letters: DeadLetters) -> list[dlq.Letter]:
    try:
        return await letters.read()
    except TimeoutError as exc:
        raise APIError(503, "The dead-letter topic could not be read in time; try again.") from exc
