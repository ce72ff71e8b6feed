"""Wiring of the safety service."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from libs import topics
from libs.bus.ports import Producer
from libs.events import new_ulid
from libs.events.schemas import CheckContent, CheckPrompt, GenerateImage, RenderProgressed, SafetyPolicy
from libs.model.interface import ImageModel
from libs.model.registry import load_model
from libs.runtime.dispatch import Dispatcher
from libs.runtime.service import ConsumerFactory, ServiceRuntime, Subscription
from libs.runtime.wiring import kafka_consumer_factory, kafka_producer
from libs.safety_policy import DEFAULT_POLICY_VERSION, policy_from_yaml
from libs.settings import SafetySettings
from services.safety.content import ContentClassifier, ContentInspector
from services.safety.handlers import SafetyHandlers
from services.safety.policy_feed import KafkaLogReader, LogReader, PolicyFeed, PortLogReader

SERVICE = "safety"
DEFAULT_POLICY_FILE: Final = Path(__file__).resolve().parent / "default_policy.yaml"


def load_default_policy(path: Path = DEFAULT_POLICY_FILE) -> SafetyPolicy:
    """The policy a fresh installation starts with (version 1)."""
    return policy_from_yaml(path.read_text(encoding="utf-8"), version=DEFAULT_POLICY_VERSION, updated_by="default")


@dataclass(frozen=True)
class SafetyService:
    """The wired service: its runtime, and the parts tests and tools look into."""

    runtime: ServiceRuntime
    policy: PolicyFeed
    inspector: ContentInspector


def bootstrap(
    settings: SafetySettings,
    *,
    producer: Producer | None = None,
    consumer_factory: ConsumerFactory | None = None,
    classifier: ContentClassifier | None = None,
) -> ServiceRuntime:
    """Wire the safety service (see `build`; this returns just its runtime, for the entrypoint)."""
    return build(settings, producer=producer, consumer_factory=consumer_factory, classifier=classifier).runtime


def build(
    settings: SafetySettings,
    *,
    producer: Producer | None = None,
    consumer_factory: ConsumerFactory | None = None,
    classifier: ContentClassifier | None = None,
    model_loader: Callable[[str], ImageModel] | None = None,
    policy_reader: LogReader | None = None,
    default_policy: SafetyPolicy | None = None,
) -> SafetyService:
    """Wire the safety service; unit tests pass in-memory adapters and a fake classifier.

    Args:
        settings: The service's settings.
        producer: The bus producer (Kafka when omitted).
        consumer_factory: Makes consumer-group members (Kafka when omitted).
        classifier: The content classifier (the built-in weights when omitted).
        model_loader: Loads image models by name (`load_model` on settings.device when omitted).
        policy_reader: Reads the policy topic from its beginning. When omitted: an exact
            Kafka reader in production, else a reader over `consumer_factory` with a
            fresh group (exact for the in-memory broker).
        default_policy: Published when the topic holds no policy (default_policy.yaml).

    Returns:
        The service; `run_service(service.runtime)` runs it.
    """
    runtime = ServiceRuntime(
        name=SERVICE,
        settings=settings,
        producer=producer or kafka_producer(settings, SERVICE),
        consumer_factory=consumer_factory or kafka_consumer_factory(settings, SERVICE),
    )

    if policy_reader is None:
        if consumer_factory is None:
            policy_reader = KafkaLogReader(
                settings.kafka_bootstrap, [topics.SAFETY_POLICY], client_id=f"darkroom-{SERVICE}"
            )
        else:
            # A group nobody has used starts at the beginning; the reader never commits.
            policy_reader = PortLogReader(consumer_factory(f"{SERVICE}-policy-{new_ulid()}", [topics.SAFETY_POLICY]))
    feed = PolicyFeed(policy_reader, runtime.publisher, default_policy or load_default_policy(), service=SERVICE)

    def load_classifier() -> ContentClassifier:
        if classifier is not None:
            return classifier
        # Imported here: it loads torch, which only the real classifier needs.
        from libs.model.safety_classifier import load_safety_classifier

        return load_safety_classifier(device=settings.device)

    inspector = ContentInspector(
        load_classifier,
        model_loader or (lambda name: load_model(name, device=settings.device)),
        default_model=settings.model,
        threshold=settings.content_threshold,
    )
    handlers = SafetyHandlers(runtime.publisher, feed, inspector)
    checks = Dispatcher(SERVICE)
    checks.on(CheckPrompt, handlers.on_check_prompt)
    checks.on(GenerateImage, handlers.on_generate)
    checks.on(CheckContent, handlers.on_check_content)
    checks.on(RenderProgressed, handlers.on_progress)

    async def policy_loaded() -> bool:
        return feed.loaded

    # on_start hooks run before the check subscription's member starts, so no check is
    # answered before the policy is known and the models are loaded.
    runtime.on_start += [feed.load, inspector.start]
    runtime.background.append(feed.follow)
    runtime.on_stop += [feed.close, inspector.stop]
    runtime.subscriptions.append(
        Subscription(
            group=SERVICE,
            # The image commands (their prompts are checked as they come, beside the requests
            # service accepting them), the decoders' progress (content is checked as renders
            # go) and check commands.
            topics=[topics.IMAGE_COMMANDS, topics.RENDER_PROGRESS, topics.SAFETY_CHECKS],
            handler=checks,
            concurrency=settings.handler_concurrency,
        )
    )
    runtime.checks["policy"] = policy_loaded
    return SafetyService(runtime, feed, inspector)
