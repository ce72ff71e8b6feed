"""What the gateway's routes share, and the FastAPI dependencies that hand it to them."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Header, Request

from libs.apikeys import InvalidApiKey, Principal, verify
from libs.bus import EventPublisher
from libs.readmodels.catalog import ImageCatalog
from libs.readmodels.jobs import JobProjection
from libs.runtime.heartbeats import HeartbeatMonitor
from libs.settings import GatewaySettings
from libs.stores.ports import BlobStore
from services.gateway.errors import APIError
from services.gateway.idempotency import IdempotencyKeys
from services.gateway.lanes import LaneMonitor
from services.gateway.limits import Limits
from services.gateway.live import LiveEvents
from services.gateway.metered import MeteredUsage
from services.gateway.metrics import TIER_STATE


@dataclass
class Gateway:
    """The gateway's adapters and state, built once per app."""

    settings: GatewaySettings
    publisher: EventPublisher
    live: LiveEvents
    projection: JobProjection
    catalog: ImageCatalog
    blobs: BlobStore
    signing_keys: dict[str, str]
    limits: Limits
    idempotency: IdempotencyKeys
    lanes: LaneMonitor
    heartbeats: HeartbeatMonitor
    metered: MeteredUsage

    @property
    def signer(self) -> str:
        """The signing key id new API keys are minted with (the first one configured)."""
        return next(iter(self.signing_keys))


# The dependencies below are coroutine functions although none of them awaits anything:
# FastAPI runs a plain function dependency in a worker thread, and two such hand-offs per
# request (the gateway, the key) cost the gateway's loop more than the work they carry.


async def get_gateway(request: Request) -> Gateway:
    """FastAPI dependency: the app's Gateway."""
    return _gateway(request)


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def get_principal(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """FastAPI dependency: the account of a valid bearer key, validated locally.

    The signature is checked here and revocations and tier changes come from the
    gateway's in-memory feed: no database or Kafka round trip per request.

    Raises:
        APIError: 401 when the key is missing, malformed, forged or revoked.
    """
    if not authorization or not authorization.lower().startswith("bearer "):
        raise APIError(
            401,
            "You didn't provide an API key. Provide it in an Authorization header as 'Bearer YOUR_KEY'.",
            code="missing_api_key",
        )
    gateway = _gateway(request)
    try:
        principal = verify(authorization[7:].strip(), gateway.signing_keys)
    except InvalidApiKey as exc:
        raise APIError(401, str(exc), code="invalid_api_key") from exc
    authorized = gateway.limits.authorize(principal)
    setattr(request.state, TIER_STATE, authorized.tier)  # the request's metrics count it by tier
    return authorized


async def get_operator(request: Request, authorization: Annotated[str | None, Header()] = None) -> Gateway:
    """FastAPI dependency: the app's Gateway, for a caller that holds the operator token.

    The operator API (`/v1/admin/...`) answers only to `Authorization: Bearer <operator
    token>` (`DARKROOM_OPERATOR_TOKEN`); an API key, whatever its tier, does not open it.

    Raises:
        APIError: 401 with code `invalid_operator_token` when the token is missing or wrong.
    """
    gateway = _gateway(request)
    token = authorization[7:].strip() if authorization and authorization.lower().startswith("bearer ") else ""
    # Constant-time, so the token cannot be guessed a character at a time from response times.
    if not token or not hmac.compare_digest(token.encode(), gateway.settings.operator_token.encode()):
        raise APIError(
            401,
            "The operator API needs the operator token in an Authorization header as 'Bearer TOKEN'.",
            code="invalid_operator_token",
        )
    return gateway
