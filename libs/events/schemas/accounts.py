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


@REGISTRY.register
class RevokeKeys(Event):
    """CLI -> auth: revoke one API key of an account, or all of them (keyed by account id)."""

    TYPE = "accounts.revoke_keys"

    request_id: str
    account_id: str
    key_id: str | None = None
    """The key to revoke; None revokes every key of the account."""
    reason: str = ""
    requested_by: str = "operator"


@REGISTRY.register
class KeyRevoked(Event):
    """Auth: an API key no longer works (compacted revocations topic, keyed by key id)."""

    TYPE = "accounts.key_revoked"

    request_id: str
    key_id: str
    account_id: str
    reason: str = ""
    revoked_by: str = "operator"


@REGISTRY.register
class ChangeTier(Event):
    """CLI -> auth: move an account to another tier (keyed by account id)."""

    TYPE = "accounts.change_tier"

    request_id: str
    account_id: str
    tier: Tier
    requested_by: str = "operator"


@REGISTRY.register
class TierChanged(Event):
    """Auth: an account's tier (compacted account-tier topic, keyed by account id).

    Keys carry the tier they were issued with; gateways apply the latest of these over it.
    """

    TYPE = "accounts.tier_changed"

    request_id: str
    account_id: str
    tier: Tier
    previous: Tier
    changed_by: str = "operator"


@REGISTRY.register
class AccountCommandFailed(Event):
    """Auth: a revocation or tier change could not be applied."""

    TYPE = "accounts.command_failed"

    request_id: str
    account_id: str
    code: Literal["unknown_account", "unknown_key"]
    message: str
