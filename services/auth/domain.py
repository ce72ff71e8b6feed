"""Sign-up decisions: email rules and what a CreateAccount leads to. No I/O.

An email belongs to at most one account. The claim on it (collection
"account_emails", by normalized email) records which account and which request took
it, and when; a redelivered CreateAccount (same account id and request id) finds its
own claim and gets the very same AccountCreated again, while any other request for
the email is refused as a duplicate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, cast

from libs.events.schemas import (
    AccountCommandFailed,
    AccountCreated,
    AccountRejected,
    ChangeTier,
    CreateAccount,
    KeyRevoked,
    RevokeKeys,
    Tier,
    TierChanged,
)

ACCOUNTS: Final = "accounts"
"""Accounts by account id."""
ACCOUNT_EMAILS: Final = "account_emails"
"""Email claims by normalized email: which account owns the address."""

MAX_EMAIL_LENGTH: Final = 254
MAX_LOCAL_PART_LENGTH: Final = 64


def normalize_email(email: str) -> str:
    """The form emails are compared and stored in: surrounding whitespace removed, lower case."""
    return email.strip().lower()


def email_problem(email: str) -> str | None:
    """Why a normalized email is not acceptable, or None when it is.

    A deliberately simple check (no DNS, no quoted local parts): exactly one "@", a
    non-empty local part of at most 64 characters, a domain of dot-separated
    non-empty labels with at least one dot, no whitespace or control characters, and
    at most 254 characters in all.
    """
    if not email:
        return "the email is empty"
    if len(email) > MAX_EMAIL_LENGTH:
        return f"the email is longer than {MAX_EMAIL_LENGTH} characters"
    if any(ch.isspace() or not ch.isprintable() for ch in email):
        return "the email contains spaces or control characters"
    if email.count("@") != 1:
        return "the email must contain exactly one '@'"
    local, domain = email.split("@")
    if not local:
        return "the part before '@' is empty"
    if len(local) > MAX_LOCAL_PART_LENGTH:
        return f"the part before '@' is longer than {MAX_LOCAL_PART_LENGTH} characters"
    if "." not in domain or any(not label for label in domain.split(".")):
        return "the domain must be dot-separated names, like example.com"
    return None


@dataclass(frozen=True)
class EmailClaim:
    """Who took an email: the stored claim."""

    account_id: str
    request_id: str
    created_at: datetime

    def to_document(self) -> dict[str, Any]:
        """The claim as stored in ACCOUNT_EMAILS."""
        return {"account_id": self.account_id, "request_id": self.request_id, "created_at": self.created_at}

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> EmailClaim:
        """Read a stored claim."""
        return cls(account_id=str(doc["account_id"]), request_id=str(doc["request_id"]), created_at=doc["created_at"])


@dataclass(frozen=True)
class Accepted:
    """The account is (or already was) created by this very request.

    Attributes:
        email: The normalized email (the claim's id).
        claim: The claim to store (the existing one on a redelivery).
        account: The account document (ACCOUNTS, by account id).
        event: The AccountCreated to publish.
        redelivery: The claim already existed: write nothing that is there already.
    """

    email: str
    claim: EmailClaim
    account: dict[str, Any]
    event: AccountCreated
    redelivery: bool


@dataclass(frozen=True)
class Rejected:
    """The sign-up is refused."""

    email: str
    event: AccountRejected


def decide_create_account(command: CreateAccount, claim: EmailClaim | None, now: datetime) -> Accepted | Rejected:
    """What a CreateAccount leads to, given the current claim on its email.

    Args:
        command: The sign-up.
        claim: The stored claim on the command's normalized email, if any.
        now: The creation time for a new account (truncate to milliseconds first, as
            the document store keeps them, so a redelivery reads back the same value).

    Returns:
        Accepted (new, or a redelivery of the request that created the account) or Rejected.
    """
    email = normalize_email(command.email)
    problem = email_problem(email)
    if problem is not None:
        return Rejected(
            email,
            AccountRejected(request_id=command.request_id, email=email, code="invalid_email", message=problem),
        )
    if claim is not None and (claim.account_id, claim.request_id) != (command.account_id, command.request_id):
        return Rejected(
            email,
            AccountRejected(
                request_id=command.request_id,
                email=email,
                code="duplicate_email",
                message="an account with this email already exists",
            ),
        )
    redelivery = claim is not None
    claim = claim or EmailClaim(command.account_id, command.request_id, now)
    account = {
        "email": email,
        "tier": command.tier,
        "key_ids": [command.key_id],
        "request_id": command.request_id,
        "requested_by": command.requested_by,
        "created_at": claim.created_at,
    }
    event = AccountCreated(
        request_id=command.request_id,
        account_id=command.account_id,
        email=email,
        tier=command.tier,
        key_id=command.key_id,
        created_at=claim.created_at,
    )
    return Accepted(email, claim, account, event, redelivery)


def decide_revoke(command: RevokeKeys, account: Mapping[str, Any] | None) -> list[KeyRevoked] | AccountCommandFailed:
    """Which keys a revocation revokes (all of the account's when it names none).

    Revoking again publishes the same revocations again, which changes nothing: the
    revocation topic is compacted by key id and gateways keep a set.

    Args:
        command: The revocation.
        account: The stored account (ACCOUNTS), if any.

    Returns:
        The revocations to publish, or why there are none.
    """
    if account is None:
        return AccountCommandFailed(
            request_id=command.request_id,
            account_id=command.account_id,
            code="unknown_account",
            message=f"no account {command.account_id}",
        )
    key_ids = [str(k) for k in account.get("key_ids", [])]
    if command.key_id is not None:
        if command.key_id not in key_ids:
            return AccountCommandFailed(
                request_id=command.request_id,
                account_id=command.account_id,
                code="unknown_key",
                message=f"account {command.account_id} has no key {command.key_id}",
            )
        key_ids = [command.key_id]
    return [
        KeyRevoked(
            request_id=command.request_id,
            key_id=key_id,
            account_id=command.account_id,
            reason=command.reason,
            revoked_by=command.requested_by,
        )
        for key_id in key_ids
    ]


def decide_change_tier(
    command: ChangeTier, account: Mapping[str, Any] | None
) -> tuple[TierChanged, dict[str, Any]] | AccountCommandFailed:
    """A tier change: the event and the updated account document.

    A redelivered command (the account records its request id) gives the same event again.

    Args:
        command: The change.
        account: The stored account (ACCOUNTS), if any.

    Returns:
        (TierChanged, the account document to store), or why it failed.
    """
    if account is None:
        return AccountCommandFailed(
            request_id=command.request_id,
            account_id=command.account_id,
            code="unknown_account",
            message=f"no account {command.account_id}",
        )
    last = account.get("last_tier_change") or {}
    previous = str(last["previous"]) if last.get("request_id") == command.request_id else str(account["tier"])
    event = TierChanged(
        request_id=command.request_id,
        account_id=command.account_id,
        tier=command.tier,
        previous=cast(Tier, previous),
        changed_by=command.requested_by,
    )
    doc = {
        **{k: v for k, v in account.items() if k != "_id"},
        "tier": command.tier,
        "last_tier_change": {"request_id": command.request_id, "previous": previous},
    }
    return event, doc
