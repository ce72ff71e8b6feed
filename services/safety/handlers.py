"""The safety service's handlers: a check in, one verdict out on the verdicts topic."""

from __future__ import annotations

import logging

from libs import topics
from libs.bus import EventPublisher
from libs.events import Envelope
from libs.events.schemas import CheckContent, CheckPrompt, SafetyVerdict
from services.safety.content import ContentInspector, UncheckableContent
from services.safety.domain import check_content, check_prompt, content_unverifiable
from services.safety.policy_feed import PolicyFeed

log = logging.getLogger(__name__)


class SafetyHandlers:
    """Answers prompt and content checks under the policy in force."""

    def __init__(self, publisher: EventPublisher, policy: PolicyFeed, inspector: ContentInspector) -> None:
        """Wires the handlers.

        Args:
            publisher: Publishes verdicts.
            policy: The policy in force (loaded before the first check arrives).
            inspector: Looks at the images of content checks.
        """
        self._publisher = publisher
        self._policy = policy
        self._inspector = inspector

    async def on_check_prompt(self, check: CheckPrompt, envelope: Envelope) -> None:
        """Judge a prompt before rendering."""
        await self._publish(check_prompt(self._policy.current, check), envelope)

    async def on_check_content(self, check: CheckContent, envelope: Envelope) -> None:
        """Judge what a render drew after one of its passes."""
        policy = self._policy.current
        if self._inspector.detects not in policy.content_classes:
            # No category blocks what the classifier can see: no need to render previews.
            await self._publish(check_content(policy, check, []), envelope)
            return
        try:
            detections = await self._inspector.inspect(check.model, check.tokens)
        except UncheckableContent as exc:
            log.warning("content check of %s pass %d failed closed: %s", check.job_id, check.pass_index, exc)
            await self._publish(content_unverifiable(policy, check, str(exc)), envelope)
            return
        # The policy may have changed while the previews were scored; judge with the newest.
        await self._publish(check_content(self._policy.current, check, detections), envelope)

    async def _publish(self, verdict: SafetyVerdict, cause: Envelope) -> None:
        if not verdict.allowed:
            log.info(
                "blocked %s at %s (pass %d): %s, policy v%d",
                verdict.job_id,
                verdict.stage,
                verdict.pass_index,
                verdict.category,
                verdict.policy_version,
            )
        envelope = Envelope.wrap(verdict, aggregate_id=verdict.job_id, caused_by=cause)
        await self._publisher.publish(topics.SAFETY_VERDICTS, envelope)
