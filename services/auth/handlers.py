"""The auth service's handler: a CreateAccount in, AccountCreated or AccountRejected out."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from libs import topics
from libs.bus import EventPublisher, TransientError
from libs.events import Envelope
from libs.events.schemas import CreateAccount
from libs.stores.ports import DocumentStore, StoreUnavailable
from services.auth.domain import (
    ACCOUNT_EMAILS,
    ACCOUNTS,
    Accepted,
    EmailClaim,
    decide_create_account,
    email_problem,
    normalize_email,
)

log = logging.getLogger(__name__)


def _to_millisecond(moment: datetime) -> datetime:
    # MongoDB keeps datetimes to the millisecond; storing exactly that lets a redelivery
    # re-publish a created_at equal to the first one.
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


class AuthHandlers:
    """Creates accounts. Commands are keyed by normalized email, so one member handles all
    commands of one email, in order: the check for an existing claim cannot race."""

    def __init__(self, publisher: EventPublisher, documents: DocumentStore, clock: Callable[[], datetime]) -> None:
        """Wires the handler.

        Args:
            publisher: Publishes account events.
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
        try:
            await self._create_account(command, envelope)
        except StoreUnavailable as exc:
            raise TransientError(f"creating account {command.account_id}: {exc}") from exc

    async def _create_account(self, command: CreateAccount, cause: Envelope) -> None:
        email = normalize_email(command.email)
        stored = None if email_problem(email) else await self._documents.get(ACCOUNT_EMAILS, email)
        claim = EmailClaim.from_document(stored) if stored is not None else None
        decision = decide_create_account(command, claim, now=_to_millisecond(self._clock()))
        if not isinstance(decision, Accepted):
            log.info("sign-up %s refused: %s", command.request_id, decision.event.code)
            envelope = Envelope.wrap(decision.event, aggregate_id=command.account_id, caused_by=cause)
            await self._publisher.publish(topics.ACCOUNT_EVENTS, envelope, key=decision.email)
            return
        # The claim first: once it is stored the email is taken, and a crash before the
        # account document is repaired by the redelivery, which finds its own claim.
        if not decision.redelivery:
            await self._documents.put(ACCOUNT_EMAILS, decision.email, decision.claim.to_document())
        if not decision.redelivery or await self._documents.get(ACCOUNTS, command.account_id) is None:
            await self._documents.put(ACCOUNTS, command.account_id, decision.account)
        envelope = Envelope.wrap(decision.event, aggregate_id=command.account_id, caused_by=cause)
        await self._publisher.publish(topics.ACCOUNT_EVENTS, envelope)
