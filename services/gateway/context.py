"""What the gateway's routes share, and the FastAPI dependencies that hand it to them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Header, Request

from libs.apikeys import InvalidApiKey, Principal, verify
from libs.bus import EventPublisher
from libs.settings import GatewaySettings
from libs.stores.ports import BlobStore
from services.gateway.errors import APIError
from services.gateway.idempotency import IdempotencyKeys
from services.gateway.live import JobProjection, LiveEvents


@dataclass
class Gateway:
    """The gateway's adapters and state, built once per app."""

    settings: GatewaySettings
    publisher: EventPublisher
    live: LiveEvents
    projection: JobProjection
    blobs: BlobStore
    signing_keys: dict[str, str]
    idempotency: IdempotencyKeys

    @property
    def signer(self) -> str:
        """The signing key id new API keys are minted with (the first one configured)."""
        return next(iter(self.signing_keys))


def get_gateway(request: Request) -> Gateway:
    """FastAPI dependency: the app's Gateway."""
    gateway: Gateway = request.app.state.gateway
    return gateway


def get_principal(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """FastAPI dependency: the account of a valid bearer key, validated locally.

    Raises:
        APIError: 401 when the key is missing, malformed or forged.
    """
    if not authorization or not authorization.lower().startswith("bearer "):
        raise APIError(
            401,
            "You didn't provide an API key. Provide it in an Authorization header as 'Bearer YOUR_KEY'.",
            code="missing_api_key",
        )
    try:
        return verify(authorization[7:].strip(), get_gateway(request).signing_keys)
    except InvalidApiKey as exc:
        raise APIError(401, str(exc), code="invalid_api_key") from exc
