"""`GET /v1/usage`: an account's own metered usage, in daily buckets.

The metering service publishes every account-day's usage on the compacted `darkroom.usage`
topic (services/metering); every gateway reads it from the beginning and follows it (a feed,
like the policies'), so the answer costs no store or Kafka round trip.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from libs.apikeys import Principal
from libs.events.schemas import AccountUsage
from services.gateway.context import Gateway, get_gateway, get_principal

router = APIRouter(prefix="/v1", tags=["usage"])

GatewayDep = Annotated[Gateway, Depends(get_gateway)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]


def usage_object(usage: AccountUsage) -> dict[str, Any]:
    """One daily bucket of `GET /v1/usage`."""
    return {
        "object": "usage.day",
        "date": usage.day,
        "jobs": usage.jobs,
        "images": usage.images,
        "output_tokens": usage.output_tokens,
        "by_model": {model: part.model_dump() for model, part in sorted(usage.by_model.items())},
    }


@router.get("/usage", response_model=None)
async def get_usage(
    gateway: GatewayDep, principal: PrincipalDep, days: Annotated[int, Query(ge=1, le=366)] = 30
) -> JSONResponse:
    """The caller's completed jobs, images and output tokens per UTC day, for the last `days`
    days (30 by default), oldest first; days without usage are left out."""
    since = (datetime.now(UTC).date() - timedelta(days=days - 1)).isoformat()
    data = [usage_object(u) for u in gateway.metered.of(principal.account_id, since)]
    return JSONResponse({"object": "list", "account_id": principal.account_id, "data": data})
