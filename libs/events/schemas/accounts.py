"""Accounts: sign-up commands and account events (auth service)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from libs.events.envelope import Event
from libs.events.registry import REGISTRY

Tier = Literal["free", "plus", "pro", "api"]
TIERS: tuple[Tier, ...] = ("free", "plus", "pro", "api")


@REGISTRY.register
class CreateAccount(Event):
    """Gateway or CLI -> auth: create an account (keyed by the normalized email).

    The caller mints the API key locally from `key_id` (only the id travels, never a
    secret) and answers once `AccountCreated` with its `request_id` comes back.
    """

    TYPE = "accounts.create_account"

    request_id: str
    account_id: str
    email: str
    tier: Tier = "free"
    key_id: str
    requested_by: str = "api"


@REGISTRY.register
class AccountCreated(Event):
    """Auth: an account exists, with its first API key id."""

    TYPE = "accounts.account_created"

    request_id: str
    account_id: str
    email: str
    tier: Tier
    key_id: str
    created_at: datetime


@REGISTRY.register
class AccountRejected(Event):
    """Auth: a sign-up was refused (for example a duplicate email)."""

    TYPE = "accounts.account_rejected"

    request_id: str
    email: str
    code: Literal["duplicate_email", "invalid_email"]
    message: str
