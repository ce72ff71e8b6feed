"""The models the API serves: `GET /v1/models` in OpenAI's shape, and the names a request may use.

`GatewaySettings.models` lists darkroom's model names (the first is the default) and
`GatewaySettings.model_aliases` the names of OpenAI's models that clients hard-code
(`gpt-image-1`, `dall-e-3`, ...): a request naming an alias gets the operator's default model,
so the official SDK's examples work unchanged. Any other name is a 400 naming `model`.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from libs.apikeys import Principal
from libs.lanes import DEFAULT_MODEL, lane_for, lanes, models
from libs.runtime.heartbeats import HeartbeatMonitor
from libs.settings import GatewaySettings
from services.gateway.context import Gateway, get_gateway, get_principal
from services.gateway.errors import APIError, invalid
from services.gateway.refusals import Refusal

OWNER: Final = "darkroom"
UNSERVED_RETRY_S: Final = 30
"""retry-after of a 503 for a model no decoder serves (an operator starts its pool)."""
STARTED: Final = int(time.time())
"""A model object's `created`: when this gateway started serving it."""

router = APIRouter(prefix="/v1", tags=["models"])

GatewayDep = Annotated[Gateway, Depends(get_gateway)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]


def resolve_model(settings: GatewaySettings, requested: str | None) -> str:
    """The darkroom model a request's `model` names: itself, the default for an alias of
    OpenAI's, or the default when it names none.

    Raises:
        APIError: 400 `model_not_found` naming `model` for any other name.
    """
    default = settings.models[0]
    if requested is None or requested in settings.model_aliases:
        return default
    if requested not in settings.models:
        available = ", ".join((*settings.models, *settings.model_aliases))
        raise invalid("model", f"The model '{requested}' does not exist. Available: {available}.", "model_not_found")
    return requested


def check_models_declared(settings: GatewaySettings) -> None:
    """Refuses a configuration that names a model without render topics (its jobs could
    never be routed).

    Raises:
        ValueError: with the models that lack them.
    """
    missing = [m for m in settings.models if m not in models()]
    if missing:
        raise ValueError(
            f"DARKROOM_MODELS names {', '.join(missing)} without render topics: declare each under "
            f"`models:` in infra/topics.yaml (declared: {', '.join(models())})"
        )


def admit_to_lane(gateway: Gateway, model: str, lane: str) -> Refusal | None:
    """Takes a job of `model` into its lane (`lane` as a tier's policy names it).

    A model other than the default must have a decoder of the lane's pool heard from
    within `model_unserved_after_s`: otherwise the job is refused at once rather than
    left waiting for a pool that may never come. The default model's jobs always queue
    (durably: a decoder that restarts takes them).

    Returns:
        None when taken; else a 503 `model_unavailable` with retry-after, or what
        `LaneMonitor.take` refuses with.
    """
    declared = lane_for(lane, model)
    if model != DEFAULT_MODEL and not serving(gateway.heartbeats, model, declared.pool, gateway.settings):
        return Refusal(
            503,
            f"No decoder serves the model '{model}' ({declared.pool} pool) right now; "
            f"please retry after {UNSERVED_RETRY_S} seconds.",
            param="model",
            code="model_unavailable",
            headers={"retry-after": str(UNSERVED_RETRY_S)},
        )
    return gateway.lanes.take(declared.name)


def serving(heartbeats: HeartbeatMonitor, model: str, pool: str, settings: GatewaySettings | None = None) -> bool:
    """Whether a decoder of this model's pool was heard from lately: within the settings'
    `model_unserved_after_s`, or, without settings, within the heartbeats' freshness."""
    within = None if settings is None else settings.model_unserved_after_s
    return heartbeats.decoders_of(model, pool, within) > 0


def lane_served(gateway: Gateway, lane: str) -> bool:
    """Whether a live decoder serves this lane (by its name across models) right now."""
    declared = lanes().get(lane)
    return declared is not None and serving(gateway.heartbeats, declared.model, declared.pool)


def _model_object(settings: GatewaySettings, name: str) -> dict[str, Any]:
    body: dict[str, Any] = {"id": name, "object": "model", "created": STARTED, "owned_by": OWNER}
    if name in settings.model_aliases:
        body["alias_of"] = settings.models[0]
    return body


@router.get("/models", response_model=None)
async def list_models(gateway: GatewayDep, principal: PrincipalDep) -> JSONResponse:
    """Every model name a request may use: darkroom's models, then the aliases (`alias_of`)."""
    settings = gateway.settings
    names = [*settings.models, *(a for a in settings.model_aliases if a not in settings.models)]
    return JSONResponse({"object": "list", "data": [_model_object(settings, name) for name in names]})


@router.get("/models/{model}", response_model=None)
async def get_model(model: str, gateway: GatewayDep, principal: PrincipalDep) -> JSONResponse:
    """One model by name (an alias too); another name is a 404."""
    settings = gateway.settings
    if model not in settings.models and model not in settings.model_aliases:
        raise APIError(404, f"The model '{model}' does not exist.", param="model", code="model_not_found")
    return JSONResponse(_model_object(settings, model))
