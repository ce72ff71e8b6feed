"""The safety policy as records and documents: versions, keys and the YAML format. No I/O.

The policy is a fold over the `SafetyPolicy` records of the compacted policy topic (the
highest version wins). The safety service writes its default policy and follows the
topic; the operators' CLI (`darkroom safety policy`) reads the policy in force and
publishes the next version. Both need the same versions, Kafka keys and document rules,
so they live here; the matching of prompts and content against a policy is the safety
service's own (`services.safety.domain`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import yaml
from pydantic import ValidationError

from libs.events.schemas import PolicyCategory, SafetyPolicy

DEFAULT_POLICY_VERSION: Final = 1
"""The version of the built-in default policy; operator policies start above it."""

POLICY_AGGREGATE: Final = "safety-policy"
"""Aggregate id of every policy record (its envelope sequence is the version)."""


class InvalidPolicy(ValueError):
    """A policy document that cannot become a SafetyPolicy (shape, regexes)."""


def policy_key(version: int) -> str:
    """The Kafka key of a policy version on the compacted policy topic.

    One key per version (not one key for the whole policy): compaction then keeps every
    version, so reading the topic and keeping the highest version gives the same answer
    before and after compaction, even if a stale writer published a lower version last.
    Duplicates of one version (two instances publishing the default at once) still
    collapse into one record.
    """
    return f"{POLICY_AGGREGATE}:v{version}"


def supersedes(current: SafetyPolicy | None, incoming: SafetyPolicy) -> bool:
    """Whether `incoming` replaces `current` as the policy in force.

    The highest version wins. A record of the same version read later also wins: the
    policy topic is one ordered partition, so every reader sees the same last record
    and agrees (and re-reading one's own published default changes nothing).
    """
    return current is None or incoming.version >= current.version


def latest_policy(policies: Iterable[SafetyPolicy]) -> SafetyPolicy | None:
    """The policy in force after reading these records in order (None if there are none)."""
    current: SafetyPolicy | None = None
    for policy in policies:
        if supersedes(current, policy):
            current = policy
    return current


def next_version(current: SafetyPolicy | None) -> int:
    """The version an operator's new policy gets.

    With no policy on the topic yet, the service's default (version 1) is the one in
    force (a starting service publishes it), so the first operator policy is version 2
    and can never collide with a default published at the same moment.
    """
    return (current.version if current is not None else DEFAULT_POLICY_VERSION) + 1


def compile_patterns(category: PolicyCategory) -> tuple[tuple[re.Pattern[str], ...], tuple[str, ...]]:
    """Compile a category's patterns (case-insensitive), as matching and validation use them.

    Args:
        category: A policy category.

    Returns:
        The patterns that compile, in order, and one error per pattern that does not.
    """
    patterns: list[re.Pattern[str]] = []
    errors: list[str] = []
    for source in category.patterns:
        try:
            patterns.append(re.compile(source, re.IGNORECASE))
        except re.error as exc:
            errors.append(f"category {category.name!r}: pattern {source!r}: {exc}")
    return tuple(patterns), tuple(errors)


# ---------------------------------------------------------------------------------------------
# Policy documents (YAML files of the default policy and of operators)


def policy_from_document(data: Any, *, version: int, updated_by: str) -> SafetyPolicy:
    """Build a policy from a parsed YAML/JSON document and check that it compiles.

    Args:
        data: A mapping with `categories` (a list of PolicyCategory fields); a
            `version` or `updated_by` key in it is ignored, since the publisher assigns them.
        version: The version to give the policy.
        updated_by: Who publishes it.

    Returns:
        The validated policy.

    Raises:
        InvalidPolicy: The document's shape is wrong, a category name repeats, or a
            pattern is not a valid regular expression.
    """
    if not isinstance(data, Mapping):
        raise InvalidPolicy("a policy document must be a mapping with a 'categories' list")
    unknown = set(data) - {"categories", "version", "updated_by"}
    if unknown:
        raise InvalidPolicy(f"unknown keys in policy document: {', '.join(sorted(map(str, unknown)))}")
    try:
        categories = [PolicyCategory.model_validate(c) for c in data.get("categories") or []]
        policy = SafetyPolicy(version=version, categories=categories, updated_by=updated_by)
    except ValidationError as exc:
        raise InvalidPolicy(f"invalid policy: {exc}") from exc
    names = [c.name for c in categories]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidPolicy(f"category names repeat: {', '.join(duplicates)}")
    errors = [error for category in categories for error in compile_patterns(category)[1]]
    if errors:
        raise InvalidPolicy("; ".join(errors))
    return policy


def policy_from_yaml(text: str, *, version: int, updated_by: str) -> SafetyPolicy:
    """Parse a policy YAML document (see `policy_from_document`).

    Raises:
        InvalidPolicy: Not YAML, or not a valid policy.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidPolicy(f"not valid YAML: {exc}") from exc
    return policy_from_document(data, version=version, updated_by=updated_by)


def policy_to_yaml(policy: SafetyPolicy) -> str:
    """The policy as YAML in the shape `policy_from_yaml` reads (show, edit, set)."""
    data = policy.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
