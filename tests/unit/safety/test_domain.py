"""The safety policy's pure decisions: normalization, matching, versions, documents."""

from __future__ import annotations

import pytest

from libs.events.schemas import CheckContent, CheckPrompt, PolicyCategory, SafetyPolicy
from libs.model.safety_classifier import CATEGORY
from libs.safety_policy import (
    InvalidPolicy,
    latest_policy,
    next_version,
    policy_from_yaml,
    policy_key,
    policy_to_yaml,
    supersedes,
)
from services.safety.bootstrap import load_default_policy
from services.safety.domain import (
    UNVERIFIABLE,
    Detection,
    check_content,
    check_prompt,
    compile_policy,
    content_unverifiable,
    normalize_text,
)


def _policy(*categories: PolicyCategory, version: int = 7) -> SafetyPolicy:
    return SafetyPolicy(version=version, categories=list(categories))


SKULLS = PolicyCategory(name="forbidden-object", terms=["skull", "skulls"], content_classes=["skull"])
GORE = PolicyCategory(
    name="violence",
    message="No gore.",
    terms=["gore", "covered in blood", "self harm"],
    patterns=[r"\bkill(ing)? (him|her)\b"],
    applies_at_low_moderation=False,
)


def _judge(prompt: str, *categories: PolicyCategory, moderation: str = "auto") -> tuple[bool, str | None]:
    policy = compile_policy(_policy(*(categories or (SKULLS, GORE))))
    verdict = check_prompt(policy, CheckPrompt(job_id="job_1", prompt=prompt, moderation=moderation))
    return verdict.allowed, verdict.category


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("  A   Skull\tin\nthe   FOG ", "a skull in the fog"),
        ("“Skull!!!”, (gore)...", "skull gore"),
        ("\uff33\uff2b\uff35\uff2c\uff2c", "skull"),  # full-width letters fold under NFKC
        ("sk\u200bull", "skull"),  # a zero-width space does not split the word
        ("self-harm don't", "self-harm don't"),  # inner punctuation stays
        ("Straße", "strasse"),
        ("*** !!", ""),
    ],
)
def test_normalization(raw: str, normalized: str) -> None:
    assert normalize_text(raw) == normalized


@pytest.mark.parametrize(
    ("prompt", "blocked"),
    [
        ("a skull on a desk", "forbidden-object"),
        ("Two SKULLS, glowing", "forbidden-object"),
        ("a skull-shaped lamp", "forbidden-object"),
        ("the skull's shadow", "forbidden-object"),
        ("a pirate flag with a *skull*", "forbidden-object"),
        ("\uff53\uff4b\uff55\uff4c\uff4c", "forbidden-object"),  # full-width "skull"
        ("sk\u200bull", "forbidden-object"),
        ("a knitted skullcap", None),  # whole words only: a skullcap is a hat
        ("numbskull", None),
        ("a gory mess", None),  # "gore" does not match "gory" (the default policy lists both)
        ("a knight covered in blood", "violence"),
        ("covered   in\nBLOOD!", "violence"),
        ("a blood orange", None),  # the phrase is matched, not its words
        ("art about self-harm", "violence"),  # phrase words join with spaces or punctuation
        ("self\u2014harm, self/harm", "violence"),
        ("selfharm", None),
        ("then killing him", "violence"),  # pattern
        ("a kiln for pottery", None),
        ("a sunny meadow", None),
    ],
)
def test_terms_and_patterns(prompt: str, blocked: str | None) -> None:
    assert _judge(prompt) == (blocked is None, blocked)


def test_the_first_matching_category_in_policy_order_names_the_block() -> None:
    assert _judge("gore and a skull")[1] == "forbidden-object"
    assert _judge("gore and a skull", GORE, SKULLS)[1] == "violence"


def test_low_moderation_skips_the_categories_marked_so_for_prompts() -> None:
    assert _judge("a scene of gore", moderation="low") == (True, None)
    assert _judge("a scene of gore", moderation="auto") == (False, "violence")
    assert _judge("a skull", moderation="low") == (False, "forbidden-object")


def test_a_prompt_verdict_carries_job_category_version_and_what_matched() -> None:
    policy = compile_policy(_policy(SKULLS, GORE, version=4))
    verdict = check_prompt(policy, CheckPrompt(job_id="job_9", prompt="pure GORE"))
    assert (verdict.job_id, verdict.stage, verdict.pass_index) == ("job_9", "prompt", 0)
    assert (verdict.allowed, verdict.category, verdict.policy_version) == (False, "violence", 4)
    assert verdict.detail == "No gore. (matched term 'gore')"
    allowed = check_prompt(policy, CheckPrompt(job_id="job_9", prompt="a meadow"))
    assert (allowed.allowed, allowed.category, allowed.policy_version, allowed.detail) == (True, None, 4, "")


def _content_check() -> CheckContent:
    return CheckContent(job_id="job_2", pass_index=3, total_passes=8, model="noop", tokens=[])


def test_content_is_blocked_when_a_detected_class_belongs_to_a_category() -> None:
    policy = compile_policy(_policy(GORE, SKULLS, version=2))
    verdict = check_content(policy, _content_check(), [Detection(1, "skull", 0.91)])
    assert (verdict.stage, verdict.pass_index, verdict.allowed) == ("content", 3, False)
    assert (verdict.category, verdict.policy_version) == ("forbidden-object", 2)
    assert "image 1" in verdict.detail and "0.91" in verdict.detail


def test_content_is_allowed_without_detections_or_when_no_category_lists_the_class() -> None:
    with_skulls = compile_policy(_policy(SKULLS))
    without = compile_policy(_policy(GORE))
    assert check_content(with_skulls, _content_check(), []).allowed
    assert check_content(without, _content_check(), [Detection(0, "skull", 0.99)]).allowed
    assert with_skulls.content_classes == {"skull"} and without.content_classes == frozenset()


def test_content_checks_ignore_moderation() -> None:
    low_only = PolicyCategory(name="x", content_classes=["skull"], applies_at_low_moderation=False)
    check = _content_check().model_copy(update={"moderation": "low"})
    assert not check_content(compile_policy(_policy(low_only)), check, [Detection(0, "skull", 0.7)]).allowed


def test_an_unverifiable_content_check_fails_closed() -> None:
    verdict = content_unverifiable(compile_policy(_policy(SKULLS, version=3)), _content_check(), "bad grid")
    assert (verdict.allowed, verdict.category, verdict.policy_version, verdict.pass_index) == (
        False,
        UNVERIFIABLE,
        3,
        3,
    )


def test_the_highest_version_wins_and_a_later_record_of_the_same_version_replaces() -> None:
    v1, v2, v3 = (_policy(SKULLS, version=v) for v in (1, 2, 3))
    v2_again = _policy(GORE, version=2)
    assert supersedes(None, v1) and supersedes(v1, v2) and not supersedes(v3, v2)
    assert supersedes(v2, v2_again)
    assert latest_policy([v1, v3, v2]) is v3
    assert latest_policy([v2, v2_again]) is v2_again
    assert latest_policy([]) is None


def test_operator_versions_start_above_the_default() -> None:
    assert next_version(None) == 2
    assert next_version(_policy(version=5)) == 6
    assert policy_key(3) == "safety-policy:v3"


def test_a_policy_document_round_trips_through_yaml() -> None:
    policy = _policy(SKULLS, GORE, version=3)
    text = policy_to_yaml(policy)
    again = policy_from_yaml(text, version=4, updated_by="ops")
    assert again.categories == policy.categories
    assert (again.version, again.updated_by) == (4, "ops")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("categories: [{name: a, patterns: ['(unclosed']}]", "pattern"),
        ("categories: [{name: a}, {name: a}]", "repeat"),
        ("categories: [{name: a, termz: [x]}]", "termz"),
        ("rules: []", "unknown keys"),
        ("- just a list", "mapping"),
        ("categories: [\n", "YAML"),
    ],
)
def test_bad_policy_documents_are_refused(text: str, problem: str) -> None:
    with pytest.raises(InvalidPolicy, match=problem):
        policy_from_yaml(text, version=2, updated_by="ops")


def test_a_bad_pattern_in_a_published_policy_is_left_out_not_fatal() -> None:
    bad = PolicyCategory(name="x", terms=["gore"], patterns=["(unclosed", r"\bkill\b"])
    compiled = compile_policy(_policy(bad))
    assert len(compiled.errors) == 1 and len(compiled.categories[0].patterns) == 1
    assert _judge("gore", bad) == (False, "x")
    assert _judge("kill", bad) == (False, "x")


def test_the_default_policy() -> None:
    policy = load_default_policy()
    assert policy.version == 1
    names = [c.name for c in policy.categories]
    assert {"violence", "sexual", "self-harm", "hate", "forbidden-object"} <= set(names)
    forbidden = policy.categories[names.index("forbidden-object")]
    assert forbidden.terms == ["skull", "skulls"] and forbidden.content_classes == [CATEGORY]
    compiled = compile_policy(policy)
    assert not compiled.errors

    def verdict(prompt: str, moderation: str = "auto") -> str | None:
        check = CheckPrompt(job_id="j", prompt=prompt, moderation=moderation)
        return check_prompt(compiled, check).category

    assert verdict("A Skull in a forest") == "forbidden-object"
    assert verdict("a murder scene") == "violence"
    assert verdict("a murder scene", "low") is None
    assert verdict("I want to hurt myself") == "self-harm"
    assert verdict("a nude portrait") == "sexual"
    assert verdict("a red circle above a blue square") is None
    assert verdict("a blood orange on a plate") is None
