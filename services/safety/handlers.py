"""The safety service's handlers: prompts, and the content of renders as they progress.

A new job's prompt (read from its `GenerateImage` command, or a `CheckPrompt`) gets one
verdict. Content is read from the decoders' progress events
directly: a pass that carries pictures to check is scored, and a verdict is published
only when it blocks the render, or for the last pass (whose clearance completes the
job). An allowed intermediate pass needs no message: nobody waits for it.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter

from libs import topics
from libs.bus import EventPublisher
from libs.events import Envelope
from libs.events.schemas import CheckContent, CheckPrompt, GenerateImage, RenderProgressed, SafetyVerdict
from services.safety.content import ContentInspector, UncheckableContent
from services.safety.domain import check_content, check_prompt, content_unverifiable
from services.safety.policy_feed import PolicyFeed

log = logging.getLogger(__name__)


VERDICTS = Counter(
    "darkroom_safety_verdicts",
    "Safety decisions, by stage (prompt, content), outcome (allowed, blocked) and the category that blocked.",
    ["stage", "outcome", "category"],
)


def count_verdict(verdict: SafetyVerdict) -> SafetyVerdict:
    """Counts a decision for the metrics (every content pass checked, published or not)."""
    outcome = "allowed" if verdict.allowed else "blocked"
    VERDICTS.labels(verdict.stage, outcome, verdict.category or "").inc()
    return verdict


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
        """Judge a prompt before rendering (a check command)."""
        await self._publish(count_verdict(check_prompt(self._policy.current, check)), envelope)

    async def on_generate(self, command: GenerateImage, envelope: Envelope) -> None:
        """Judge the prompt of a new job as its command comes (the requests service waits
        for this verdict before it queues the render)."""
        spec = command.spec
        check = CheckPrompt(job_id=command.job_id, prompt=spec.prompt, moderation=spec.moderation)
        await self._publish(count_verdict(check_prompt(self._policy.current, check)), envelope)

    async def on_check_content(self, check: CheckContent, envelope: Envelope) -> None:
        """Judge what a render drew after one of its passes (a check command: token grids)."""
        await self._judge_content(check, envelope, pictures=[])

    async def on_progress(self, progress: RenderProgressed, envelope: Envelope) -> None:
        """Judge a render's pass when it carries pictures to check, and always its last pass."""
        last = progress.pass_index >= progress.total_passes
        if not progress.check_images and not last:
            return  # a pass that carries no risk: nothing to look at
        check = CheckContent(
            job_id=progress.job_id,
            pass_index=progress.pass_index,
            total_passes=progress.total_passes,
            model="",
            tokens=progress.tokens,
        )
        await self._judge_content(check, envelope, pictures=progress.check_images, quiet_when_allowed=not last)

    async def _judge_content(
        self, check: CheckContent, envelope: Envelope, pictures: list[str], quiet_when_allowed: bool = False
    ) -> None:
        policy = self._policy.current
        if self._inspector.detects not in policy.content_classes:
            # No category blocks what the classifier can see: no need to look.
            verdict = check_content(policy, check, [])
        else:
            try:
                if pictures:
                    detections = await self._inspector.inspect_pictures(pictures)
                else:
                    detections = await self._inspector.inspect(check.model, check.tokens)
            except UncheckableContent as exc:
                log.warning("content check of %s pass %d failed closed: %s", check.job_id, check.pass_index, exc)
                verdict = content_unverifiable(policy, check, str(exc))
            else:
                # The policy may have changed while the pictures were scored; judge with the newest.
                verdict = check_content(self._policy.current, check, detections)
        count_verdict(verdict)
        if verdict.allowed and quiet_when_allowed:
            return
        await self._publish(verdict, envelope)

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
