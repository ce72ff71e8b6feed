"""The safety service end to end on the in-memory broker, with a fake content classifier."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import numpy as np
import pytest

from libs import topics
from libs.bus.memory import InMemoryBroker
from libs.events import REGISTRY, Envelope
from libs.events.schemas import (
    CheckContent,
    CheckPrompt,
    DeadLetter,
    GenerateImage,
    PolicyCategory,
    RenderProgressed,
    SafetyPolicy,
    SafetyVerdict,
)
from libs.imaging import encode
from libs.model.interface import pack_tokens
from libs.model.noop import NoOpModel
from libs.runtime.service import run_service
from libs.safety_policy import POLICY_AGGREGATE, policy_key
from libs.settings import SafetySettings
from services.safety.bootstrap import SafetyService, build
from services.safety.domain import UNVERIFIABLE
from tests.helpers import eventually, job_spec


class FakeClassifier:
    """Stands in for SafetyClassifier (same `category`, `threshold` and `score_batch`); unit
    tests only. The service under test sets its own threshold (`content_threshold`)."""

    category = "skull"
    threshold = 0.5

    def __init__(self, score: float = 0.0) -> None:
        self.score = score
        self.batches: list[list[np.ndarray]] = []

    def score_batch(self, images: Sequence[np.ndarray]) -> list[float]:
        self.batches.append(list(images))
        return [self.score for _ in images]


def _broker() -> InMemoryBroker:
    # As declared in infra/topics.yaml: the policy topic has one partition.
    return InMemoryBroker({topics.SAFETY_POLICY: 1})


async def _publish_policy(broker: InMemoryBroker, policy: SafetyPolicy) -> None:
    envelope = Envelope.wrap(policy, aggregate_id=POLICY_AGGREGATE, sequence=policy.version)
    await broker.producer().send(topics.SAFETY_POLICY, envelope.to_bytes(), key=policy_key(policy.version).encode())


def _policy(version: int, *categories: PolicyCategory) -> SafetyPolicy:
    return SafetyPolicy(version=version, categories=list(categories))


@asynccontextmanager
async def running(broker: InMemoryBroker, classifier: FakeClassifier | None = None) -> AsyncIterator[SafetyService]:
    service = build(
        SafetySettings(model="noop", heartbeat_interval_s=60, content_threshold=0.5),
        producer=broker.producer(),
        consumer_factory=broker.consumer,
        classifier=classifier or FakeClassifier(),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(service.runtime, stop))

    async def loaded() -> bool:
        return service.policy.loaded

    await eventually(loaded, 10, "the policy")
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _verdict(broker: InMemoryBroker, job_id: str) -> SafetyVerdict:
    async def find() -> SafetyVerdict | None:
        for record in broker.records(topics.SAFETY_VERDICTS):
            verdict = REGISTRY.decode_as(Envelope.from_bytes(record.value), SafetyVerdict)
            if verdict.job_id == job_id:
                assert record.key == job_id.encode()
                return verdict
        return None

    return await eventually(find, 10, f"the verdict on {job_id}")


async def _check(broker: InMemoryBroker, check: CheckPrompt | CheckContent) -> Envelope:
    envelope = Envelope.wrap(check, aggregate_id=check.job_id)
    await broker.producer().send(topics.SAFETY_CHECKS, envelope.to_bytes(), key=check.job_id.encode())
    return envelope


def _policies(broker: InMemoryBroker) -> list[tuple[bytes | None, SafetyPolicy]]:
    return [
        (r.key, REGISTRY.decode_as(Envelope.from_bytes(r.value), SafetyPolicy))
        for r in broker.records(topics.SAFETY_POLICY)
    ]


SKULLS = PolicyCategory(name="forbidden-object", terms=["skull"], content_classes=["skull"])
CATS = PolicyCategory(name="no-cats", terms=["cat", "cats"], patterns=[r"\bkitt(y|en)s?\b"])


async def test_the_default_policy_is_published_when_the_topic_holds_none() -> None:
    broker = _broker()
    async with running(broker) as service:
        assert service.policy.current.version == 1
        [(key, policy)] = _policies(broker)
        assert key == b"safety-policy:v1"
        assert policy.version == 1 and "forbidden-object" in [c.name for c in policy.categories]
        # Prompt checks are served under it.
        await _check(broker, CheckPrompt(job_id="job_skull", prompt="A SKULL!"))
        verdict = await _verdict(broker, "job_skull")
        assert (verdict.allowed, verdict.category, verdict.policy_version) == (False, "forbidden-object", 1)

    # A second start finds the default and publishes nothing more.
    async with running(broker) as again:
        assert again.policy.current.version == 1
        assert len(_policies(broker)) == 1


async def test_the_latest_policy_on_the_topic_is_loaded_at_start() -> None:
    broker = _broker()
    await _publish_policy(broker, _policy(3, CATS))
    await _publish_policy(broker, _policy(2, SKULLS))  # a stale writer: lower versions never win
    async with running(broker) as service:
        assert service.policy.current.version == 3
        assert len(_policies(broker)) == 2  # no default published
        await _check(broker, CheckPrompt(job_id="job_cat", prompt="two kittens"))
        await _check(broker, CheckPrompt(job_id="job_skull", prompt="a skull"))
        blocked = await _verdict(broker, "job_cat")
        assert (blocked.allowed, blocked.category, blocked.policy_version) == (False, "no-cats", 3)
        allowed = await _verdict(broker, "job_skull")
        assert (allowed.allowed, allowed.category, allowed.policy_version) == (True, None, 3)


async def test_a_new_policy_version_applies_live_and_older_ones_are_ignored() -> None:
    broker = _broker()
    async with running(broker) as service:
        await _check(broker, CheckPrompt(job_id="job_a", prompt="a cat"))
        assert (await _verdict(broker, "job_a")).allowed

        await _publish_policy(broker, _policy(2, SKULLS, CATS))
        await service.policy.wait_for_version(2)
        await _check(broker, CheckPrompt(job_id="job_b", prompt="a cat"))
        verdict = await _verdict(broker, "job_b")
        assert (verdict.allowed, verdict.category, verdict.policy_version) == (False, "no-cats", 2)

        await _publish_policy(broker, _policy(1, SKULLS))  # older: ignored
        await _publish_policy(broker, _policy(3, SKULLS))
        await service.policy.wait_for_version(3)
        await _check(broker, CheckPrompt(job_id="job_c", prompt="a cat"))
        assert (await _verdict(broker, "job_c")).policy_version == 3
        assert (await _verdict(broker, "job_c")).allowed


async def test_moderation_low_skips_marked_categories_for_prompts() -> None:
    broker = _broker()
    lenient = PolicyCategory(name="no-cats", terms=["cat"], applies_at_low_moderation=False)
    await _publish_policy(broker, _policy(2, lenient, SKULLS))
    async with running(broker):
        await _check(broker, CheckPrompt(job_id="job_low", prompt="a cat", moderation="low"))
        await _check(broker, CheckPrompt(job_id="job_auto", prompt="a cat", moderation="auto"))
        await _check(broker, CheckPrompt(job_id="job_low_skull", prompt="a skull", moderation="low"))
        assert (await _verdict(broker, "job_low")).allowed
        assert (await _verdict(broker, "job_auto")).category == "no-cats"
        assert (await _verdict(broker, "job_low_skull")).category == "forbidden-object"


def _grids(count: int, masked: bool = False) -> list[str]:
    model = NoOpModel()
    out = []
    for i in range(count):
        grid = np.full((16, 16), model.mask_token) if masked else np.arange(256).reshape(16, 16) % 200 + i
        out.append(base64.b64encode(pack_tokens(grid)).decode())
    return out


def _content(job_id: str, tokens: list[str], pass_index: int = 4) -> CheckContent:
    return CheckContent(job_id=job_id, pass_index=pass_index, total_passes=8, model="noop", tokens=tokens)


async def test_content_is_blocked_when_the_classifier_detects_a_forbidden_class() -> None:
    broker = _broker()
    classifier = FakeClassifier(score=0.93)
    async with running(broker, classifier):
        cause = await _check(broker, _content("job_drawn", _grids(2)))
        verdict = await _verdict(broker, "job_drawn")
    assert (verdict.stage, verdict.pass_index, verdict.allowed) == ("content", 4, False)
    assert (verdict.category, verdict.policy_version) == ("forbidden-object", 1)
    assert "image 0" in verdict.detail
    # The classifier saw one 64x64 RGB preview per image, in one batch.
    [batch] = classifier.batches
    assert [(p.shape, p.dtype.name) for p in batch] == [((64, 64, 3), "uint8")] * 2
    # The verdict envelope is caused by the check.
    [record] = broker.records(topics.SAFETY_VERDICTS)
    envelope = Envelope.from_bytes(record.value)
    assert (envelope.causation_id, envelope.correlation_id) == (cause.event_id, cause.correlation_id)


async def test_content_is_allowed_below_the_threshold() -> None:
    broker = _broker()
    async with running(broker, FakeClassifier(score=0.2)):
        await _check(broker, _content("job_clean", _grids(1, masked=True), pass_index=8))
        verdict = await _verdict(broker, "job_clean")
    assert (verdict.stage, verdict.pass_index, verdict.allowed, verdict.category) == ("content", 8, True, None)
    assert verdict.policy_version == 1


async def test_no_preview_is_rendered_when_no_category_blocks_drawn_content() -> None:
    broker = _broker()
    classifier = FakeClassifier(score=0.99)
    await _publish_policy(broker, _policy(2, CATS))
    async with running(broker, classifier):
        await _check(broker, _content("job_x", _grids(1)))
        verdict = await _verdict(broker, "job_x")
    assert verdict.allowed and verdict.policy_version == 2
    assert classifier.batches == []


@pytest.mark.parametrize(
    "tokens",
    [["not base64!"], [base64.b64encode(b"\x00\x01").decode()], [base64.b64encode(b"\xff" * 512).decode()]],
)
async def test_a_content_check_that_cannot_be_carried_out_fails_closed(tokens: list[str]) -> None:
    broker = _broker()
    async with running(broker, FakeClassifier(score=0.0)):
        await _check(broker, _content("job_bad", tokens))
        verdict = await _verdict(broker, "job_bad")
    assert (verdict.allowed, verdict.category, verdict.stage) == (False, UNVERIFIABLE, "content")


def _pictures(count: int, shade: int = 0) -> list[str]:
    picture = encode(np.full((64, 64, 3), shade, np.uint8), "png")
    return [base64.b64encode(picture).decode("ascii")] * count


async def _progress(broker: InMemoryBroker, job_id: str, pass_index: int, pictures: list[str], total: int = 4) -> None:
    progress = RenderProgressed(
        job_id=job_id,
        pass_index=pass_index,
        total_passes=total,
        tokens=_grids(len(pictures) or 1),
        check_images=pictures,
    )
    envelope = Envelope.wrap(progress, aggregate_id=job_id, sequence=pass_index)
    await broker.producer().send(topics.RENDER_PROGRESS, envelope.to_bytes(), key=job_id.encode())


def _verdicts(broker: InMemoryBroker, job_id: str) -> list[SafetyVerdict]:
    found = [
        REGISTRY.decode_as(Envelope.from_bytes(r.value), SafetyVerdict) for r in broker.records(topics.SAFETY_VERDICTS)
    ]
    return [v for v in found if v.job_id == job_id]


async def test_a_render_is_blocked_from_the_pictures_its_decoder_drew_on_a_checked_pass() -> None:
    broker = _broker()
    classifier = FakeClassifier(score=0.93)
    async with running(broker, classifier):
        await _progress(broker, "job_drawn", 3, _pictures(2))
        verdict = await _verdict(broker, "job_drawn")
    assert (verdict.stage, verdict.pass_index, verdict.allowed, verdict.category) == (
        "content",
        3,
        False,
        "forbidden-object",
    )
    # The decoder's pictures were scored as they came: no second render here.
    [batch] = classifier.batches
    assert [(p.shape, p.dtype.name) for p in batch] == [((64, 64, 3), "uint8")] * 2


async def test_only_a_block_or_the_last_pass_is_answered_and_passes_without_pictures_are_not_looked_at() -> None:
    broker = _broker()
    classifier = FakeClassifier(score=0.2)
    async with running(broker, classifier):
        await _progress(broker, "job_clean", 1, [])  # a pass that carries no risk
        await _progress(broker, "job_clean", 3, _pictures(1))  # checked and allowed: nobody waits for it
        await _progress(broker, "job_clean", 4, _pictures(1))  # the last pass: its clearance completes the job
        verdict = await _verdict(broker, "job_clean")
        await asyncio.sleep(0.2)
    assert (verdict.pass_index, verdict.allowed) == (4, True)
    assert _verdicts(broker, "job_clean") == [verdict]
    assert len(classifier.batches) == 2


async def test_a_last_pass_without_pictures_is_drawn_from_its_grids() -> None:
    broker = _broker()
    classifier = FakeClassifier(score=0.93)
    async with running(broker, classifier):
        await _progress(broker, "job_old_decoder", 4, [])
        verdict = await _verdict(broker, "job_old_decoder")
    assert (verdict.pass_index, verdict.allowed) == (4, False)
    [batch] = classifier.batches
    assert [p.shape for p in batch] == [(64, 64, 3)]


async def test_pictures_that_are_not_images_fail_closed() -> None:
    broker = _broker()
    async with running(broker, FakeClassifier(score=0.0)):
        await _progress(broker, "job_garbled", 3, [base64.b64encode(b"not a png").decode("ascii")])
        verdict = await _verdict(broker, "job_garbled")
    assert (verdict.pass_index, verdict.allowed, verdict.category) == (3, False, UNVERIFIABLE)


async def test_a_new_jobs_prompt_is_judged_from_its_command() -> None:
    broker = _broker()
    async with running(broker):
        for job_id, prompt, tier in (
            ("job_cmd_skull", "a skull on a desk", "free"),
            ("job_cmd_ok", "a red ball", "api"),
        ):
            command = GenerateImage(
                job_id=job_id, spec=job_spec(prompt=prompt, tier=tier), created_at=datetime.now(UTC)
            )
            envelope = Envelope.wrap(command, aggregate_id=job_id, tier=tier)
            await broker.producer().send(topics.IMAGE_COMMANDS, envelope.to_bytes(), key=job_id.encode())
        blocked = await _verdict(broker, "job_cmd_skull")

        async def api_verdict() -> SafetyVerdict | None:
            found = [
                REGISTRY.decode_as(Envelope.from_bytes(r.value), SafetyVerdict)
                for r in broker.records(topics.SAFETY_VERDICTS_API)
            ]
            return next((v for v in found if v.job_id == "job_cmd_ok"), None)

        allowed = await eventually(api_verdict, 10, "the api job's verdict on the api topic")
    assert (blocked.stage, blocked.allowed, blocked.category) == ("prompt", False, "forbidden-object")
    assert (allowed.stage, allowed.allowed) == ("prompt", True)


async def test_a_poison_policy_record_is_dead_lettered_and_the_service_still_starts() -> None:
    broker = _broker()
    await broker.producer().send(topics.SAFETY_POLICY, b"{not json", key=b"x")
    async with running(broker) as service:
        assert service.policy.current.version == 1

    letters = [
        REGISTRY.decode_as(Envelope.from_bytes(r.value), DeadLetter) for r in broker.records(topics.DEAD_LETTERS)
    ]
    assert [(letter.service, letter.topic) for letter in letters] == [("safety", topics.SAFETY_POLICY)]


async def test_the_health_check_reports_the_policy() -> None:
    broker = _broker()
    async with running(broker) as service:
        healthy, report = await service.runtime.health_report()
    assert healthy and report["checks"] == {"policy": True}
