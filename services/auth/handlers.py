"""The auth service's handlers: sign-ups (one by one or a batch at a time), revocations, tier changes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import Counter

from libs import topics
from libs.bus import EventPublisher, TransientError
from libs.events import Envelope
from libs.events.schemas import AccountCommandFailed, ChangeTier, CreateAccount, RevokeKeys
from libs.stores.ports import DocumentStore, StoreUnavailable
from services.auth.domain import (
    ACCOUNT_EMAILS,
    ACCOUNTS,
    Accepted,
    EmailClaim,
    decide_change_tier,
    decide_create_account,
    decide_revoke,
    email_problem,
    normalize_email,
)

log = logging.getLogger(__name__)


def _to_millisecond(moment: datetime) -> datetime:
    # MongoDB keeps datetimes to the millisecond; storing exactly that lets a redelivery
    # re-publish a created_at equal to the first one.
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


SIGNUPS = Counter(
    "darkroom_signups",
    "Sign-ups decided, by tier and outcome (created, or the refusal's code).",
    ["tier", "outcome"],
)


@dataclass(frozen=True)
class SignUp:
    """A CreateAccount with the envelope it came in (the cause of the answer)."""

    command: CreateAccount
    envelope: Envelope


class AuthHandlers:
    """Creates accounts, revokes keys, changes tiers.

    Sign-up commands are keyed by normalized email, so one member handles all commands
    of one email, in order: the check for an existing claim cannot race. Revocations
    and tier changes are keyed by account id.
    """

    def __init__(self, publisher: EventPublisher, documents: DocumentStore, clock: Callable[[], datetime]) -> None:
        """Wires the handlers.

        Args:
            publisher: Publishes account events, revocations and tier changes.
            documents: Holds "accounts" and "account_emails".
            clock: The current time (aware), for new accounts.
        """
        self._publisher = publisher
        self._documents = documents
        self._clock = clock

    async def on_create_account(self, command: CreateAccount, envelope: Envelope) -> None:
        """Create the account, refuse the sign-up, or repeat the answer to a redelivery.

        Raises:
            TransientError: The document store is unreachable (retried until it is back).
        """
        await self.create_accounts([SignUp(command, envelope)])

    async def create_accounts(self, signups: Sequence[SignUp]) -> None:
        """Decide a batch of sign-ups with one read and two inserts, then publish every answer.

        The outcome is the same as handling the commands one by one, in order: a later
        command for an email claimed earlier in the batch is a duplicate. A crash at any
        point is repaired by the redelivery of the batch, which finds its own claims.

        Raises:
            TransientError: The document store is unreachable (retried until it is back).
        """
        try:
            await self._create_accounts(signups)
        except StoreUnavailable as exc:
            raise TransientError(f"creating {len(signups)} account(s): {exc}") from exc

    async def _create_accounts(self, signups: Sequence[SignUp]) -> None:
        now = _to_millisecond(self._clock())
        emails = [normalize_email(s.command.email) for s in signups]
        # Claim every new email at once, the first request for it in the batch winning.
        # Inserting first, rather than reading first, keeps the common case (a new
        # email) to one round trip: only the emails already taken are read back.
        tentative: dict[str, EmailClaim] = {}
        for signup, email in zip(signups, emails, strict=True):
            if email not in tentative and email_problem(email) is None:
                tentative[email] = EmailClaim(signup.command.account_id, signup.command.request_id, now)
        inserted = await self._documents.insert_many(
            ACCOUNT_EMAILS, {email: claim.to_document() for email, claim in tentative.items()}
        )
        claims = {email: tentative[email] for email in inserted}
        for email in tentative.keys() - inserted:
            stored = await self._documents.get(ACCOUNT_EMAILS, email)
            if stored is None:  # pragma: no cover - claims are never deleted
                raise StoreUnavailable(f"the claim on {email} vanished; deciding the batch again")
            claims[email] = EmailClaim.from_document(stored)
        # Every command decided against the claim now in force: its own claim (new or a
        # redelivery) means created, anyone else's means a duplicate.
        accounts: dict[str, dict[str, object]] = {}
        answers: list[tuple[Envelope, str | None]] = []
        for signup, email in zip(signups, emails, strict=True):
            decision = decide_create_account(signup.command, claims.get(email), now)
            envelope = Envelope.wrap(decision.event, aggregate_id=signup.command.account_id, caused_by=signup.envelope)
            if isinstance(decision, Accepted):
                accounts[signup.command.account_id] = decision.account
                answers.append((envelope, None))
                SIGNUPS.labels(signup.command.tier, "created").inc()
            else:
                log.info("sign-up %s refused: %s", signup.command.request_id, decision.event.code)
                answers.append((envelope, decision.email))
                SIGNUPS.labels(signup.command.tier, decision.event.code).inc()
        # A crash before the account documents is repaired by the redelivery, which
        # finds its own claims; an account already stored is left as it is.
        await self._documents.insert_many(ACCOUNTS, accounts)
        await asyncio.gather(
            *(self._publisher.publish(topics.ACCOUNT_EVENTS, envelope, key=key) for envelope, key in answers)
        )

    async def on_revoke_keys(self, command: RevokeKeys, envelope: Envelope) -> None:
        """Revoke one key or all keys of an account (an event per key on the revocation topic)."""
        try:
            account = await self._documents.get(ACCOUNTS, command.account_id)
        except StoreUnavailable as exc:
            raise TransientError(f"revoking keys of {command.account_id}: {exc}") from exc
        decision = decide_revoke(command, account)
        if isinstance(decision, AccountCommandFailed):
            await self._fail(decision, envelope)
            return
        for revoked in decision:
            out = Envelope.wrap(revoked, aggregate_id=command.account_id, caused_by=envelope)
            await self._publisher.publish(topics.REVOCATIONS, out, key=revoked.key_id)
        log.info("revoked %d key(s) of %s", len(decision), command.account_id)

    async def on_change_tier(self, command: ChangeTier, envelope: Envelope) -> None:
        """Move an account to another tier (the account document, then the compacted tier record)."""
        try:
            account = await self._documents.get(ACCOUNTS, command.account_id)
            decision = decide_change_tier(command, account)
            if isinstance(decision, AccountCommandFailed):
                await self._fail(decision, envelope)
                return
            event, doc = decision
            await self._documents.put(ACCOUNTS, command.account_id, doc)
        except StoreUnavailable as exc:
            raise TransientError(f"changing the tier of {command.account_id}: {exc}") from exc
        out = Envelope.wrap(event, aggregate_id=command.account_id, tier=event.tier, caused_by=envelope)
        await self._publisher.publish(topics.ACCOUNT_TIERS, out, key=command.account_id)
        log.info("account %s: tier %s -> %s", command.account_id, event.previous, event.tier)

    async def _fail(self, failure: AccountCommandFailed, cause: Envelope) -> None:
        log.info("account command %s failed: %s", failure.request_id, failure.message)
        out = Envelope.wrap(failure, aggregate_id=failure.account_id, caused_by=cause)
        await self._publisher.publish(topics.ACCOUNT_EVENTS, out)
