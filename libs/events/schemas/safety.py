"""Safety: checks requested by the requests service, verdicts, and the policy."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from libs.events.envelope import Event
from libs.events.registry import REGISTRY
from libs.events.schemas.images import Moderation


@REGISTRY.register
class CheckPrompt(Event):
    """Requests -> safety: may this prompt be rendered?"""

    TYPE = "safety.check_prompt"

    job_id: str
    prompt: str
    moderation: Moderation = "auto"


@REGISTRY.register
class CheckContent(Event):
    """Requests -> safety: is what the decoder drew after this pass allowed?"""

    TYPE = "safety.check_content"

    job_id: str
    pass_index: int
    total_passes: int
    model: str
    tokens: list[str]
    """Per image: base64 of the packed token grid (see render.RenderProgressed)."""
    moderation: Moderation = "auto"


@REGISTRY.register
class SafetyVerdict(Event):
    """Safety: the answer to a check."""

    TYPE = "safety.verdict"

    job_id: str
    stage: Literal["prompt", "content"]
    pass_index: int = 0
    allowed: bool
    category: str | None = None
    policy_version: int
    detail: str = ""


class PolicyCategory(BaseModel):
    """One thing the policy forbids, recognised by words, patterns or drawn content."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    message: str = ""
    terms: list[str] = []
    """Whole words or phrases, matched case-insensitively in the prompt."""
    patterns: list[str] = []
    """Regular expressions matched against the normalized prompt."""
    content_classes: list[str] = []
    """Classes of the content classifier that block a render when detected."""
    applies_at_low_moderation: bool = True
    """False: skipped for prompt checks of jobs with moderation=low (content still checked)."""


@REGISTRY.register
class SafetyPolicy(Event):
    """The whole safety policy (compacted topic: the latest version wins)."""

    TYPE = "safety.policy"

    version: int
    categories: list[PolicyCategory]
    updated_by: str = "operator"
