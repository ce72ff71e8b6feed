"""The safety policy's decisions: pure functions of a policy and a check, no I/O.

The policy is a fold over the `SafetyPolicy` records of the policy topic (the highest
version wins; its versions, keys and documents are in `libs.safety_policy`, shared with
the operators' CLI); a check plus the current policy gives exactly one `SafetyVerdict`.
Prompt text is normalized once (Unicode NFKC, case folding, whitespace collapsed,
punctuation stripped from the ends of words) and both the prompt and the policy's
terms go through the same normalization, so "GORE!!", "gore" in full-width letters and "gore" match alike.

Terms match whole words and phrases: "skull" matches "a skull", "skull-shaped" and
"skull's", not "skullcap" (the policy lists "skulls" separately). The words of a
phrase may be joined by any run of spaces or punctuation, so "self harm" also
matches "self-harm", "self—harm" and "self/harm".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from libs.events.schemas import CheckContent, CheckPrompt, SafetyPolicy, SafetyVerdict
from libs.safety_policy import compile_patterns

UNVERIFIABLE: Final = "unverifiable"
"""Category of a content verdict that failed closed: the drawn content could not be checked."""

_WORD_JOIN: Final = r"[\W_]+"


# ---------------------------------------------------------------------------------------------
# Normalization


def _is_edge_punctuation(char: str) -> bool:
    # Punctuation (P*) and symbols (S*: quotes, emoji, currency) around a word carry no meaning
    # for matching, and attackers pad terms with them ("*gore*").
    return unicodedata.category(char)[0] in "PS"


def _strip_word(word: str) -> str:
    start, end = 0, len(word)
    while start < end and _is_edge_punctuation(word[start]):
        start += 1
    while end > start and _is_edge_punctuation(word[end - 1]):
        end -= 1
    return word[start:end]


def normalize_text(text: str) -> str:
    """The form prompts and terms are compared in.

    NFKC folds compatibility characters (full-width letters, ligatures), invisible
    format characters (zero-width spaces and joiners, which would split a word without
    showing) are removed, case is folded, whitespace collapses to single spaces and
    punctuation is stripped from both ends of every word (inner punctuation such as the
    hyphen in "self-harm" stays).

    Args:
        text: Any text.

    Returns:
        The normalized text; words separated by single spaces.
    """
    folded = unicodedata.normalize("NFKC", text)
    folded = "".join(ch for ch in folded if unicodedata.category(ch) != "Cf")
    # Case folding can leave sequences that are not NFKC (e.g. from "ẞ"), hence the second pass.
    folded = unicodedata.normalize("NFKC", folded.casefold())
    words = (_strip_word(word) for word in folded.split())
    return " ".join(word for word in words if word)


def _term_regex(term: str) -> str | None:
    words = [w for w in re.split(_WORD_JOIN, normalize_text(term)) if w]
    if not words:
        return None
    return _WORD_JOIN.join(re.escape(w) for w in words)


# ---------------------------------------------------------------------------------------------
# The compiled policy


@dataclass(frozen=True)
class CompiledCategory:
    """A policy category with its terms and patterns compiled for matching."""

    name: str
    message: str
    terms: re.Pattern[str] | None
    patterns: tuple[re.Pattern[str], ...]
    content_classes: frozenset[str]
    applies_at_low_moderation: bool

    def match_prompt(self, normalized: str) -> str | None:
        """What in the normalized prompt this category matches (the term or pattern), if any."""
        if self.terms is not None:
            found = self.terms.search(normalized)
            if found:
                return f"term {found.group(0)!r}"
        for pattern in self.patterns:
            if pattern.search(normalized):
                return f"pattern {pattern.pattern!r}"
        return None


@dataclass(frozen=True)
class CompiledPolicy:
    """A SafetyPolicy ready to check prompts and content.

    Attributes:
        source: The policy as published.
        categories: Its categories, in the policy's order (the first match names a block).
        errors: Patterns that did not compile; they are left out (the CLI refuses them
            before publishing, so these only come from hand-written records).
    """

    source: SafetyPolicy
    categories: tuple[CompiledCategory, ...]
    errors: tuple[str, ...] = ()

    @property
    def version(self) -> int:
        """The policy version every verdict reports."""
        return self.source.version

    @property
    def content_classes(self) -> frozenset[str]:
        """Every classifier class some category blocks (empty: content checks are no-ops)."""
        return frozenset().union(*(c.content_classes for c in self.categories))


def compile_policy(policy: SafetyPolicy) -> CompiledPolicy:
    """Compile a policy's terms and patterns.

    Args:
        policy: The policy as published.

    Returns:
        The compiled policy; patterns that are not valid regular expressions are
        left out and listed in `errors`.
    """
    categories: list[CompiledCategory] = []
    errors: list[str] = []
    for category in policy.categories:
        alternatives = sorted({r for r in map(_term_regex, category.terms) if r}, key=len, reverse=True)
        # Longest first, so a phrase is reported rather than a word inside it.
        terms = re.compile(rf"(?<!\w)(?:{'|'.join(alternatives)})(?!\w)") if alternatives else None
        patterns, pattern_errors = compile_patterns(category)
        errors.extend(pattern_errors)
        categories.append(
            CompiledCategory(
                name=category.name,
                message=category.message,
                terms=terms,
                patterns=patterns,
                content_classes=frozenset(category.content_classes),
                applies_at_low_moderation=category.applies_at_low_moderation,
            )
        )
    return CompiledPolicy(policy, tuple(categories), tuple(errors))


# ---------------------------------------------------------------------------------------------
# Checks


@dataclass(frozen=True)
class Detection:
    """A classifier finding in one image of a content check."""

    image_index: int
    content_class: str
    score: float


def check_prompt(policy: CompiledPolicy, check: CheckPrompt) -> SafetyVerdict:
    """The verdict on a prompt: blocked by the first category whose term or pattern matches.

    With moderation "low", categories marked `applies_at_low_moderation: false` are skipped.

    Args:
        policy: The policy in force.
        check: The prompt check.

    Returns:
        The prompt-stage verdict, with the policy version.
    """
    normalized = normalize_text(check.prompt)
    for category in policy.categories:
        if check.moderation == "low" and not category.applies_at_low_moderation:
            continue
        found = category.match_prompt(normalized)
        if found is not None:
            return SafetyVerdict(
                job_id=check.job_id,
                stage="prompt",
                allowed=False,
                category=category.name,
                policy_version=policy.version,
                detail=_detail(category.message, f"matched {found}"),
            )
    return SafetyVerdict(job_id=check.job_id, stage="prompt", allowed=True, policy_version=policy.version)


def check_content(policy: CompiledPolicy, check: CheckContent, detections: Sequence[Detection]) -> SafetyVerdict:
    """The verdict on what a render drew: blocked when a detected class is in some category.

    Content is checked at every moderation level (`applies_at_low_moderation` only
    concerns prompts).

    Args:
        policy: The policy in force.
        check: The content check.
        detections: What the classifier found in the check's images (at or above threshold).

    Returns:
        The content-stage verdict for the check's pass.
    """
    for category in policy.categories:
        for found in detections:
            if found.content_class in category.content_classes:
                return SafetyVerdict(
                    job_id=check.job_id,
                    stage="content",
                    pass_index=check.pass_index,
                    allowed=False,
                    category=category.name,
                    policy_version=policy.version,
                    detail=_detail(
                        category.message,
                        f"detected {found.content_class!r} in image {found.image_index} (score {found.score:.2f})",
                    ),
                )
    return SafetyVerdict(
        job_id=check.job_id, stage="content", pass_index=check.pass_index, allowed=True, policy_version=policy.version
    )


def content_unverifiable(policy: CompiledPolicy, check: CheckContent, reason: str) -> SafetyVerdict:
    """A blocked content verdict for a check that cannot be carried out (fail closed).

    Bad token grids or a model the service cannot load will not get better on retry;
    blocking ends the job with a reason instead of leaving it waiting for a verdict.
    """
    return SafetyVerdict(
        job_id=check.job_id,
        stage="content",
        pass_index=check.pass_index,
        allowed=False,
        category=UNVERIFIABLE,
        policy_version=policy.version,
        detail=f"The image could not be checked: {reason}",
    )


def _detail(message: str, finding: str) -> str:
    return f"{message} ({finding})" if message else finding
