"""Accounts: sign-up (POST /v1/accounts, through Kafka to the auth service) and who a key
belongs to (GET /v1/account, answered from the gateway's live policies)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from libs import topics
from libs.apikeys import Principal, mint, new_key_id
from libs.events import REGISTRY, Envelope, new_ulid
from libs.events.schemas import FEATURES, AccountCreated, AccountRejected, CreateAccount
from services.gateway.context import Gateway, get_gateway, get_principal
from services.gateway.errors import APIError, invalid
from services.gateway.models import AccountRequest, normalize_email

router = APIRouter(prefix="/v1", tags=["accounts"])

GatewayDep = Annotated[Gateway, Depends(get_gateway)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]


@router.get("/account", response_model=None)
async def get_account(gateway: GatewayDep, principal: PrincipalDep) -> JSONResponse:
    """Who the key belongs to: the account, its current tier, that tier's limits, and the
    features rolled out to it (a client checks a key with it and fits its choices to the limits)."""
    access = gateway.limits.access
    body = {
        "id": principal.account_id,
        "object": "account",
        "tier": principal.tier,
        "limits": access.policy(principal.tier).model_dump(),
        "features": {f: access.has_feature(principal.account_id, principal.tier, f) for f in FEATURES},
    }
    return JSONResponse(body)


@router.post("/accounts", status_code=201, response_model=None)
async def create_account(body: AccountRequest, gateway: GatewayDep) -> JSONResponse:
    """Create a free-tier account and return its API key (shown once).

    The auth service decides (a duplicate email is a 409). If it has not answered
    within the reply timeout the sign-up is still queued in Kafka: the answer is 202
    with the key, which works as soon as the account exists.
    """
    email = normalize_email(body.email)
    if email is None:
        raise invalid("email", f"'{body.email}' is not a valid email address.", "invalid_email")
    request_id, account_id = new_ulid(), f"acct_{new_ulid().lower()}"
    key_id = new_key_id(gateway.signer)
    command = CreateAccount(request_id=request_id, account_id=account_id, email=email, tier="free", key_id=key_id)
    with gateway.live.subscribe(request_id) as replies:
        await gateway.publisher.publish(
            topics.ACCOUNT_COMMANDS, Envelope.wrap(command, aggregate_id=account_id, tier="free"), key=email
        )
        try:
            reply = await asyncio.wait_for(replies.get(), timeout=gateway.settings.reply_timeout_s)
        except TimeoutError:
            reply = None
    api_key = mint(account_id, "free", key_id, gateway.signing_keys)
    body_out = {"id": account_id, "object": "account", "email": email, "tier": "free", "api_key": api_key}
    if reply is None:
        return JSONResponse(body_out | {"status": "pending"}, status_code=202)
    event = REGISTRY.decode(reply)
    if isinstance(event, AccountRejected):
        if event.code == "duplicate_email":
            raise APIError(
                409, f"An account with the email '{email}' already exists.", param="email", code="email_taken"
            )
        raise invalid("email", event.message, event.code)
    if not isinstance(event, AccountCreated):  # pragma: no cover - auth publishes only these two
        raise APIError(500, "Unexpected answer from the account service.")
    return JSONResponse(body_out | {"status": "active"}, status_code=201)
